"""From finished runs to tables: one row per run, curves over seeds, BD per dataset and scheme."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from ..config import LEARNED_CODECS
from ..experiments.sweep import RATES, bd_table
from .plan import Run

#: Per-run figures copied from summary.json into runs.csv.
RUN_KEYS = (
    "test_mji", "test_dice", "bpp_s1", "bpp_s2", "bpp_t", "cr_s1", "cr_s2",
    "bytes_split", "bytes_total", "wall_seconds",
)  # fmt: skip
#: Figures averaged over seeds in curves.csv (log10 CRs for Fig. 4: their spread is symmetric).
CURVE_KEYS = (
    "test_mji", "bpp_s1", "bpp_s2", "bpp_t", "cr_s1", "cr_s2", "log10_cr_s1", "log10_cr_s2",
    "bytes_split", "bytes_total",
)  # fmt: skip
#: Figs. 5/6: the four crossings of a training batch, in the order they happen.
BPP_COLUMNS = ("bpp_s1_feature", "bpp_s2_feature", "bpp_s2_gradient", "bpp_s1_gradient")
#: BD compares the test codec against the anchor codec, per dataset and scheme (Table 1).
ANCHOR, TEST = "ae", "cheng2020-attn"
#: A variant matches NC when its test MJI reaches NC's minus this.
NC_MARGIN = 0.01
#: The rate the NC-match table ranks variants by.
REACH_RATE = "bpp_t"


def run_rows(runs: Iterable[Run], out: Path) -> list[dict[str, Any]]:
    """One row per finished run (every seed), from its summary.json."""
    rows = []
    for run in runs:
        try:
            summary = json.loads((out / run.path / "summary.json").read_text())
        except (OSError, ValueError):
            continue  # not finished: left out of every table
        row = {"dataset": run.dataset, "variant": run.variant, "lambda": run.lmbda}
        row |= {"knob": run.knob[0] if run.knob else None,
                "knob_value": run.knob[1] if run.knob else None}  # fmt: skip
        row |= {"seed": run.seed} | {k: _number(summary.get(k)) for k in RUN_KEYS}
        for split in ("s1", "s2"):
            cr = row[f"cr_{split}"]
            row[f"log10_cr_{split}"] = math.log10(cr) if cr and cr > 0 else math.nan
        rows.append(row)
    return rows


def _number(value: Any) -> float:
    """A summary value as a float, NaN when absent."""
    return math.nan if value is None else float(value)


def curve_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (dataset, variant, λ or knob), in the order the runs came."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["dataset"], r["variant"], r["lambda"], r.get("knob"), r.get("knob_value"))
        groups.setdefault(key, []).append(r)
    out = []
    for (dataset, variant, lam, knob, value), group in groups.items():
        row: dict[str, Any] = {"dataset": dataset, "variant": variant, "lambda": lam}
        row |= {"knob": knob, "knob_value": value, "n": len(group)}
        for key in CURVE_KEYS:
            values = np.array([g[key] for g in group], dtype=np.float64)
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values)
        out.append(row)
    return out


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1); the std is NaN for fewer than 2 values."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    std = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
    return float(np.mean(values)), std


def bd_rows(
    curves: Sequence[dict[str, Any]], schemes: Sequence[str], tests: Sequence[str] = (TEST,)
) -> list[dict[str, Any]]:
    """Table 1: BD of each test codec against the anchor, per dataset, scheme and rate.

    Points are the seed means; the fit is the sweep's choice (cubic given 4 distinct values,
    else PCHIP). A comparison that cannot be made has no numbers and says why.
    """
    out = []
    for dataset in dict.fromkeys(c["dataset"] for c in curves):
        for scheme in schemes:
            for codec in tests:
                out += _bd_pair(curves, dataset, scheme, f"{scheme}-{ANCHOR}", f"{scheme}-{codec}")
    return out


def _bd_pair(
    curves: Sequence[dict[str, Any]], dataset: str, scheme: str, anchor: str, test: str
) -> list[dict[str, Any]]:
    """The BD rows of one test variant against the anchor."""
    points = [_point(c) for c in curves if c["dataset"] == dataset]
    points = [p for p in points if p["variant"] in (anchor, test)]
    head = {"dataset": dataset, "scheme": scheme}
    missing = [v for v in (anchor, test) if all(p["variant"] != v for p in points)]
    if missing:
        error = f"no finished {' or '.join(missing)} runs"
        return [head | _empty(test, anchor, rate, error) for rate in RATES]
    if sum(p["variant"] == test for p in points) < 2:
        error = f"{test} has a single point (no knob to sweep): no curve to integrate"
        return [head | _empty(test, anchor, rate, error) for rate in RATES]
    return [head | row | _overlaps(points, anchor, test, row["rate"])
            for row in bd_table(points, anchor, "auto")]  # fmt: skip


def _point(curve: dict[str, Any]) -> dict[str, Any]:
    """A curve row as a sweep point (the seed means)."""
    point = {"variant": curve["variant"], "lambda": curve["lambda"]}
    return point | {k: curve[f"{k}_mean"] for k in (*RATES, "test_mji")}


def _empty(test: str, anchor: str, rate: str, error: str) -> dict[str, Any]:
    """A BD row without numbers."""
    return {"variant": test, "anchor": anchor, "rate": rate, "method": None,
            "bd_rate_percent": None, "bd_mji": None, "error": error}  # fmt: skip


def _overlaps(points: list[dict[str, Any]], anchor: str, test: str, rate: str) -> dict[str, Any]:
    """The intervals BD integrates over: common MJI range (BD-rate), common ln-rate (BD-MJI)."""
    out: dict[str, Any] = {}
    for key, fn, name in (("test_mji", float, "mji"), (rate, math.log, "ln_rate")):
        ranges = []
        for v in (anchor, test):
            values = [p[key] for p in points if p["variant"] == v]
            values = [fn(x) for x in values if np.isfinite(x) and (name == "mji" or x > 0)]
            ranges.append((min(values), max(values)) if values else (math.nan, math.nan))
        lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
        ok = lo < hi  # False as well when a range is NaN
        out[f"{name}_lo"], out[f"{name}_hi"] = (lo, hi) if ok else (None, None)
    return out


def setting(curve: dict[str, Any]) -> str:
    """``λ=10``, ``bits=4``, ``topk_fraction=0.01``, or empty (NC, fp16, bf16)."""
    if curve["lambda"] is not None:
        return f"λ={curve['lambda']:g}"
    if curve.get("knob"):
        return f"{curve['knob']}={curve['knob_value']:g}"
    return ""


def is_learned(variant: str) -> bool:
    """Whether a ``<scheme>-<codec>`` variant's codec is a learned one."""
    return variant.partition("-")[2] in LEARNED_CODECS


def reach_rows(curves: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and variant: the cheapest point (in REACH_RATE) whose seed-mean test MJI
    reaches NC's minus NC_MARGIN, and the variant's best MJI; no row without an NC run."""
    out = []
    for dataset in dict.fromkeys(c["dataset"] for c in curves):
        mine = [c for c in curves if c["dataset"] == dataset]
        nc = next((c for c in mine if c["variant"] == "nc"), None)
        if nc is None or not np.isfinite(nc["test_mji_mean"]):
            continue
        target = nc["test_mji_mean"] - NC_MARGIN
        for variant in dict.fromkeys(c["variant"] for c in mine if c["variant"] != "nc"):
            pts = [c for c in mine if c["variant"] == variant and np.isfinite(c["test_mji_mean"])
                   and c[f"{REACH_RATE}_mean"] > 0]  # fmt: skip
            if not pts:
                continue
            ok = [c for c in pts if c["test_mji_mean"] >= target]
            cheapest = min(ok, key=lambda c: c[f"{REACH_RATE}_mean"]) if ok else None
            top = max(pts, key=lambda c: c["test_mji_mean"])
            out.append({
                "dataset": dataset, "variant": variant, "nc_mji": nc["test_mji_mean"],
                "target_mji": target, "setting": setting(cheapest) if cheapest else None,
                "rate": cheapest[f"{REACH_RATE}_mean"] if cheapest else None,
                "test_mji": cheapest["test_mji_mean"] if cheapest else None,
                "best_setting": setting(top), "best_mji": top["test_mji_mean"],
                "best_rate": top[f"{REACH_RATE}_mean"],
            })  # fmt: skip
    return out


def order_rows(curves: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset and learned variant: how λ orders the rate and the accuracy.

    Spearman's ρ of the seed-mean REACH_RATE against λ (1: the rate never falls as λ grows), the
    decades of rate the grid spans, and the test MJI at the lowest λ against NC's.
    """
    out = []
    for dataset in dict.fromkeys(c["dataset"] for c in curves):
        mine = [c for c in curves if c["dataset"] == dataset]
        nc = next((c["test_mji_mean"] for c in mine if c["variant"] == "nc"), math.nan)
        for variant in dict.fromkeys(c["variant"] for c in mine if is_learned(c["variant"])):
            rated = [c for c in mine if c["variant"] == variant and c[f"{REACH_RATE}_mean"] > 0]
            pts = sorted(rated, key=lambda c: float(c["lambda"]))
            if not pts:
                continue
            rates = [c[f"{REACH_RATE}_mean"] for c in pts]
            ordered = len(pts) >= 3 and len(set(rates)) > 1
            rho = spearmanr([float(c["lambda"]) for c in pts], rates).statistic if ordered else None
            low = pts[0]
            out.append({
                "dataset": dataset, "variant": variant, "points": len(pts),
                "spearman": None if rho is None else float(rho),
                "span_decades": math.log10(max(rates) / min(rates)),
                "rate_low": min(rates), "rate_high": max(rates),
                "lambda_low": float(low["lambda"]), "mji_low": low["test_mji_mean"],
                "nc_mji": nc, "mji_below_nc": nc - low["test_mji_mean"],
            })  # fmt: skip
    return out


def history_rows(folder: Path) -> list[dict[str, float]] | None:
    """A run's history.csv as numbers (None when the run wrote none)."""
    path = folder / "history.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()}
                for r in csv.DictReader(f)]  # fmt: skip


def pick_run(
    runs: Sequence[Run], dataset: str, variants: Sequence[str], lam: float, out: Path
) -> tuple[str, float] | None:
    """(variant, λ) of the first variant with finished runs, at the λ nearest ``lam`` (log)."""
    for variant in variants:
        lams = {r.lmbda for r in runs if r.dataset == dataset and r.variant == variant
                and r.lmbda is not None and (out / r.path / "summary.json").is_file()}  # fmt: skip
        if lams:
            return variant, min(sorted(lams), key=lambda x: abs(math.log(x / lam)))
    return None


def training_bpp(
    runs: Sequence[Run], out: Path, dataset: str, variant: str, lam: float
) -> dict[str, Any] | None:
    """Figs. 5/6: each crossing's training BPP per global epoch, mean over clients then seeds.

    The global epoch of a history row is ``round * local_epochs + epoch`` (rounds count from
    0, local epochs from 1). None when no run of the selection wrote a history.
    """
    per_seed, local = [], 1
    for run in runs:
        if (run.dataset, run.variant, run.lmbda) != (dataset, variant, lam):
            continue
        rows = history_rows(out / run.path)
        if not rows:
            continue
        local = run.config.train.local_epochs
        by_epoch: dict[int, list[dict[str, float]]] = {}
        for r in rows:
            by_epoch.setdefault(int(r["round"]) * local + int(r["epoch"]), []).append(r)
        per_seed.append({e: {c: finite_mean([r.get(c, math.nan) for r in rs]) for c in BPP_COLUMNS}
                         for e, rs in by_epoch.items()})  # fmt: skip
    if not per_seed:
        return None
    epochs = sorted(set().union(*per_seed))
    curves = {
        c: np.array([finite_mean([s[e][c] for s in per_seed if e in s]) for e in epochs])
        for c in BPP_COLUMNS
    }
    return {"epochs": np.array(epochs), "curves": curves, "seeds": len(per_seed),
            "local_epochs": local}  # fmt: skip


def finite_mean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN when there are none."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def predictions(folder: Path) -> dict[str, np.ndarray] | None:
    """A run's predictions.npz (images, masks, predictions, mji), or None."""
    path = folder / "predictions.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def examples(
    runs: Sequence[Run], out: Path, dataset: str, variant: str, count: int
) -> dict[str, Any] | None:
    """Table 2: the first seed's test images, masks, NC's predictions and ``variant``'s at up to
    ``count`` λ spread over its grid. None when the NC run or every λ run lacks predictions."""
    seed = min(r.seed for r in runs)
    chosen = [r for r in runs if r.dataset == dataset and r.seed == seed]
    nc = next((predictions(out / r.path) for r in chosen if r.variant == "nc"), None)
    grid = sorted((r for r in chosen if r.variant == variant), key=lambda r: r.lmbda)
    if grid and len(grid) > count:
        grid = [grid[int(i)] for i in np.unique(np.linspace(0, len(grid) - 1, count).round())]
    columns = [("NC", nc)] + [(f"λ={r.lmbda:g}", predictions(out / r.path)) for r in grid]
    columns = [(label, p) for label, p in columns if p is not None]
    if nc is None or len(columns) < 2:
        return None
    # Same seed, same data: every run saw the same test images; keep those they share.
    k = min(len(p["predictions"]) for _, p in columns)
    return {
        "images": nc["images"][:k],
        "masks": nc["masks"][:k],
        "seed": seed,
        "columns": [(label, p["predictions"][:k], p["mji"][:k]) for label, p in columns],
    }
