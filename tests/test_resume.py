"""Resume: a train run killed (SIGKILL) mid-round or right after a round boundary, continued
from its last complete round, gives the uninterrupted run's figures and ledger exactly."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from splitfedzip.config import load_config
from splitfedzip.errors import UserError
from splitfedzip.experiments import checkpoint
from splitfedzip.experiments.train import run_embedded, write_outputs

TINY = [
    "data.image_size=32", "data.num_samples=12", "data.test_samples=2", "model.base_width=2",
    "data.partition={kind: iid, clients: 2}", "train.rounds=2", "train.local_epochs=1",
    "train.batch_size=2", "train.device=cpu", "scheme=fg", "codec=ae",
    "codec_options.latent_channels=4", "lambda=10", "federation.weights_codec=int8",
    # The residuals of error feedback carry over a round boundary too (in each party's state).
    "federation.weights_error_feedback=true",
]  # fmt: skip
#: Wall-clock figures, the only ones a resumed run may change.
TIMING = {"wall_seconds", "train_seconds", "train_batches_per_second"}


def _train(out: str, log: str) -> None:
    """The child: a whole run into ``out``, its per-epoch log lines into ``log``."""
    handler = logging.FileHandler(log)
    logging.getLogger("splitfedzip").addHandler(handler)
    logging.getLogger("splitfedzip").setLevel(logging.INFO)
    cfg = load_config(None, TINY)
    write_outputs(cfg, run_embedded(cfg, checkpoints=Path(out) / "checkpoints"), Path(out))


def _kill_when(out: Path, ready) -> None:
    """Start a run in a child process and SIGKILL it as soon as ``ready(out)`` holds."""
    log = out.parent / f"{out.name}.log"
    log.touch()
    # Spawned, not forked: a fork of a process whose torch thread pool has run can deadlock in
    # its first parallel op, and the test would then wait on it forever.
    child = multiprocessing.get_context("spawn").Process(target=_train, args=(str(out), str(log)))
    child.start()
    try:
        deadline = time.monotonic() + 120
        while not ready(out, log.read_text()):
            assert child.is_alive(), "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run did not reach the point to kill it at"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()  # a no-op once it is dead; never leaves a run behind the test
        child.join()
    assert child.exitcode == -signal.SIGKILL


def _resume(out: Path) -> None:
    cfg = load_config(None, TINY)
    write_outputs(cfg, run_embedded(cfg, checkpoints=out / "checkpoints", resume=True), out)


def _figures(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in TIMING}


def test_killed_train_resumes_to_the_uninterrupted_figures(tmp_path: Path) -> None:
    cfg = load_config(None, TINY)
    reference = tmp_path / "reference"
    write_outputs(cfg, run_embedded(cfg, checkpoints=reference / "checkpoints"), reference)

    def boundary(out: Path, log: str) -> bool:  # round 1's checkpoint is complete
        return checkpoint.complete_rounds(out / "checkpoints") == [1]

    def mid_round(out: Path, log: str) -> bool:  # client 0 trained round 1, client 1 not yet
        return "client 0: round 1 epoch 1 done" in log

    for name, ready in (("boundary", boundary), ("mid-round", mid_round)):
        out = tmp_path / name
        _kill_when(out, ready)
        assert not (out / "summary.json").exists()
        assert checkpoint.complete_rounds(out / "checkpoints") == [1]
        _resume(out)
        assert _figures(out) == _figures(reference), name
        for table in ("ledger.csv", "metrics.csv", "history.csv"):
            assert (out / table).read_text() == (reference / table).read_text(), (name, table)


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path: Path) -> None:
    cfg = load_config(None, TINY)
    directory = tmp_path / "checkpoints"
    checkpoint.write_round(directory, 1, cfg, {"run": {"round": 1}})
    other = load_config(None, [*TINY, "lambda=20"])
    with pytest.raises(UserError, match=r"lambda=10.0, this run has lambda=20.0"):
        checkpoint.latest(directory, other)
    meta = checkpoint.round_dir(directory, 1) / "meta.json"
    meta.write_text(meta.read_text().replace(checkpoint.package_version(), "0.0.0-other"))
    with pytest.raises(UserError, match="key 'version'"):
        checkpoint.latest(directory, cfg)


def test_an_unfinished_checkpoint_is_ignored(tmp_path: Path) -> None:
    cfg = load_config(None, TINY)
    directory = tmp_path / "checkpoints"
    checkpoint.write_round(directory, 1, cfg, {"run": {"round": 1}})
    # A process killed while writing round 2 leaves its temporary folder, never round-0002.
    (directory / ".round-0002.tmp").mkdir()
    assert checkpoint.latest(directory, cfg)[0] == 1
    checkpoint.write_round(directory, 2, cfg, {"run": {"round": 2}})
    assert checkpoint.complete_rounds(directory) == [2]
