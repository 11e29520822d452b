"""A run's traffic priced on a link: bandwidth per direction plus one round trip per request."""

from __future__ import annotations

import pytest

from splitfedzip.config import load_config
from splitfedzip.experiments.demo import demo_table
from splitfedzip.experiments.train import run_embedded
from splitfedzip.metrics.link import Link, link_time, parse_link
from splitfedzip.transport.embedded import EmbeddedChannel

TINY = [
    "data.image_size=64", "data.num_samples=12", "data.test_samples=4", "model.base_width=4",
    "train.rounds=1", "train.local_epochs=1", "train.batch_size=2", "train.device=cpu",
    "codec_options.latent_channels=8", "codec=ae", "lambda=10", "scheme=fg",
]  # fmt: skip


def test_parse_link():
    assert parse_link("10mbit,20ms") == Link(10e6, 0.02)
    assert parse_link(" 1.5 Gbit , 300 us ") == Link(1.5e9, 300e-6)
    for bad in ("10mb,20ms", "10mbit", "0mbit,1ms", "fast,20ms"):
        with pytest.raises(ValueError, match="BANDWIDTH,RTT|must be > 0"):
            parse_link(bad)


def test_link_time_counts_every_request_and_every_byte(monkeypatch):
    requests = []
    real = EmbeddedChannel.request

    async def counted(self, message, *a, **k):
        requests.append(message)
        return await real(self, message, *a, **k)

    monkeypatch.setattr(EmbeddedChannel, "request", counted)
    res = run_embedded(load_config(None, TINY), link="8mbit,10ms")
    s, ledger = res.summary, res.ledger
    every = link_time(ledger, parse_link("8mbit,10ms"), ("train", "val", "test"))
    assert every["round_trips"] == len(requests)
    link = s["link"]
    assert link["link"] == "8mbit,10ms" and link["round_trips"] > 0
    # Training and validation only, like bytes_total: one byte is one microsecond at 8 Mbit/s.
    assert link["seconds_serialisation"] == pytest.approx(s["bytes_total"] * 1e-6)
    assert link["seconds"] == pytest.approx(
        link["seconds_serialisation"] + 0.01 * link["round_trips"]
    )
    table = demo_table({"nc": s, "fg-ae": s})
    assert "link s @ 8mbit,10ms" in table and "total reduction" in table
