"""The ``baselines`` key of a reproduce preset, typed: the grid of the paper's Table 3."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import DATASETS, LEARNED_CODECS, ConfigError

#: Where each dataset's codecs (and, for two-stage, U-Net) are pretrained by default: the other
#: synthetic dataset, as the paper pretrains on HAM10000 for Blastocyst and vice versa.
PRETRAIN_ON = {"synthetic-lesion": "synthetic-blastocyst",
               "synthetic-blastocyst": "synthetic-lesion"}  # fmt: skip


@dataclass(frozen=True)
class BaselineGrid:
    """Ayad et al.'s M1 and M2 over a gthres grid, SplitFedZip's two-stage and two-phase over
    a λ grid, on each of ``datasets`` (docs/baselines.md)."""

    #: Datasets of Table 3 (empty: the reproduction's own).
    datasets: tuple[str, ...] = ()
    #: The feature codec of every method (the paper: its AE, for both sides).
    codec: str = "ae"
    #: Ayad et al.'s loss threshold grid; ``.inf`` sends no gradient, 0 every one.
    gthres: tuple[float, ...] = (math.inf, 5.0, 1.5, 1.0, 0.5, 0.25, 0.1, 0.0)
    #: λ of Ayad et al.'s AE (the release trains it on rate + MSE + Dice, all weighted 1).
    ayad_lambda: float = 1.0
    #: M2: the AE trains for the rounds before this one, then is frozen (the release: 5).
    m2_freeze_round: int = 5
    #: Two-stage and two-phase: their λ grid.
    lambdas: tuple[float, ...] = (1.0e-3, 0.1, 10.0)
    #: Two-phase: freeze from this round, or once the round's rate changed by less than this
    #: fraction (codec_training.freeze_round / freeze_rate_change); one of the two.
    two_phase_freeze_round: int | None = None
    two_phase_rate_change: float | None = 0.05
    #: Dataset -> the dataset its pretraining runs use (M1, two-stage).
    pretrain_on: Mapping[str, str] = field(default_factory=lambda: dict(PRETRAIN_ON))
    #: Seeds per point (None: the reproduction's).
    seeds: int | None = None

    def __post_init__(self) -> None:
        """Check the grid before any run starts."""
        _need(all(d in DATASETS for d in self.datasets), f"datasets: each one of {DATASETS}")
        _need(self.codec in LEARNED_CODECS, f"codec: one of {LEARNED_CODECS}")
        _need(bool(self.gthres) and all(g >= 0 for g in self.gthres), "gthres: values >= 0")
        _need(self.ayad_lambda > 0, "ayad_lambda: must be > 0")
        _need(self.m2_freeze_round >= 1, "m2_freeze_round: must be >= 1 (round 0 trains)")
        _need(bool(self.lambdas) and all(x > 0 for x in self.lambdas), "lambdas: values > 0")
        rules = (self.two_phase_freeze_round, self.two_phase_rate_change)
        _need(
            sum(r is not None for r in rules) == 1,
            "two_phase_freeze_round, two_phase_rate_change: give exactly one",
        )
        for a, b in self.pretrain_on.items():
            _need(a in DATASETS and b in DATASETS and a != b,
                  f"pretrain_on.{a}: another dataset of {DATASETS}")  # fmt: skip
        _need(self.seeds is None or self.seeds >= 1, "seeds: must be >= 1")


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"reproduce preset: baselines.{message}")


def baseline_grid(raw: Any) -> BaselineGrid | None:
    """The preset's ``baselines`` mapping as a :class:`BaselineGrid` (None when absent)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError("reproduce preset: baselines: expected a mapping")
    values = dict(raw)
    try:
        for key in ("datasets", "gthres", "lambdas"):
            if key in values:
                values[key] = tuple(values[key])
        for key in ("gthres", "lambdas"):
            if key in values:
                values[key] = tuple(float(x) for x in values[key])
        return BaselineGrid(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"reproduce preset: baselines: {e}") from e
