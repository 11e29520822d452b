"""``launch``: a whole deployment on this machine, each party a process talking over gRPC."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..config import Config, dump_config
from ..errors import RunFailure
from ..metrics.ledger import Ledger
from ..transport.grpc import DEFAULT_MAX_MESSAGE
from . import checkpoint
from .deploy import client_result_from_json
from .train import RunResult, build_summary, resolve_device, write_outputs

log = logging.getLogger(__name__)


def _module_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "splitfedzip.cli.main", *args]


def _free_port() -> int:
    # The kernel picks a port that is free now; it stays free in practice until the server binds.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Processes:
    """The processes ``launch`` started, each logging to its own file; all ended on exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(
        self, name: str, command: list[str], env: dict[str, str] | None = None, again: bool = False
    ) -> subprocess.Popen:
        path = self.logs / f"{name}.log"
        with open(path, "a" if again else "w") as f:  # a restart adds to the log it died with
            proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env)
        self.procs[name] = (proc, path)
        return proc

    def poll(self, name: str) -> int | None:
        """``name``'s exit status, None while it runs."""
        return self.procs[name][0].poll()

    def failure(self, name: str, why: str) -> RunFailure:
        path = self.procs[name][1]
        return RunFailure(f"{name} {why}; see {path}:\n{_tail(path)}")

    def status(self, name: str, deadline: float) -> int:
        """Wait for ``name`` to exit by ``deadline``; its exit status."""
        proc = self.procs[name][0]
        try:
            return proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise self.failure(name, "did not finish in time") from None

    def wait(self, name: str, deadline: float) -> None:
        """Wait for ``name`` to exit by ``deadline``; it must succeed."""
        status = self.status(name, deadline)
        if status != 0:
            raise self.failure(name, f"failed with status {status}")

    def stop_all(self) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _folders(cfg: Config, client: int) -> list[str]:
    """A client process's own data options: its folder and (client 0) the test folder."""
    d = cfg.data
    if not d.client_roots:
        return []
    folders = ["--data-root", str(d.client_roots[client])]
    if client == 0 and d.test_root is not None:
        folders += ["--test-root", str(d.test_root)]
    return folders


#: How long a launched client waits for a server that died to be restarted, and how many times
#: ``launch`` restarts each server.
RECONNECT_SECONDS = 300.0
SERVER_RESTARTS = 3


def _supervise(
    procs: _Processes,
    servers: dict[str, list[str]],
    env: dict[str, str],
    deadline: float,
    restarted: list[dict[str, object]],
) -> None:
    """Wait for client 0 (the tester); a server killed meanwhile (by a signal: SIGKILL, the
    out-of-memory killer) is started again from its latest checkpoint part, and the clients,
    which wait for it, go on. A server that fails with an error status ends the run."""
    while (status := procs.poll("client-0")) is None:
        for name, command in servers.items():
            died = procs.poll(name)
            if died is None or died == 0:  # running, or stopped once every client left
                continue
            tries = sum(r["process"] == name for r in restarted)
            if died > 0 or tries >= SERVER_RESTARTS:
                raise procs.failure(name, f"failed with status {died}")
            log.warning("%s died (status %d); restarting it from its checkpoint", name, died)
            restarted.append({"process": name, "status": died})
            procs.start(name, [*command, "--resume"], env, again=True)
        if time.monotonic() >= deadline:
            raise procs.failure("client-0", "did not finish in time")
        time.sleep(0.2)
    if status != 0:
        raise procs.failure("client-0", f"failed with status {status}")


def launch(
    cfg: Config,
    out_dir: str | Path,
    *,
    insecure: bool = False,
    timeout: float = 3600.0,
    max_message_mb: int = DEFAULT_MAX_MESSAGE >> 20,
    resume: bool = False,
) -> RunResult:
    """Run the federation server, the main server and each client as processes on 127.0.0.1;
    each saves its part of the round checkpoints, and ``resume`` continues from the last
    complete round in ``OUT/checkpoints``."""
    start = time.perf_counter()
    out = Path(out_dir)
    saves = out / "checkpoints"
    found = checkpoint.latest(saves, cfg, "launch") if resume else None
    if found is None:
        checkpoint.clear(saves)
    else:
        log.info("launch: resuming from round %d (%s)", found[0], found[1])
    logs, parts = out / "logs", out / "parts"
    logs.mkdir(parents=True, exist_ok=True)
    parts.mkdir(parents=True, exist_ok=True)
    for stale in parts.glob("*"):
        stale.unlink()
    config_path = out / "config.yaml"
    config_path.write_text(dump_config(cfg))
    n = cfg.data.num_clients()
    common = [
        "--config", str(config_path), "--max-message-mb", str(max_message_mb),
        "--checkpoints", str(saves), *([] if found is None else ["--resume", str(found[0])]),
    ]  # fmt: skip
    server_sec, client_sec = ["--insecure"], [["--insecure"] for _ in range(n)]
    if not insecure:
        from ..transport.tls import generate_certificates

        certs = out / "certs"
        generate_certificates(certs, n)
        tokens = {str(i): secrets.token_urlsafe(24) for i in range(n)}
        tokens_path = certs / "tokens.json"
        tokens_path.write_text(json.dumps(tokens))
        tokens_path.chmod(0o600)
        server_sec = [
            "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
            "--tokens", str(tokens_path),
        ]  # fmt: skip
        # The token goes through the environment, not argv, which other users can read.
        client_sec = [["--tls-ca", str(certs / "ca.pem")] for _ in range(n)]
    deadline = time.monotonic() + timeout
    # The main server and the clients compute at once on this machine's cores: each gets an
    # equal share of threads (OpenMP teams larger than that collapse when they contend).
    threads = str(max(1, (os.cpu_count() or 1) // (n + 1)))
    base_env = dict(os.environ) | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or threads}
    procs = _Processes(logs)
    failed: list[dict[str, object]] = []
    restarted: list[dict[str, object]] = []
    try:
        # Every process starts at once (their imports take seconds); the main server and the
        # clients wait, bounded, for the servers to come up.
        fed, main = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
        servers = {
            "federation": _module_command(
                "serve", "federation", *common, *server_sec, "--listen", fed,
                "--ledger", str(parts / "ledger-federation.csv"),
            ),
            "main": _module_command(
                "serve", "main", *common, *server_sec, "--listen", main, "--federation", fed,
                "--ledger", str(parts / "ledger-main.csv"),
            ),
        }  # fmt: skip
        for name, command in servers.items():
            procs.start(name, command, base_env)
        for i in range(n):
            env = dict(base_env)
            if not insecure:
                env["SPLITFEDZIP_TOKEN"] = tokens[str(i)]
            command = _module_command(
                "client", *common, *client_sec[i], "--client-id", str(i),
                "--main", main, "--federation", fed,
                "--ledger", str(parts / f"ledger-client-{i}.csv"),
                "--result", str(parts / f"client-{i}.json"), "--connect-timeout", "120",
                "--reconnect", str(RECONNECT_SECONDS), *_folders(cfg, i),
            )  # fmt: skip
            procs.start(f"client-{i}", command, env)
        _supervise(procs, servers, base_env, deadline, restarted)
        for i in range(1, n):
            # Another client failing does not stop the run (its rounds complete without it);
            # the summary names it.
            status = procs.status(f"client-{i}", deadline)
            if status != 0:
                log.warning("%s", procs.failure(f"client-{i}", f"failed with status {status}"))
                failed.append({"process": f"client-{i}", "status": status})
        # The servers stop by themselves once every client has left or dropped out.
        for name in ("main", "federation"):
            procs.wait(name, min(deadline, time.monotonic() + 30))
    finally:
        procs.stop_all()
    # The servers record every frame both ways, a killed client's included; the clients'
    # ledgers (absent for a killed one) add only the estimates of the tensors they coded.
    ledger = Ledger()
    lost = {f["process"] for f in failed}
    for name in ("main", "federation"):
        ledger.extend(Ledger.read_csv(parts / f"ledger-{name}.csv").rows)
    for i in range(n):
        path = parts / f"ledger-client-{i}.csv"
        if f"client-{i}" in lost and not path.exists():
            continue  # killed before writing it
        ledger.adopt_estimates(Ledger.read_csv(path))
    results, test_images = [], None
    for i in range(n):
        path = parts / f"client-{i}.json"
        if f"client-{i}" in lost and not path.exists():
            continue
        result, images = client_result_from_json(path.read_text())
        results.append(result)
        test_images = images if images is not None else test_images
    if test_images is None:
        raise RunFailure("no client reported test metrics")
    summary = build_summary(cfg, ledger, results, test_images)
    summary["wall_seconds"] = time.perf_counter() - start
    summary["device"] = str(resolve_device(cfg.train.device))
    summary["transport"] = "grpc-tls" if not insecure else "grpc-insecure"
    summary["failed_processes"] = failed
    summary["restarted_processes"] = restarted
    result = RunResult(summary, ledger, results)
    write_outputs(cfg, result, out)
    return result
