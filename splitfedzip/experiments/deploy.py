"""Each party in its own process, talking over gRPC; ``launch`` runs a whole deployment locally."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config, dump_config
from ..data import build_federated_data, client_data, folder_dataset
from ..data.build import num_classes_for
from ..errors import RunFailure, UserError
from ..metrics.ledger import Ledger
from ..parties.client import Client, ClientResult
from ..parties.federation_server import FederationServer
from ..parties.main_server import MainServer
from ..transport.base import Handler, TransportError
from ..transport.grpc import (
    DEFAULT_MAX_MESSAGE,
    ClientSecurity,
    GrpcChannel,
    PartyService,
    ServerSecurity,
    serve_handler,
)
from . import checkpoint
from .resume import Checkpointing, ClientCheckpoints, ProcessCheckpoints, ServerCheckpoints
from .train import RunResult, build_summary, resolve_device, write_outputs

log = logging.getLogger(__name__)


def split_target(target: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port)."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"address {target!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def wait_reachable(target: str, timeout: float) -> None:
    """Wait (bounded) until something accepts TCP connections at ``target``."""
    host, port = split_target(target)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(timeout, 2.0)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise TransportError(f"{target}: not reachable within {timeout:g} s: {e}") from e
            time.sleep(0.2)


def _num_classes(cfg: Config) -> int:
    return cfg.model.num_classes or num_classes_for(cfg.data.dataset)


async def _serve(
    handler: Handler,
    peer: str,
    cfg: Config,
    listen: str,
    security: ServerSecurity,
    max_message: int,
    ledger: Ledger,
    port_file: Path | None,
    until_clients: int | None,
    checkpointing: Checkpointing | None,
) -> None:
    service = PartyService(
        handler, peer=peer, security=security, ledger=ledger, max_message=max_message,
        until_clients=until_clients, keep_replies=checkpointing is not None,
    )  # fmt: skip
    saver = None
    if checkpointing is not None:
        saver = ServerCheckpoints(
            ProcessCheckpoints(cfg, checkpointing, peer), handler, service, ledger
        )
        r = saver.restore()
        if r is not None:
            log.info("%s: resumed from round %d's checkpoint", peer, r)
    server, service, port = await serve_handler(
        handler, listen, peer=peer, security=security, service=service
    )
    host, _ = split_target(listen)
    log.info("%s: serving on %s:%d", peer, host, port)
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(f"{host}:{port}\n")
        tmp.replace(port_file)  # appears whole: a reader never sees a partial address
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(service.done.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    log.info("%s: %s; stopping", peer, "all clients left" if service.done.is_set() else "signal")
    await server.stop(5.0)
    if saver is not None:
        saver.finish()


def _serve_party(
    handler: Handler,
    peer: str,
    cfg: Config,
    listen: str,
    security: ServerSecurity,
    max_message: int,
    ledger_path: Path | None,
    port_file: Path | None,
    until_clients: int | None,
    checkpointing: Checkpointing | None,
) -> Ledger:
    ledger = Ledger()
    if until_clients is None:
        until_clients = cfg.data.num_clients()
    try:
        asyncio.run(
            _serve(
                handler, peer, cfg, listen, security, max_message, ledger, port_file,
                until_clients or None, checkpointing,
            )
        )  # fmt: skip
    finally:
        if ledger_path is not None:
            ledger.write_csv(ledger_path)
    return ledger


def serve_federation(
    cfg: Config,
    listen: str,
    *,
    security: ServerSecurity,
    max_message: int = DEFAULT_MAX_MESSAGE,
    ledger_path: Path | None = None,
    port_file: Path | None = None,
    until_clients: int | None = None,
    checkpointing: Checkpointing | None = None,
) -> Ledger:
    """Run the federation server until every client has left (or a signal); returns its ledger.
    With ``checkpointing`` it saves its part of each round checkpoint (and may resume)."""
    n = cfg.data.num_clients()
    torch.manual_seed(cfg.train.seed)
    party = FederationServer(cfg, _num_classes(cfg), n)
    return _serve_party(
        party, "federation", cfg, listen, security, max_message, ledger_path, port_file,
        until_clients, checkpointing,
    )  # fmt: skip


def serve_main(
    cfg: Config,
    listen: str,
    federation_target: str,
    *,
    security: ServerSecurity,
    max_message: int = DEFAULT_MAX_MESSAGE,
    ledger_path: Path | None = None,
    port_file: Path | None = None,
    until_clients: int | None = None,
    connect_timeout: float = 60.0,
    checkpointing: Checkpointing | None = None,
) -> Ledger:
    """Run the main server; checks first that the federation server is reachable."""
    # The main server's protocol needs nothing from the federation server yet (clients carry
    # the round protocol); failing early on a wrong address still saves a wasted run.
    wait_reachable(federation_target, connect_timeout)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    party = MainServer(cfg, _num_classes(cfg), device)
    return _serve_party(
        party, "main", cfg, listen, security, max_message, ledger_path, port_file, until_clients,
        checkpointing,
    )  # fmt: skip


def _array_to_json(a: np.ndarray) -> dict[str, Any]:
    # Raw bytes in base64: a quarter larger than the array, where a JSON list would be ~10x.
    data = base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")
    return {"dtype": a.dtype.str, "shape": list(a.shape), "base64": data}


def _array_from_json(raw: dict[str, Any]) -> np.ndarray:
    data = base64.b64decode(raw["base64"])
    return np.frombuffer(data, dtype=np.dtype(raw["dtype"])).reshape(raw["shape"]).copy()


def client_result_to_json(result: ClientResult, test_images: int | None) -> str:
    """A client's result as JSON (``test_images``: the size of the test set it evaluated)."""
    raw = asdict(result) | {"test_images": test_images}
    if result.examples is not None:
        raw["examples"] = {k: _array_to_json(v) for k, v in result.examples.items()}
    return json.dumps(raw, indent=2) + "\n"


def client_result_from_json(text: str) -> tuple[ClientResult, int | None]:
    """Inverse of :func:`client_result_to_json`."""
    raw = json.loads(text)
    test_images = raw.pop("test_images", None)
    if raw.get("examples") is not None:
        raw["examples"] = {k: _array_from_json(v) for k, v in raw["examples"].items()}
    return ClientResult(**raw), test_images


def _client_sets(
    cfg: Config, client_id: int, data_root: str | Path | None, test_root: str | Path | None
):
    """This client's (train, val, test or None): from its own folder when it has one (``--data-
    root`` or ``data.client_roots``), else its share of the data set built from the config."""
    d, n = cfg.data, cfg.data.num_clients()
    if not 0 <= client_id < n:
        raise UserError(f"--client-id {client_id}: the config has {n} clients")
    if data_root is None and d.client_roots:
        data_root = d.client_roots[client_id]
    if data_root is None:
        data = build_federated_data(d, cfg.train.seed)
        own = data.clients[client_id]
        return own.train, own.val, data.test if client_id == 0 else None
    # Only this client's folder is read; client 0, the tester, also reads its test folder.
    own = client_data(d, cfg.train.seed, client_id, data_root)
    test = None
    if client_id == 0:
        test_root = test_root or d.test_root
        if test_root is None:
            raise UserError("client 0 tests the final model: give --test-root (or data.test_root)")
        test = folder_dataset(d, test_root)
    return own.train, own.val, test


def run_client(
    cfg: Config,
    client_id: int,
    main_target: str,
    federation_target: str,
    *,
    security: ClientSecurity,
    max_message: int = DEFAULT_MAX_MESSAGE,
    ledger_path: Path | None = None,
    result_path: Path | None = None,
    connect_timeout: float = 60.0,
    request_timeout: float | None = 600.0,
    progress: bool = False,
    data_root: str | Path | None = None,
    test_root: str | Path | None = None,
    checkpointing: Checkpointing | None = None,
    reconnect: float = 0.0,
) -> ClientResult:
    """Run one client against the two servers; writes its ledger and result when paths are given.

    ``data_root``: this client's own folder (it reads no other); ``test_root``: client 0's test
    folder. Without them the client takes its share of the data set the config describes.
    ``checkpointing``: save its part of each round checkpoint (and resume from one);
    ``reconnect``: seconds to wait for a server that went away to come back.
    """
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    train, val, test = _client_sets(cfg, client_id, data_root, test_root)
    ledger = Ledger()

    async def go() -> ClientResult:
        common = dict(
            security=security, ledger=ledger, max_message=max_message,
            connect_timeout=connect_timeout, request_timeout=request_timeout,
            claim_timeout=connect_timeout, reconnect=reconnect,
        )  # fmt: skip
        main = await GrpcChannel.connect(main_target, client_id, peer="main", **common)
        try:
            federation = await GrpcChannel.connect(
                federation_target, client_id, peer="federation", **common
            )
            try:
                client = Client(
                    client_id, cfg, _num_classes(cfg), train, val, main, federation, device,
                    test=test, progress=progress,
                )  # fmt: skip
                resumed = None
                if checkpointing is not None:
                    store = ProcessCheckpoints(cfg, checkpointing, f"client-{client_id}")
                    channels = {"main": main, "federation": federation}
                    resumed = ClientCheckpoints(store, client, channels, ledger).restore()
                    if resumed is not None:
                        log.info("client %d: resumed from round %d", client_id, resumed[0])
                return await client.run(resumed)
            finally:
                await federation.close()
        finally:
            await main.close()

    try:
        result = asyncio.run(go())
    finally:
        if ledger_path is not None:
            ledger.write_csv(ledger_path)
    if result_path is not None:
        result_path.write_text(client_result_to_json(result, len(test) if test else None))
    return result


# --- launch: every party as a process on this machine ---------------------------------------


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
    base_env = dict(os.environ) | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
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
