"""Faults across processes on 127.0.0.1: a client killed mid-round (under `serve`/`client` and
under `launch`), a server that goes away."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from splitfedzip.config import dump_config, load_config

TINY = [
    "data.image_size=64", "data.num_samples=24", "data.test_samples=4", "model.base_width=4",
    "train.local_epochs=2", "train.batch_size=2", "train.device=cpu", "scheme=f", "codec=ae",
    "codec_options.latent_channels=8", "lambda=10", "federation.round_timeout=60",
]  # fmt: skip
LIMIT = 240  # seconds any one process may take


class Deployment:
    """Parties started as `splitfedzip` processes, each with its own log file."""

    def __init__(self, root: Path, *overrides: str) -> None:
        self.root = root
        self.config = root / "config.yaml"
        self.config.write_text(dump_config(load_config(None, [*TINY, *overrides])))
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, OMP_NUM_THREADS="1")  # several processes share 2 cores

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        cmd = [sys.executable, "-m", "splitfedzip.cli.main", *args, "--config", str(self.config)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.procs.append(proc)
        return proc

    def serve(self, role: str) -> str:
        port_file = self.root / f"{role}.port"
        extra = ["--federation", self.federation] if role == "main" else []
        self.start(
            role, "serve", role, "--insecure", "--listen", "127.0.0.1:0",
            "--port-file", str(port_file), *extra,
        )  # fmt: skip
        address = self.wait_for(lambda: port_file.exists() and port_file.read_text().strip())
        return address

    def client(self, cid: int, name: str | None = None) -> subprocess.Popen:
        name = name or f"client-{cid}"
        return self.start(
            name, "client", "--insecure", "--client-id", str(cid), "--main", self.main,
            "--federation", self.federation, "--result", str(self.root / f"{name}.json"),
            "--request-timeout", "60",
        )  # fmt: skip

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def wait_for(self, ready, timeout: float = LIMIT):
        deadline = time.monotonic() + timeout
        while not (value := ready()):
            assert time.monotonic() < deadline, "timed out; logs:\n" + self.all_logs()
            time.sleep(0.2)
        return value

    def all_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.root.glob("*.log"))

    def __enter__(self) -> Deployment:
        self.federation = self.serve("federation")
        self.main = self.serve("main")
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_client_killed_mid_round_round_completes_and_it_rejoins(tmp_path: Path) -> None:
    with Deployment(tmp_path, "data.partition={kind: iid, clients: 2}", "train.rounds=3") as d:
        tester, victim = d.client(0), d.client(1)
        d.wait_for(lambda: "round 0 epoch 2" in d.log("client-1"))
        # Freeze the tester so the run outlasts the restart of the victim (seconds of imports).
        tester.send_signal(signal.SIGSTOP)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL
        back = d.client(1, "client-1-again")
        d.wait_for(lambda: d.log("main").count("client 1 connected") == 2)
        tester.send_signal(signal.SIGCONT)
        for p in (tester, back):
            assert p.wait(LIMIT) == 0, d.all_logs()
        for p in d.procs[:2]:  # the servers stop once every client has left
            assert p.wait(60) == 0, d.all_logs()
    result = json.loads((tmp_path / "client-0.json").read_text())
    events = [(e["client"], e["event"]) for e in result["events"]]
    assert events == [(1, "dropped"), (1, "rejoined")], result["events"]
    dropped, rejoined = (e["round"] for e in result["events"])
    for rec in result["rounds"]:
        r = rec["round"]
        # Averaged without client 1 from the round it died in until the one it came back for
        # (in the round it died in, with it if it had submitted just before).
        if r == dropped and r < rejoined:
            assert rec["participants"] in ([0], [0, 1]), rec
        else:
            assert rec["participants"] == ([0] if dropped <= r < rejoined else [0, 1]), rec
    assert result["test"] is not None and 0 <= result["test"]["mji"] <= 1
    assert "client 1 dropped" in d.log("federation") and "client 1 dropped" in d.log("main")


@pytest.mark.parametrize("dies, survives", [(1, 0), (0, 1)], ids=["main", "federation"])
def test_a_server_going_away_stops_the_client_with_a_clear_error(dies, survives, tmp_path):
    with Deployment(tmp_path, "data.partition={kind: iid, clients: 1}", "train.rounds=3") as d:
        names = ("federation", "main")
        client = d.client(0)
        d.wait_for(lambda: "round 0 epoch 1" in d.log("client-0"))
        d.procs[dies].send_signal(signal.SIGKILL)
        assert client.wait(90) == 1, d.all_logs()
        assert f"{names[dies]} at 127.0.0.1" in d.log("client-0"), d.log("client-0")
        assert "UNAVAILABLE" in d.log("client-0")
        assert d.procs[survives].wait(60) == 0, d.all_logs()  # the other server stops too


def _kill_process_with_args(*args: str) -> int:
    """SIGKILL the process whose command line holds all of ``args``; its pid."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if proc.name.isdigit() and all(a in argv for a in args):
            os.kill(int(proc.name), signal.SIGKILL)
            return int(proc.name)
    raise AssertionError(f"no process with {args}")


def test_launch_goes_on_without_a_client_that_died(tmp_path: Path) -> None:
    from splitfedzip.experiments.launch import launch

    cfg = load_config(None, [*TINY, "data.partition={kind: iid, clients: 2}", "train.rounds=2"])
    out = tmp_path / "run"
    log = out / "logs" / "client-1.log"

    def kill_client_1() -> None:
        deadline = time.monotonic() + LIMIT
        while not (log.exists() and "round 0 epoch 2" in log.read_text(errors="replace")):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        _kill_process_with_args("--client-id", "1", str(out / "parts" / "client-1.json"))

    killer = threading.Thread(target=kill_client_1)
    killer.start()
    try:
        result = launch(cfg, out, insecure=True, timeout=LIMIT)
    finally:
        killer.join()
    s = result.summary
    assert s["failed_processes"] == [{"process": "client-1", "status": -signal.SIGKILL}]
    [event] = s["events"]
    assert (event["client"], event["event"]) == (1, "dropped")
    for rec in s["rounds"]:
        r = rec["round"]
        # The round it died in: without it, unless it had submitted just before.
        allowed = [[0, 1]] if r < event["round"] else [[0]] if r > event["round"] else [[0], [0, 1]]
        assert rec["participants"] in allowed, s["rounds"]
    assert 0 <= s["test_mji"] <= 1 and (out / "summary.json").is_file()
    # Killed, it wrote no ledger; the servers' ledgers hold its traffic both ways, up to the
    # epoch it died in.
    assert not (out / "parts" / "ledger-client-1.csv").exists()
    mine = [r for r in result.ledger.rows if r.client == 1]
    sent = {(r.direction, r.kind, r.phase, r.round, r.epoch) for r in mine}
    for peer in ("main", "federation"):
        assert ("client->" + peer, "control", "train", 0, 0) in sent, peer  # its join
    for direction in ("client->main", "main->client"):
        assert (direction, "feature", "train", 0, 1) in sent, direction
    # A message's first frame carries its wire bytes: every answer had its request recorded.
    messages = [r.direction for r in mine if r.wire_bytes is not None]
    answers = sum(d.endswith("->client") for d in messages)
    assert sum(d.startswith("client->") for d in messages) >= answers > 0
    assert s["bytes_total"] == result.ledger.total(None, ("train", "val"))
