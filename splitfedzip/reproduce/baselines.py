"""The runs of the paper's Table 3, composed from configuration: each method is a base run of
the grid with ``codec_training`` and ``train.gradient_threshold`` set (docs/baselines.md).

Runs that load an earlier run's checkpoints (M1, two-stage) form a second stage, queued after
the first has finished. A pretraining run is an ordinary grid run on the partner dataset: one
the main grid already holds is not queued twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import from_dict
from .plan import Plan, Run, _run, merge

#: Table 3's methods (run variants), in the table's order; NC is the grid's ``nc``.
METHODS = ("nc", "ayad-m1", "ayad-m2", "two-stage", "two-phase")


@dataclass(frozen=True)
class Stages:
    """Baseline runs: ``first`` needs nothing, ``then`` loads checkpoints of ``first``'s."""

    first: tuple[Run, ...]
    then: tuple[Run, ...]
    #: Table 3's datasets and seeds (its NC rows come from the grid's runs where it has them).
    datasets: tuple[str, ...] = ()
    seeds: int = 0

    def table_runs(self, grid_runs: tuple[Run, ...]) -> list[Run]:
        """The runs Table 3 is made of: these and the grid's NC runs of its datasets and seeds."""
        return [r for r in (*grid_runs, *self.runs)
                if r.dataset in self.datasets and r.seed < self.seeds]  # fmt: skip

    @property
    def runs(self) -> tuple[Run, ...]:
        """Every baseline run, in queue order."""
        return self.first + self.then


def stages(plan: Plan, out: Path) -> Stages:
    """Table 3's runs for ``plan`` written under ``out`` (none without a ``baselines`` key)."""
    grid = plan.preset.baselines
    if grid is None:
        return Stages((), ())
    known = {run.path for run in plan.runs}
    first: list[Run] = []
    then: list[Run] = []

    def add(queue: list[Run], run: Run) -> Run:
        if run.path not in known:
            known.add(run.path)
            queue.append(run)
        return run

    datasets, seeds = grid.datasets or tuple(plan.bases), grid.seeds or plan.seeds
    for seed in range(seeds):
        for dataset in datasets:
            base = plan.base(dataset)
            add(first, _run(plan.preset, base, dataset, "nc", None, None, seed))
            ayad = _run(plan.preset, base, dataset, "f", grid.codec, grid.ayad_lambda, seed)
            for g in grid.gthres:
                m2 = {"train": {"gradient_threshold": g},
                      "codec_training": {"freeze_round": grid.m2_freeze_round}}  # fmt: skip
                add(first, _method(ayad, "ayad-m2", None, ("gthres", g), m2))
            for lam in grid.lambdas:
                rule = {"freeze_round": grid.two_phase_freeze_round,
                        "freeze_rate_change": grid.two_phase_rate_change}  # fmt: skip
                fg = _run(plan.preset, base, dataset, "fg", grid.codec, lam, seed)
                add(first, _method(fg, "two-phase", lam, None, {"codec_training": rule}))
            other = grid.pretrain_on.get(dataset)
            if other is None:
                continue  # no partner dataset: no M1 nor two-stage rows
            pre = plan.base(other)
            pre_ayad = add(
                first, _run(plan.preset, pre, other, "f", grid.codec, grid.ayad_lambda, seed)
            )
            for g in grid.gthres:
                frozen = {"pretrained": str(out / pre_ayad.path), "trainable": _FEATURES_FROZEN}
                m1 = {"train": {"gradient_threshold": g}, "codec_training": frozen}
                add(then, _method(ayad, "ayad-m1", None, ("gthres", g), m1))
            for lam in grid.lambdas:
                pre_fg = add(first, _run(plan.preset, pre, other, "fg", grid.codec, lam, seed))
                two = {"codec_training": {"pretrained": str(out / pre_fg.path),
                       "pretrained_unet": True, "trainable": _FEATURES_FROZEN}}  # fmt: skip
                fg = _run(plan.preset, base, dataset, "fg", grid.codec, lam, seed)
                add(then, _method(fg, "two-stage", lam, None, two))
    return Stages(tuple(first), tuple(then), datasets, seeds)


#: M1 and two-stage: the feature codecs are loaded and frozen; gradient codecs keep training.
_FEATURES_FROZEN = {"s1_feature": False, "s2_feature": False}


def _method(
    run: Run, variant: str, lmbda: float | None, knob: tuple[str, float] | None, keys: dict
) -> Run:
    """``run`` turned into a method of Table 3 by setting ``keys`` on its config."""
    config = from_dict(merge(run.config.to_dict(), keys))
    return Run(run.dataset, variant, lmbda, run.seed, config, knob)
