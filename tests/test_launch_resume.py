"""Resume under `launch`: a federation server or main server killed (SIGKILL) mid-round is
restarted from its checkpoint and the clients go on; a whole launch killed is continued with
--resume. Each ends with the uninterrupted run's figures and ledger."""

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
import torch
from test_faults import TINY, _kill_process_with_args

from splitfedzip.config import dump_config, load_config
from splitfedzip.errors import UserError
from splitfedzip.experiments import checkpoint
from splitfedzip.experiments.launch import launch
from splitfedzip.metrics.ledger import Ledger

OVERRIDES = [*TINY, "data.partition={kind: iid, clients: 2}", "train.rounds=2"]
#: Seconds a launch, or a wait for a point in it, may take: four processes import torch at once
#: on a machine that may be busy, and a restarted one imports it again.
LIMIT = 900
#: Wall-clock figures, and which processes were restarted: all a restart may change.
UNSTABLE = {"wall_seconds", "train_seconds", "train_batches_per_second", "restarted_processes"}


def _figures(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in UNSTABLE}


def _ledger(out: Path) -> list[tuple]:
    # The servers record arrivals as they come; only the order of concurrent clients may differ.
    return sorted(tuple(vars(r).values()) for r in Ledger.read_csv(out / "ledger.csv").rows)


def _same_as(out: Path, reference: Path) -> None:
    assert _figures(out) == _figures(reference)
    assert _ledger(out) == _ledger(reference)
    for table in ("metrics.csv", "history.csv"):
        assert (out / table).read_text() == (reference / table).read_text(), table
    for model in ("client_global.pt", "server_global.pt"):  # the tested model, as train writes
        ours, theirs = (torch.load(d / "checkpoints" / model) for d in (out, reference))
        assert ours.keys() == theirs.keys(), model
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), model


def _wait(ready, what: str) -> None:
    deadline = time.monotonic() + LIMIT
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _in_round_1(out: Path, part: str = "federation") -> bool:
    """Round 1 is checkpointed by ``part`` and client 0 trains it."""
    log = out / "logs" / "client-0.log"
    saved = out / "checkpoints" / "round-0001" / f"{part}.pt"
    return saved.exists() and log.exists() and "round 1 epoch 1" in log.read_text(errors="replace")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    launch(load_config(None, OVERRIDES), out, insecure=True, timeout=LIMIT)
    return out


@pytest.mark.parametrize("server", ["federation", "main"])
def test_a_killed_server_restarts_from_its_checkpoint(server, reference, tmp_path) -> None:
    out = tmp_path / "run"
    killed: list[int] = []

    def kill_server() -> None:
        _wait(lambda: _in_round_1(out, server), "round 1")
        ledger = out / "parts" / f"ledger-{server}.csv"
        killed.append(_kill_process_with_args("serve", server, str(ledger)))

    killer = threading.Thread(target=kill_server)
    killer.start()
    try:
        result = launch(load_config(None, OVERRIDES), out, insecure=True, timeout=LIMIT)
    finally:
        killer.join()
    assert killed
    assert result.summary["restarted_processes"] == [{"process": server, "status": -signal.SIGKILL}]
    log = (out / "logs" / f"{server}.log").read_text()
    assert "resumed from round 1's checkpoint" in log
    _same_as(out, reference)
    assert checkpoint.complete_rounds(out / "checkpoints") == [1, 2]


def test_a_killed_launch_resumes_from_its_last_complete_round(reference, tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    config = out / "run.yaml"
    config.write_text(dump_config(load_config(None, OVERRIDES)))
    command = [
        sys.executable, "-m", "splitfedzip.cli.main", "launch", "--config", str(config),
        "--out", str(out), "--insecure",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # Its own session: the launch and every process it started are killed together.
    whole = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        _wait(lambda: _in_round_1(out), "round 1")
        _wait(lambda: 1 in checkpoint.complete_rounds(out / "checkpoints"), "round 1's parts")
    finally:
        os.killpg(whole.pid, signal.SIGKILL)
        whole.wait()
    assert not (out / "summary.json").exists()
    other = load_config(None, [*OVERRIDES, "lambda=20"])
    with pytest.raises(UserError, match=r"lambda=10.0, this run has lambda=20.0"):
        launch(other, out, insecure=True, timeout=LIMIT, resume=True)
    launch(load_config(None, OVERRIDES), out, insecure=True, timeout=LIMIT, resume=True)
    _same_as(out, reference)


def test_a_round_is_complete_once_every_process_wrote_its_part(tmp_path) -> None:
    cfg = load_config(None, OVERRIDES)
    directory, names = tmp_path / "checkpoints", ["federation", "main", "client-0", "client-1"]
    for r in (1, 2, 3, 4):
        for i, name in enumerate(names):
            assert checkpoint.complete_rounds(directory)[-1:] == ([r - 1] if r > 1 else [])
            checkpoint.write_part(directory, r, cfg, name, {"round": r, "who": name}, names)
            complete = (directory / f"round-{r:04d}" / "meta.json").is_file()
            assert complete == (i == len(names) - 1), (r, name)
    # Each process keeps its last three rounds; older folders are gone.
    assert checkpoint.complete_rounds(directory) == [2, 3, 4]
    assert checkpoint.load_own_part(directory, cfg, "main") == (4, {"round": 4, "who": "main"})
    assert checkpoint.load_own_part(directory, cfg, "main", 2)[1]["round"] == 2
    assert checkpoint.latest(directory, cfg, "launch")[0] == 4
    with pytest.raises(UserError, match="key 'runtime'"):
        checkpoint.latest(directory, cfg)  # train does not resume a launch's parts
    with pytest.raises(UserError, match=r"lambda=10.0, this run has lambda=20.0"):
        checkpoint.load_own_part(directory, load_config(None, [*OVERRIDES, "lambda=20"]), "main")
