"""Round deadlines: never on a client that could not yet have run."""

from __future__ import annotations

import time

from splitfedzip.config import load_config
from splitfedzip.experiments.train import run_embedded
from splitfedzip.parties.client import Client

TINY = [
    "data.image_size=32", "data.num_samples=12", "data.test_samples=4", "model.base_width=2",
    "data.partition={kind: iid, clients: 3}", "train.rounds=2", "train.local_epochs=1",
    "train.batch_size=2", "train.max_batches=2", "train.device=cpu", "scheme=nc",
    "federation.round_timeout=0.05",
]  # fmt: skip


def test_embedded_run_keeps_every_client_whatever_the_round_timeout(monkeypatch) -> None:
    real = Client.train_batch

    async def slow(self, ids, x, y):
        time.sleep(0.05)  # computing: the other clients cannot run meanwhile
        return await real(self, ids, x, y)

    monkeypatch.setattr(Client, "train_batch", slow)
    cfg = load_config(None, TINY)
    start = time.monotonic()
    summary = run_embedded(cfg).summary
    # Each client's round took longer than the timeout, and the rounds far longer.
    assert time.monotonic() - start > 2 * 3 * 2 * 0.05
    assert summary["events"] == []
    for rec in summary["rounds"]:
        assert rec["participants"] == [0, 1, 2], summary["rounds"]
    assert [rec["val_clients"] for rec in summary["rounds"]] == [[0, 1, 2], [0, 1, 2]]
    assert 0 <= summary["test_mji"] <= 1
