"""``bench exchange``: the coded weights exchange against float32, paired by seed, resumable."""

from __future__ import annotations

import json

from splitfedzip.cli.main import main
from splitfedzip.experiments import bench_exchange

TINY = [
    "data.image_size=32", "data.num_samples=6", "data.test_samples=2", "model.base_width=2",
    "train.rounds=1", "train.local_epochs=1", "train.device=cpu",
    "codec_options.latent_channels=4", "codec_options.warmup_steps=2",
]  # fmt: skip


def _argv(out, *extra):
    sets = [a for o in [*TINY, *extra] for a in ("--set", o)]
    return ["bench", "exchange", "--seeds", "0-1", "--out", str(out), "--no-progress", *sets]


def test_the_exchanges_are_compared_seed_by_seed_and_a_second_call_reuses_the_runs(
    tmp_path, capsys, monkeypatch, one_thread
):
    assert main([*_argv(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out[out.index("[\n") :])
    assert [r["seed"] for r in rows] == [0, 1]
    for r in rows:
        seed = r["seed"]
        summaries = {
            name: json.loads((tmp_path / name / f"seed-{seed}" / "summary.json").read_text())
            for name in bench_exchange.VARIANTS
        }
        assert r["mji difference"] == summaries["fg-ae-int2"]["test_mji"] - r["mji fg-ae"]
        assert r["bytes fg-ae"] > r["bytes fg-ae-int2"] > 0  # at this scale nc may send less
        assert r["bytes nc"] == summaries["nc"]["bytes_total"]
        assert r["coded below nc"] == r["bytes nc"] / r["bytes fg-ae-int2"]

    # Resumed: every run is on disk, none runs again.
    def no_run(*a, **k):
        raise AssertionError("a kept run was run again")

    monkeypatch.setattr(bench_exchange, "run_embedded", no_run)
    assert main(_argv(tmp_path)) == 0
    table = capsys.readouterr().out
    assert "[6/6] seed 1 fg-ae-int2" in table and "standard error" in table
    # A folder holding another configuration's run is named, not reused.
    assert main(_argv(tmp_path, "lambda=5")) == 2
    assert str(tmp_path / "nc" / "seed-0") in capsys.readouterr().err


def test_bad_seeds_are_named(capsys):
    assert main(["bench", "exchange", "--seeds", "three"]) == 2
    assert "--seeds: 'three'" in capsys.readouterr().err
