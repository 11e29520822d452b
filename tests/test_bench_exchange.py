"""``bench exchange``: the coded weights exchange against float32, paired by seed, resumable."""

from __future__ import annotations

import json

import pytest
import torch

from splitfedzip.cli.main import main
from splitfedzip.experiments import bench_exchange

TINY = [
    "data.image_size=32", "data.num_samples=6", "data.test_samples=2", "model.base_width=2",
    "train.rounds=1", "train.local_epochs=1", "train.device=cpu",
    "codec_options.latent_channels=4", "codec_options.warmup_steps=2",
]  # fmt: skip


def _argv(out, *extra, seeds="0-1"):
    sets = [a for o in [*TINY, *extra] for a in ("--set", o)]
    return ["bench", "exchange", "--seeds", seeds, "--out", str(out), "--no-progress", *sets]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """A comparison at seeds 0 and 1 (its folder and rows), shared by the tests."""
    out, before = tmp_path_factory.mktemp("bench-exchange"), torch.get_num_threads()
    torch.set_num_threads(1)  # tiny runs are fastest so
    try:
        setup = bench_exchange.ExchangeSetup(out, (0, 1), overrides=tuple(TINY))
        return out, bench_exchange.bench_exchange(setup, progress=False)
    finally:
        torch.set_num_threads(before)


def test_the_exchanges_are_compared_seed_by_seed_and_a_second_call_reuses_the_runs(
    compared, capsys, monkeypatch
):
    tmp_path, rows = compared

    # Resumed: every run is on disk, none runs again.
    def no_run(*a, **k):
        raise AssertionError("a kept run was run again")

    monkeypatch.setattr(bench_exchange, "run_embedded", no_run)
    assert main([*_argv(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("[\n") :]) == rows
    assert [r["seed"] for r in rows] == [0, 1]
    for r in rows:
        seed = r["seed"]
        summaries = {
            name: json.loads((tmp_path / name / f"seed-{seed}" / "summary.json").read_text())
            for name in bench_exchange.VARIANTS
        }
        assert r["mji difference"] == summaries["fg-ae-int2"]["test_mji"] - r["mji fg-ae"]
        assert r["bytes fg-ae"] > r["bytes coded"] > 0  # at this scale nc may send less
        assert r["bytes nc"] == summaries["nc"]["bytes_total"]
        assert r["coded below nc"] == r["bytes nc"] / r["bytes coded"]
    assert main(_argv(tmp_path)) == 0
    table = capsys.readouterr().out
    assert "[6/6] seed 1 fg-ae-int2" in table and "standard error" in table
    # A folder holding another configuration's run is named, not reused.
    assert main(_argv(tmp_path, "lambda=5")) == 2
    assert str(tmp_path / "nc" / "seed-0") in capsys.readouterr().err


def test_coded_settings_reach_the_coded_run_alone_and_reuse_the_others(
    compared, capsys, monkeypatch, one_thread
):
    tmp_path, _ = compared  # nc, fg-ae and fg-ae-int2 at seeds 0 and 1
    ran = []
    real = bench_exchange.run_embedded
    monkeypatch.setattr(
        bench_exchange, "run_embedded", lambda cfg, **k: ran.append(cfg) or real(cfg, **k)
    )
    int4 = [
        "--coded",
        "federation.weights_codec=int4",
        "--coded",
        "federation.weights_codec_first=null",
    ]
    assert main([*_argv(tmp_path, seeds="1"), *int4]) == 0
    out = capsys.readouterr().out
    # Only the coded runs are new, in a folder of their own; the float32 runs are shared.
    assert [(c.federation.weights_codec, c.federation.weights_codec_first) for c in ran] == [
        ("int4", None)
    ]
    [folder] = {line.split(":")[0] for line in out.splitlines() if line.startswith("fg-ae-coded-")}
    held = (tmp_path / folder / "seed-1" / "config.yaml").read_text()
    assert "weights_codec: int4" in held and "weights_error_feedback: true" in held
    assert "weights_codec: float32" in (tmp_path / "fg-ae" / "seed-1" / "config.yaml").read_text()
    assert "weights_codec: int2" in (tmp_path / "fg-ae-int2" / "seed-1" / "config.yaml").read_text()
    assert f"[3/3] seed 1 {folder}" in out


def test_bad_seeds_are_named(capsys):
    assert main(["bench", "exchange", "--seeds", "three"]) == 2
    assert "--seeds: 'three'" in capsys.readouterr().err
