"""Many clients: client sampling per round, FedAvg as a running sum, replicas only in a round."""

from __future__ import annotations

import pytest
import torch

from splitfedzip.config import ConfigError, load_config
from splitfedzip.experiments.train import run_embedded
from splitfedzip.federation import RunningAverage, fedavg
from splitfedzip.federation.sampling import sample_clients, sample_size

TINY = [
    "data.image_size=32", "data.num_samples=16", "data.test_samples=2", "model.base_width=2",
    "data.partition={kind: iid, clients: 4}", "train.rounds=2", "train.local_epochs=1",
    "train.batch_size=2", "train.device=cpu", "scheme=f", "codec=ae",
    "codec_options.latent_channels=4", "lambda=10",
]  # fmt: skip


def test_running_average_is_fedavg() -> None:
    gen = torch.Generator().manual_seed(0)
    states = [
        {"w": torch.randn(3, 4, generator=gen), "n": torch.tensor(i + 2, dtype=torch.long)}
        for i in range(3)
    ]
    weights = [5, 1, 7]
    running = RunningAverage()
    for c, (s, w) in enumerate(zip(states, weights, strict=True)):
        running.add(c, s, w)
    got, want = running.result(), fedavg(states, weights)
    assert got["n"].dtype == torch.long and int(got["n"]) == int(want["n"])
    torch.testing.assert_close(got["w"], want["w"], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="already averaged"):
        running.add(0, states[0], 1)


def test_sample_sizes_and_seeded_draws() -> None:
    assert sample_size(10, 100) == 10 and sample_size(0.1, 100) == 10
    assert sample_size(0.001, 100) == 1 and sample_size(500, 100) == 100
    draw = sample_clients(range(100), 10, seed=3, r=1)
    assert draw == sample_clients(range(100), 10, seed=3, r=1) and len(set(draw)) == 10
    assert draw != sample_clients(range(100), 10, seed=3, r=2)
    with pytest.raises(ConfigError, match="federation.clients_per_round"):
        load_config(None, [*TINY, "federation.clients_per_round=1.5"])


def test_only_the_sampled_clients_train_and_are_averaged() -> None:
    result = run_embedded(load_config(None, [*TINY, "federation.clients_per_round=0.5"]))
    rounds = result.summary["rounds"]
    for rec in rounds:
        assert len(rec["sampled"]) == 2 and rec["participants"] == rec["sampled"], rec
        assert rec["val_clients"] == [0, 1, 2, 3]  # every client validates every global model
        trained = {
            row.client for row in result.ledger.rows
            if row.round == rec["round"] and row.phase == "train" and row.kind == "feature"
        }  # fmt: skip
        assert trained == set(rec["sampled"])
    history = {(h["round"], cr.client) for cr in result.clients for h in cr.history if "epoch" in h}
    assert history == {(rec["round"], c) for rec in rounds for c in rec["sampled"]}
