"""The paper's Table 3: MJI and data transferred (DT) of NC, Ayad et al.'s M1 and M2 and
SplitFedZip's two-stage and two-phase training, and the paper's claim on it tested.

DT three ways (docs/baselines.md): the paper's formula (one pass over the training samples,
no federation traffic), the ledger's split traffic (every feature and gradient frame of the
run's training and validation) and the ledger's total (federation and control included).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics.ledger import Ledger
from ..metrics.summary import payload_bytes
from ..models import split_channels
from .baselines import METHODS
from .plan import Run

#: The three ways of counting DT: column -> what the report calls it.
DT_WAYS = {"dt_paper": "paper's formula", "dt_split": "ledger, split traffic",
           "dt_total": "ledger, total"}  # fmt: skip
#: Methods whose DT the paper counts with Ayad et al.'s formula; the others use SplitFedZip's.
AYAD_FORMULA = ("nc", "ayad-m1", "ayad-m2")
#: Columns of table3.csv.
COLUMNS = ("dataset", "method", "setting", "n", "mji_mean", "mji_std", "dt_formula",
           *(f"{k}_mean" for k in DT_WAYS), "gradients_sent", "train_samples")  # fmt: skip
#: The paper's comparisons: (SplitFedZip method, the baseline it is held against).
CLAIMS = (("two-phase", "ayad-m2"), ("two-stage", "ayad-m1"))


def run_rows(runs: Iterable[Run], out: Path) -> list[dict[str, Any]]:
    """One row per finished run of Table 3's methods: MJI and DT three ways."""
    rows = []
    for run in runs:
        if run.variant not in METHODS:
            continue
        folder = out / run.path
        try:
            summary = json.loads((folder / "summary.json").read_text())
            ledger = Ledger.read_csv(folder / "ledger.csv")
            history = _history(folder / "history.csv")
        except (OSError, ValueError, KeyError):
            continue  # not finished: left out of the table
        rows.append({"dataset": run.dataset, "method": run.variant, "setting": _setting(run),
                     "seed": run.seed, **_traffic(run, summary, ledger, history)})  # fmt: skip
    return rows


def _setting(run: Run) -> str:
    if run.knob is not None:
        return f"{run.knob[0]}={run.knob[1]:g}"
    return "" if run.lmbda is None else f"λ={run.lmbda:g}"


def _history(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _traffic(run: Run, summary: dict, ledger: Ledger, history: list[dict]) -> dict[str, Any]:
    """MJI, the share of gradients sent, and DT by the paper's formula and by the ledger."""
    cfg = run.config
    first = [h for h in history if int(h["round"]) == 0 and int(h["epoch"]) == 1]
    samples = sum(int(h["images"]) for h in first)  # one pass over the training samples
    seen = sum(int(h["images"]) for h in history)  # every training image of the run
    train = [r for r in ledger.rows if r.phase == "train"]
    requests = [r for r in train if r.direction.startswith("client->") and r.kind == "feature"]
    sent = [r for r in train if r.direction.startswith("client->") and r.kind == "gradient"]
    share = len(sent) / len(requests) if requests else math.nan
    if run.variant in AYAD_FORMULA:
        # Compressed feature size x training samples + uncompressed gradient size x gradients
        # sent, per sample, both split points.
        features = sum(payload_bytes(r) for r in train if r.kind == "feature") / max(seen, 1)
        side = cfg.data.image_size // 2
        gradient = 2 * 4 * split_channels(cfg.model.base_width) * side * side
        paper, formula = samples * (features + share * gradient), "ayad"
    else:
        # BPP-T x input pixels x training samples x 2 (features and gradients), in bytes.
        bpp = summary.get("bpp_t")
        pixels = cfg.data.image_size**2
        paper = math.nan if bpp is None else bpp * pixels * samples * 2 / 8
        formula = "splitfedzip"
    mji = summary.get("test_mji")
    return {
        "mji": math.nan if mji is None else float(mji), "dt_formula": formula,
        "dt_paper": paper, "dt_split": float(summary["bytes_split"]),
        "dt_total": float(summary["bytes_total"]), "gradients_sent": share,
        "train_samples": samples,
    }  # fmt: skip


def table_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean (and the MJI's std) over seeds per dataset, method and setting, in METHODS order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"], r["setting"]), []).append(r)
    out = []
    for (dataset, method, setting), group in groups.items():
        mji = np.array([g["mji"] for g in group], dtype=np.float64)
        row = {"dataset": dataset, "method": method, "setting": setting, "n": len(group),
               "mji_mean": float(np.mean(mji)),
               "mji_std": float(np.std(mji, ddof=1)) if len(mji) > 1 else math.nan,
               "dt_formula": group[0]["dt_formula"],
               "gradients_sent": float(np.mean([g["gradients_sent"] for g in group])),
               "train_samples": group[0]["train_samples"]}  # fmt: skip
        for key in DT_WAYS:
            row[f"{key}_mean"] = float(np.mean([g[key] for g in group]))
        out.append(row)
    datasets = list(dict.fromkeys(r["dataset"] for r in out))
    return sorted(out, key=lambda r: (datasets.index(r["dataset"]), METHODS.index(r["method"]),
                                      _order(r["setting"])))  # fmt: skip


def _order(setting: str) -> float:
    """gthres from large to small (as the paper's table), λ from small to large."""
    if not setting:
        return 0.0
    name, _, value = setting.partition("=")
    return -float(value) if name == "gthres" else float(value)


def claims(table: Sequence[dict[str, Any]], dataset: str) -> list[dict[str, Any]]:
    """For each of CLAIMS: the baseline's best MJI and its DT, and the least DT at which the
    SplitFedZip method reaches that MJI (None where none does), each way of counting DT."""
    out = []
    for ours, theirs in CLAIMS:
        base = [r for r in table if r["dataset"] == dataset and r["method"] == theirs
                and math.isfinite(r["mji_mean"])]  # fmt: skip
        mine = [r for r in table if r["dataset"] == dataset and r["method"] == ours
                and math.isfinite(r["mji_mean"])]  # fmt: skip
        if not base or not mine:
            continue
        best = max(base, key=lambda r: (r["mji_mean"], -r["dt_paper_mean"]))
        reach = [r for r in mine if r["mji_mean"] >= best["mji_mean"]]
        claim = {"dataset": dataset, "method": ours, "baseline": theirs, "target": best,
                 "best_own": max(mine, key=lambda r: r["mji_mean"])}  # fmt: skip
        for key in DT_WAYS:
            pick = min(reach, key=lambda r: r[f"{key}_mean"]) if reach else None
            claim[key] = pick
            claim[f"{key}_ratio"] = (best[f"{key}_mean"] / pick[f"{key}_mean"]
                                     if pick and pick[f"{key}_mean"] > 0 else None)  # fmt: skip
        out.append(claim)
    return out


def markdown(table: Sequence[dict[str, Any]], datasets: Sequence[str]) -> list[str]:
    """Report lines: Table 3 per dataset, then the paper's claims tested, in plain words."""
    lines = []
    for d in datasets:
        mine = [r for r in table if r["dataset"] == d]
        if not mine:
            lines += [f"### {d}", "", "No finished run of Table 3.", ""]
            continue
        head = ["method", "setting", "n", "MJI", "gradients sent", "DT paper (MB)",
                "DT split (MB)", "DT total (MB)"]  # fmt: skip
        body = [[r["method"], r["setting"] or "-", str(r["n"]), _pm(r), _pct(r["gradients_sent"]),
                 _mb(r["dt_paper_mean"]) + ("" if r["dt_formula"] == "ayad" else "*"),
                 _mb(r["dt_split_mean"]), _mb(r["dt_total_mean"])] for r in mine]  # fmt: skip
        lines += [f"### {d}", "", *_table(head, body), ""]
        lines += [f"- {_claim_text(c)}" for c in claims(table, d)] + [""]
    return lines


def _claim_text(c: dict[str, Any]) -> str:
    t = c["target"]
    text = (
        f"{c['baseline']}'s best MJI is {t['mji_mean']:.3f} ({t['setting']}, DT "
        f"{_mb(t['dt_paper_mean'])} MB by the paper's formula, {_mb(t['dt_split_mean'])} MB "
        f"split and {_mb(t['dt_total_mean'])} MB in all by the ledger)."
    )
    if c["dt_paper"] is None:
        own = c["best_own"]
        return text + (f" {c['method']} does not reach it: its best is {own['mji_mean']:.3f} "
                       f"({own['setting']}).")  # fmt: skip
    parts = []
    for key, name in DT_WAYS.items():
        pick, ratio = c[key], c[f"{key}_ratio"]
        parts.append(f"{name}: {_mb(pick[f'{key}_mean'])} MB at {pick['setting']} "
                     f"(MJI {pick['mji_mean']:.3f}), {ratio:.3g}x less")  # fmt: skip
    return text + f" {c['method']} reaches it with " + "; ".join(parts) + "."


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [f"| {' | '.join(r)} |" for r in (head, ["---"] * len(head), *rows)]


def _pm(r: dict[str, Any]) -> str:
    if not math.isfinite(r["mji_mean"]):
        return "-"
    std = r["mji_std"]
    return f"{r['mji_mean']:.3f}" + (f" ± {std:.2g}" if math.isfinite(std) else "")


def _mb(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value / 1e6:.4g}"


def _pct(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{100 * value:.0f}%"
