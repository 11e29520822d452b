"""The classic codecs in ``splitfedzip reproduce``: their grid, BD against ae, the NC mark."""

from __future__ import annotations

import csv
import math

import pytest
from test_reproduce import TINY_RUN

from splitfedzip.config import CLASSIC_CODECS, ConfigError
from splitfedzip.reproduce import FigureOptions, Preset, load_preset, make_plan, reproduce
from splitfedzip.reproduce.aggregate import NC_MARGIN, reach_rows
from splitfedzip.reproduce.plan import KNOBS, preset_from_dict
from splitfedzip.reproduce.report import _verdict

# Tiny runs are fastest on one thread (and do not fight other processes for cores).
pytestmark = pytest.mark.usefixtures("one_thread")


def _csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", ["quick", "full"])
def test_presets_run_every_classic_codec_over_its_knob(name):
    preset = load_preset(name)
    # The quick preset keeps the points nearest the learned codecs' rates; the full one all.
    every = {"fp16", "int", "topk"} | ({"randtopk"} if name == "full" else set())
    assert every <= set(preset.classic)
    plan = make_plan(preset)
    for codec, values in preset.classic.items():
        for scheme in preset.schemes:
            runs = [r for r in plan.runs if r.variant == f"{scheme}-{codec}"]
            assert len(runs) == max(1, len(values)) * preset.seeds * len(plan.bases)
            for run in runs:
                assert run.lmbda is None and run.config.lmbda == 1.0  # no rate term to weigh
                if KNOBS[codec] is None:
                    assert run.knob is None and run.path.parent.name == f"{scheme}-{codec}"
                    continue
                key, value = run.knob
                assert getattr(run.config.codec_options, key) == value
                assert run.path.parent.name == f"{key}-{value:g}"
    # The λ grids are untouched: the classic runs come besides them.
    learned = sum(len(preset.lambdas[c]) for c in preset.codecs) * len(preset.schemes)
    classic = sum(max(1, len(v)) for v in preset.classic.values()) * len(preset.schemes)
    assert len(plan.runs) == preset.seeds * len(plan.bases) * (1 + learned + classic)


@pytest.mark.parametrize(
    "classic, message",
    [({"jpeg": [1]}, "classic: 'jpeg' is not one of"),
     ({"int": []}, "classic.int: give the grid of codec_options.bits"),
     ({"fp16": [16]}, "classic.fp16: has no knob"),
     ({"int": [9]}, "f-int bits=9: codec_options.bits: must be 1-8"),
     ({"topk": [1.5]}, "codec_options.topk_fraction: must be in")],
)  # fmt: skip
def test_a_bad_classic_grid_is_a_clear_error(classic, message):
    raw = {"run": TINY_RUN, "datasets": ["synthetic-lesion"], "schemes": ["f"], "codecs": [],
           "classic": classic}  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        make_plan(preset_from_dict(raw))


def test_the_grid_sets_the_knobs():
    preset = preset_from_dict({"run": TINY_RUN, "datasets": ["synthetic-lesion"], "schemes": ["f"],
                               "codecs": [], "classic": {"int": [2]}})  # fmt: skip
    for key in ("codec_options.bits", "codec_options.topk_fraction"):
        with pytest.raises(ConfigError, match=f"--set {key}: the grid sets it"):
            make_plan(preset, overrides=[f"{key}=4"])


def test_tiny_reproduction_draws_classic_codecs_beside_ae(tmp_path):
    classic = {"fp16": (), "int": (2.0, 8.0), "topk": (0.05, 0.5)}
    figures = FigureOptions(history_variants=("f-ae",), example_variant="f-ae")
    preset = Preset("tiny", TINY_RUN, ("synthetic-lesion",), ("f",), ("ae",),
                    {"ae": (0.01, 100.0)}, seeds=1, figures=figures, classic=classic)  # fmt: skip
    result = reproduce(make_plan(preset), tmp_path, log=lambda line: None)
    assert not result.failed and len(result.outcomes) == 1 + 2 + 1 + 2 + 2
    for folder in ("f-fp16/seed-0", "f-int/bits-2/seed-0", "f-topk/topk_fraction-0.05/seed-0"):
        assert (tmp_path / "synthetic-lesion" / folder / "summary.json").is_file()
    curves = {(c["variant"], c["knob"], c["knob_value"]): c for c in _csv(tmp_path / "curves.csv")}
    assert {("f-int", "bits", "2.0"), ("f-int", "bits", "8.0"), ("f-fp16", "", "")} <= set(curves)
    # fp16: 16 bits a value (and a byte a message) for 4 channels at a quarter of the pixels.
    assert float(curves["f-fp16", "", ""]["bpp_s1_mean"]) == pytest.approx(16, rel=1e-3)
    assert float(curves["f-int", "bits", "2.0"]["bpp_s1_mean"]) < float(
        curves["f-int", "bits", "8.0"]["bpp_s1_mean"]
    )
    bd = _csv(tmp_path / "bd.csv")
    assert [b["variant"] for b in bd] == ["f-cheng2020-attn"] * 3 + [
        f"f-{c}" for c in ("fp16", "int", "topk") for _ in range(3)
    ]
    assert all(b["anchor"] == "f-ae" for b in bd)
    assert all("single point" in b["error"] for b in bd if b["variant"] == "f-fp16")
    # The int and topk rows carry numbers, or say why they have none.
    assert all(b["method"] or b["error"] for b in bd if b["variant"] in ("f-int", "f-topk"))
    reach = _csv(tmp_path / "reach.csv")
    assert {r["variant"] for r in reach} == {"f-ae", "f-fp16", "f-int", "f-topk"}
    nc = float(reach[0]["nc_mji"])
    assert all(float(r["target_mji"]) == pytest.approx(nc - NC_MARGIN) for r in reach)
    report = (tmp_path / "report.md").read_text()
    assert "## The rate that reaches NC − 0.01" in report and "the mark" in report
    assert "Classic codecs and their knobs' grids" in report and "| f-int | bits=2 |" in report
    assert (tmp_path / "fig-rate-accuracy-synthetic-lesion.png").stat().st_size > 5000


def _curve(variant, mji, bpp_t, lam=None, knob=None, value=None):
    return {"dataset": "d", "variant": variant, "lambda": lam, "knob": knob, "knob_value": value,
            "n": 1, "test_mji_mean": mji, "bpp_t_mean": bpp_t}  # fmt: skip


def test_the_report_says_plainly_who_reaches_nc_and_at_what_rate():
    curves = [
        _curve("nc", 0.75, 256.0),
        _curve("f-ae", 0.60, 0.01, lam=1.0), _curve("f-ae", 0.72, 0.1, lam=100.0),
        _curve("f-int", 0.70, 1.5, knob="bits", value=1.0),
        _curve("f-int", 0.745, 3.0, knob="bits", value=2.0),
        _curve("f-int", 0.76, 30.0, knob="bits", value=8.0), _curve("f-fp16", 0.75, 64.0),
    ]  # fmt: skip
    rows = reach_rows(curves)
    by = {r["variant"]: r for r in rows}
    assert by["f-int"]["rate"] == 3.0 and by["f-int"]["setting"] == "bits=2"
    assert by["f-ae"]["rate"] is None and by["f-ae"]["best_setting"] == "λ=100"
    assert by["f-fp16"]["setting"] == "" and by["f-fp16"]["rate"] == 64.0
    text = _verdict(rows)
    assert "the mark 0.740" in text
    assert "No learned codec reaches it; the closest is f-ae (λ=100), MJI 0.720 at 0.1" in text
    assert "Cheapest classic codec to reach it: f-int (bits=2) at 3 BPP-T." in text
    # When both families reach it, the winner is named with its factor.
    curves.append(_curve("f-ae", 0.745, 0.3, lam=1e4))
    text = _verdict(reach_rows(curves))
    assert "Cheapest learned codec to reach it: f-ae (λ=10000) at 0.3 BPP-T." in text
    assert "f-ae gets there with 10x fewer bits than f-int." in text
    assert math.isclose(NC_MARGIN, 0.01)


def test_every_classic_codec_has_a_knob_entry():
    assert set(KNOBS) == set(CLASSIC_CODECS)
