"""``splitfedzip sweep``: rate-accuracy curves over λ and BD comparisons."""

from __future__ import annotations

import csv
import json

import pytest

from splitfedzip.cli.main import main
from splitfedzip.experiments.sweep import bd_table, read_points, write_csv


def _points(variant: str, scale: float) -> list[dict]:
    mji = [0.60, 0.70, 0.75, 0.78]
    rates = [0.1, 0.2, 0.4, 0.8]
    return [
        {"variant": variant, "lambda": lam, "bpp_s1": r * scale, "bpp_s2": r * scale,
         "bpp_t": 2 * r * scale, "test_mji": m}
        for lam, r, m in zip((1, 10, 100, 1000), rates, mji, strict=True)
    ]  # fmt: skip


@pytest.mark.parametrize("method", ["cubic", "pchip"])
def test_bd_table_halved_rates(method, tmp_path):
    points = _points("f-ae", 1.0) + _points("f-cheng2020-attn", 0.5)
    rows = bd_table(points, "f-ae", method)
    assert [r["rate"] for r in rows] == ["bpp_s1", "bpp_s2", "bpp_t"]
    for r in rows:
        assert r["variant"] == "f-cheng2020-attn" and r["bd_rate_percent"] == pytest.approx(-50)
        assert r["bd_mji"] > 0
    write_csv(tmp_path / "curves.csv", points)
    assert read_points(tmp_path / "curves.csv") == points


def test_bd_table_names_a_missing_anchor():
    with pytest.raises(ValueError, match="anchor 'nc-ae'"):
        bd_table(_points("f-ae", 1.0), "nc-ae", "pchip")


TINY = [
    "data.image_size=64", "data.num_samples=12", "data.test_samples=4", "model.base_width=4",
    "train.rounds=1", "train.local_epochs=1", "train.batch_size=2", "train.device=cpu",
    "codec_options.latent_channels=8",
]  # fmt: skip


def test_sweep_command_runs_every_point_and_reports(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--out", str(out), "--lambdas", "1,1000", "--variants", "f:ae,fg:ae",
            "--no-progress", *sum((["--set", s] for s in TINY), [])]  # fmt: skip
    assert main(argv) == 0
    first = capsys.readouterr().out
    with open(out / "curves.csv", newline="") as f:
        curves = list(csv.DictReader(f))
    assert [(r["variant"], float(r["lambda"])) for r in curves] == [
        ("f-ae", 1.0), ("f-ae", 1000.0), ("fg-ae", 1.0), ("fg-ae", 1000.0),
    ]  # fmt: skip
    for r in curves:
        run = out / r["variant"] / f"lambda-{float(r['lambda']):g}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["bpp_t"] == pytest.approx(float(r["bpp_t"]))
        assert (summary["scheme"], summary["lambda"]) == (r["variant"][:-3], float(r["lambda"]))
    with open(out / "bd.csv", newline="") as f:
        bd = list(csv.DictReader(f))
    assert [(r["variant"], r["anchor"], r["rate"], r["method"]) for r in bd] == [
        ("fg-ae", "f-ae", rate, "pchip") for rate in ("bpp_s1", "bpp_s2", "bpp_t")
    ]
    # Each row has numbers, or says why there are none (e.g. MJI ranges that do not overlap).
    assert all(r["bd_rate_percent"] or r["error"] for r in bd)
    # --report recomputes the comparison from curves.csv alone, with the same result.
    assert main(["sweep", "--out", str(out), "--report", "--variants", "f:ae,fg:ae"]) == 0
    assert capsys.readouterr().out == first


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sweep", "--variants", "fg"], "scheme:codec"),
        (["sweep", "--variants", "fg:jpeg"], "codec: 'jpeg'"),
        (["sweep", "--report", "--out", "/nonexistent/x"], "curves.csv"),
    ],
)
def test_sweep_bad_input_is_a_clear_error(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_auto_method_falls_back_to_pchip_on_repeated_points():
    anchor, test = _points("f-ae", 1.0), _points("fg-ae", 0.5)
    assert {r["method"] for r in bd_table(anchor + test, "f-ae", "auto")} == {"cubic"}
    test[3]["bpp_s1"] = test[2]["bpp_s1"]  # two lambdas at the same rate: 3 distinct values
    rows = {r["rate"]: r for r in bd_table(anchor + test, "f-ae", "auto")}
    assert rows["bpp_s1"]["method"] == "pchip" and rows["bpp_s1"]["bd_rate_percent"] is not None
    assert rows["bpp_t"]["method"] == "cubic"
