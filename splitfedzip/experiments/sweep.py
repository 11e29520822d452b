"""Rate-accuracy curves over λ for several scheme/codec variants, and their BD-rates."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import UserError
from ..metrics import bd_metric, bd_rate
from .train import run_embedded, write_outputs

#: Columns of curves.csv: one point per (variant, λ).
CURVE_KEYS = (
    "bpp_s1", "bpp_s2", "bpp_t", "bpp_s1_est", "bpp_s2_est", "test_mji", "test_dice",
    "cr_s1", "cr_s2", "bytes_split", "bytes_total",
)  # fmt: skip
#: The rates a BD comparison is made on, as in the paper's Table 1 (per split point and total).
RATES = ("bpp_s1", "bpp_s2", "bpp_t")


def variant_name(cfg: Config) -> str:
    """``scheme-codec``, the folder name of a variant."""
    return f"{cfg.scheme}-{cfg.codec}"


def run_sweep(configs: Sequence[Config], out: Path, progress: bool = False) -> list[dict[str, Any]]:
    """Train every configuration (each its own folder under ``out``); the curve points.

    ``out/curves.csv`` is rewritten after every run, so an interrupted sweep keeps its points.
    """
    points = []
    for cfg in configs:
        result = run_embedded(cfg, progress=progress)
        folder = out / variant_name(cfg) / f"lambda-{cfg.lmbda:g}"
        write_outputs(cfg, result, folder)
        s = result.summary
        point = {"variant": variant_name(cfg), "lambda": cfg.lmbda, **{k: s[k] for k in CURVE_KEYS}}
        points.append(point)
        write_csv(out / "curves.csv", points)
    return points


def bd_table(points: list[dict[str, Any]], anchor: str, method: str) -> list[dict[str, Any]]:
    """BD-rate (%) and BD-MJI of every variant against ``anchor``, for each rate in RATES.

    ``method`` is ``cubic``, ``pchip`` or ``auto`` (chosen per comparison, see ``_method``).
    """
    curves: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        curves.setdefault(p["variant"], []).append(p)
    if anchor not in curves:
        raise UserError(f"anchor {anchor!r} is not among the variants {sorted(curves)}")
    rows = []
    ref = curves[anchor]
    for name, pts in curves.items():
        if name == anchor:
            continue
        for rate in RATES:
            args = (
                [p[rate] for p in ref], [p["test_mji"] for p in ref],
                [p[rate] for p in pts], [p["test_mji"] for p in pts],
            )  # fmt: skip
            used = _method(args) if method == "auto" else method
            row = {"variant": name, "anchor": anchor, "rate": rate, "method": used}
            try:
                row["bd_rate_percent"] = bd_rate(*args, method=used)
                row["bd_mji"] = bd_metric(*args, method=used)
            except ValueError as e:  # e.g. curves that do not overlap: say so, do not guess
                row["bd_rate_percent"] = row["bd_mji"] = None
                row["error"] = str(e)
            rows.append(row)
    return rows


def _method(curves: tuple[list[float], ...]) -> str:
    """Cubic (the classic fit) where every rate and metric has 4 distinct values, else PCHIP."""
    return "cubic" if all(len(set(values)) >= 4 for values in curves) else "pchip"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as CSV with the union of their keys as the header."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def read_points(path: Path) -> list[dict[str, Any]]:
    """curves.csv back into points (numbers as floats, empty cells as None)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no curves.csv here; run the sweep first")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "variant" not in rows[0] or "test_mji" not in rows[0]:
        raise UserError(f"{path}: not a curves.csv written by splitfedzip sweep")
    return [
        {k: v if k == "variant" else (float(v) if v != "" else None) for k, v in r.items()}
        for r in rows
    ]


def format_tables(points: list[dict[str, Any]], bd: list[dict[str, Any]]) -> str:
    """The curves' points, then the BD comparison."""
    lines = [f"{'variant':<22} {'lambda':>8} {'bpp_s1':>9} {'bpp_s2':>9} {'bpp_t':>9} {'MJI':>7}"]
    for p in points:
        lines.append(
            f"{p['variant']:<22} {p['lambda']:>8g} {p['bpp_s1']:>9.4f} {p['bpp_s2']:>9.4f} "
            f"{p['bpp_t']:>9.4f} {p['test_mji']:>7.4f}"
        )
    if bd:
        lines += ["", f"{'variant':<22} {'anchor':<22} {'rate':<7} {'BD-rate %':>10} {'BD-MJI':>8}"]
        for r in bd:
            if r["bd_rate_percent"] is None:
                value = f"  n/a: {r['error']}"
            else:
                value = f"{r['bd_rate_percent']:>10.2f} {r['bd_mji']:>8.4f}"
            lines.append(f"{r['variant']:<22} {r['anchor']:<22} {r['rate']:<7} {value}")
    return "\n".join(lines)
