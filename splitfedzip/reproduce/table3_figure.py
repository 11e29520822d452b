"""Table 3 as a figure: test MJI against DT on a log scale, one curve per method."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from . import files
from .table3 import DT_WAYS

#: Method -> colour and marker (the baselines in blues, SplitFedZip's in reds, NC green).
STYLES = {
    "nc": {"color": "tab:green", "marker": "*", "markersize": 10},
    "ayad-m1": {"color": "tab:blue", "marker": "s", "linestyle": "--"},
    "ayad-m2": {"color": "tab:cyan", "marker": "D", "linestyle": "--"},
    "two-stage": {"color": "tab:red", "marker": "o", "linestyle": "-"},
    "two-phase": {"color": "tab:orange", "marker": "^", "linestyle": "-"},
}


def mji_dt(table: Sequence[dict[str, Any]], dataset: str, path: Path) -> None:
    """One panel per way of counting DT; each method's settings joined in the table's order."""
    mine = [r for r in table if r["dataset"] == dataset]
    fig = Figure(figsize=(15.5, 4.3), layout="constrained")
    axes = fig.subplots(1, len(DT_WAYS), sharey=True)
    for ax, (key, name) in zip(axes, DT_WAYS.items(), strict=True):
        for method, style in STYLES.items():
            pts = [r for r in mine if r["method"] == method and r[f"{key}_mean"] > 0
                   and math.isfinite(r["mji_mean"])]  # fmt: skip
            if not pts:
                continue
            xs, ys = [r[f"{key}_mean"] for r in pts], [r["mji_mean"] for r in pts]
            ax.plot(xs, ys, label=method, **style)
            # Settings that gave the same point (a threshold never reached) share one label.
            labels: dict[tuple[float, float], list[str]] = {}
            for r, x, y in zip(pts, xs, ys, strict=True):
                if r["setting"]:
                    labels.setdefault((x, y), []).append(r["setting"].split("=")[1])
            for (x, y), names in labels.items():
                ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(3, 3),
                            fontsize=6)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(f"DT, bytes ({name})")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("test MJI")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=8, loc="outside right center")
    fig.suptitle(f"{dataset}: MJI vs data transferred (paper Table 3); points labelled by "
                 "gthres (Ayad et al.) or λ (SplitFedZip)")  # fmt: skip
    files.save_figure(fig, path)
