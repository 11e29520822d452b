"""``splitfedzip reproduce`` with the baselines: the runs Table 3 is composed of, table3.csv,
its figure and report section."""

from __future__ import annotations

import csv
import dataclasses
import math

import pytest
from test_reproduce import tiny_preset

from splitfedzip.config import ConfigError
from splitfedzip.reproduce import load_preset, make_plan, reproduce
from splitfedzip.reproduce.baseline_grid import BaselineGrid, baseline_grid
from splitfedzip.reproduce.baselines import stages
from splitfedzip.reproduce.plan import preset_from_dict

# Tiny runs are fastest on one thread (and do not fight other processes for cores).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_grid(**changes) -> BaselineGrid:
    """Both synthetic datasets, two gthres, one λ, the M2 codec frozen from round 1."""
    values = {"datasets": ("synthetic-lesion", "synthetic-blastocyst"), "gthres": (math.inf, 0.0),
              "lambdas": (0.01,), "m2_freeze_round": 1, "two_phase_freeze_round": 1,
              "two_phase_rate_change": None}  # fmt: skip
    return BaselineGrid(**(values | changes))


def test_the_runs_of_table3_are_composed_from_config(tmp_path):
    preset = dataclasses.replace(tiny_preset(), baselines=tiny_grid())
    s = stages(make_plan(preset), tmp_path)
    names = [r.name for r in s.first]
    assert "synthetic-lesion/ayad-m2/gthres-inf/seed-0" in names
    assert "synthetic-blastocyst/nc/seed-0" in names  # outside the grid: added
    assert "synthetic-lesion/nc/seed-0" not in names  # the grid's own is not queued twice
    m1 = next(r for r in s.then if r.name == "synthetic-lesion/ayad-m1/gthres-0/seed-0")
    ct = m1.config.codec_training
    assert ct.pretrained == str(tmp_path / "synthetic-blastocyst/f-ae/lambda-1/seed-0")
    assert not ct.trainable.s1_feature and not ct.trainable.s2_feature and not ct.pretrained_unet
    assert m1.config.scheme == "f" and m1.config.train.gradient_threshold == 0
    two = next(r for r in s.then if r.variant == "two-stage" and r.dataset == "synthetic-lesion")
    assert two.config.codec_training.pretrained_unet and two.config.scheme == "fg"
    assert two.config.codec_training.trainable.s2_gradient  # gradient codecs keep training
    phase = next(r for r in s.first if r.variant == "two-phase")
    assert phase.config.codec_training.freeze_round == 1
    m2 = next(r for r in s.first if r.variant == "ayad-m2")
    m2_ct = m2.config.codec_training
    assert m2_ct.freeze_round == 1 and m2_ct.pretrained is None


def test_tiny_table3_csv_figure_and_report(tmp_path):
    grid = tiny_grid(datasets=("synthetic-lesion",), pretrain_on={})
    # No partner dataset: M1 and two-stage have nothing to load, the rest runs (6 runs, ~1 s each).
    preset = dataclasses.replace(tiny_preset(), baselines=grid)
    result = reproduce(make_plan(preset), tmp_path, log=lambda _: None)
    assert not result.failed
    with open(tmp_path / "table3.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["method"], r["setting"]) for r in table] == [
        ("nc", ""), ("ayad-m2", "gthres=inf"), ("ayad-m2", "gthres=0"), ("two-phase", "λ=0.01"),
    ]  # fmt: skip
    by = {(r["method"], r["setting"]): r for r in table}
    assert float(by["ayad-m2", "gthres=inf"]["gradients_sent"]) == 0
    assert float(by["ayad-m2", "gthres=0"]["gradients_sent"]) == 1
    # gthres = inf sends no gradient: the paper's DT is the features' alone, less than at 0.
    assert float(by["ayad-m2", "gthres=inf"]["dt_paper_mean"]) < float(
        by["ayad-m2", "gthres=0"]["dt_paper_mean"])  # fmt: skip
    for r in table:
        assert 0 < float(r["dt_split_mean"]) < float(r["dt_total_mean"])
    assert (tmp_path / "fig-table3-mji-dt-synthetic-lesion.png").stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert "## Table 3: against Ayad et al." in report and "| ayad-m2 | gthres=inf |" in report
    assert "ayad-m2's best MJI is" in report


def test_bad_baselines_key_is_a_clear_error():
    with pytest.raises(ConfigError, match="baselines.two_phase_freeze_round"):
        baseline_grid({"two_phase_freeze_round": 2})  # and the default rate rule: two rules
    with pytest.raises(ConfigError, match="baselines: .*unexpected keyword argument 'gthresh'"):
        baseline_grid({"gthresh": [1]})
    quick = load_preset("quick")
    assert quick.baselines is not None and quick.baselines.codec == "ae"
    with pytest.raises(ConfigError, match="baselines.gthres"):
        preset_from_dict({"baselines": {"gthres": [-1]}})
