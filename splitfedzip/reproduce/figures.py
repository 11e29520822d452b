"""The paper's figures from a reproduction's tables, drawn with matplotlib's Agg canvas."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from . import files
from .aggregate import BPP_COLUMNS, finite_mean

# Figure objects are used without pyplot: no global figure registry, no backend switching.
RATE_LABELS = {"bpp_s1": "BPP-S1", "bpp_s2": "BPP-S2", "bpp_t": "BPP-T"}
CROSSING_LABELS = dict(zip(BPP_COLUMNS, ("S1 features", "S2 features", "S2 gradients",
                                         "S1 gradients"), strict=True))  # fmt: skip
#: Scheme -> line style, codec -> marker and colour family (the same in every figure).
LINES = {"f": "--", "g": ":", "fg": "-"}
MARKERS = {"ae": "o", "cheng2020-attn": "s", "fp16": "P", "bf16": "X", "int": "D", "topk": "v",
           "randtopk": "^"}  # fmt: skip
COLORS = {
    "f-ae": "tab:blue", "f-cheng2020-attn": "tab:orange", "g-ae": "tab:purple",
    "g-cheng2020-attn": "tab:brown", "fg-ae": "tab:red", "fg-cheng2020-attn": "tab:cyan",
    # Classic codecs: greys and olives, so that the learned codecs stand out.
    "f-fp16": "dimgray", "fg-fp16": "black", "f-bf16": "silver", "fg-bf16": "gray",
    "f-int": "yellowgreen", "fg-int": "olive", "f-topk": "gold", "fg-topk": "darkgoldenrod",
    "f-randtopk": "pink", "fg-randtopk": "tab:pink", "g-fp16": "lightgray", "g-bf16": "gainsboro",
    "g-int": "darkkhaki", "g-topk": "khaki", "g-randtopk": "thistle",
}  # fmt: skip
#: How a classic codec's knob value labels its points.
KNOB_LABELS = {"bits": "{:g}b", "topk_fraction": "{:.3g}"}
NC_COLOR = "tab:green"
#: Class colours of masks: background black, then distinct hues.
MASK_COLORS = ["black", "tab:orange", "tab:cyan", "tab:pink", "tab:olive", "tab:blue", "white"]


def _style(variant: str) -> dict[str, Any]:
    """Colour, line style and marker of a scheme-codec variant."""
    scheme, _, codec = variant.partition("-")
    return {"color": COLORS.get(variant), "linestyle": LINES.get(scheme, "-"),
            "marker": MARKERS.get(codec, "^")}  # fmt: skip


def _err(values: Sequence[float]) -> np.ndarray:
    """Error bar half-lengths: a missing std (a single seed) draws none."""
    v = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(v), v, 0.0)


def _variants(curves: Sequence[dict[str, Any]]) -> list[str]:
    """Compressing variants in the order they appear."""
    return list(dict.fromkeys(c["variant"] for c in curves if c["variant"] != "nc"))


def _order(curve: dict[str, Any]) -> float:
    """A curve point's place along its variant's grid: λ, or the classic codec's knob."""
    if curve["lambda"] is not None:
        return curve["lambda"]
    value = curve.get("knob_value")
    return 0.0 if value is None else value


def rate_accuracy(curves: Sequence[dict[str, Any]], dataset: str, path: Path) -> None:
    """Figs. 2/3: MJI vs BPP-S1, BPP-S2 and BPP-T, one curve per variant, NC as a line."""
    mine = [c for c in curves if c["dataset"] == dataset]
    fig = Figure(figsize=(15.5, 4.3), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    for ax, (rate, label) in zip(axes, RATE_LABELS.items(), strict=True):
        for variant in _variants(mine):
            pts = sorted((c for c in mine if c["variant"] == variant), key=_order)
            pts = [c for c in pts if c[f"{rate}_mean"] > 0 and np.isfinite(c["test_mji_mean"])]
            if pts:
                ax.errorbar(
                    [c[f"{rate}_mean"] for c in pts], [c["test_mji_mean"] for c in pts],
                    xerr=_err([c[f"{rate}_std"] for c in pts]),
                    yerr=_err([c["test_mji_std"] for c in pts]),
                    label=variant, capsize=2, markersize=4, **_style(variant),
                )  # fmt: skip
                _label_knobs(ax, pts, rate)
        _nc_line(ax, [c for c in mine if c["variant"] == "nc"])
        _log_x(ax)
        ax.set_xlabel(f"{label} (bits per input pixel)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("test MJI")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        # Beside the panels: with the classic codecs there are too many curves to cover one.
        fig.legend(handles, labels, fontsize=8, loc="outside right center")
    seeds = max((c["n"] for c in mine), default=0)
    fig.suptitle(
        f"{dataset}: rate-accuracy, one point per λ or per classic codec setting "
        f"(mean ± std over {seeds_text(seeds)})"
    )
    files.save_figure(fig, path)


def _label_knobs(ax: Any, pts: Sequence[dict[str, Any]], rate: str) -> None:
    """Write a classic codec's knob value (``4b``, ``0.01``) beside each of its points."""
    for c in pts:
        fmt = KNOB_LABELS.get(c.get("knob") or "")
        if fmt is not None and c["lambda"] is None:
            ax.annotate(fmt.format(c["knob_value"]), (c[f"{rate}_mean"], c["test_mji_mean"]),
                        textcoords="offset points", xytext=(3, 3), fontsize=6)  # fmt: skip


def seeds_text(n: int) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{n} seed" + ("s" if n != 1 else "")


def _log_x(ax: Any) -> None:
    """A log x axis (call after plotting); labelled at decades only when it spans one or more,
    since minor labels then crowd each other."""
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    if hi >= 10 * lo:
        ax.xaxis.set_minor_formatter(NullFormatter())


def _nc_line(ax: Any, nc: Sequence[dict[str, Any]]) -> None:
    """The NC accuracy: its mean as a line, ± its std over seeds as a band."""
    if not nc or not np.isfinite(nc[0]["test_mji_mean"]):
        return
    mean, std = nc[0]["test_mji_mean"], nc[0]["test_mji_std"]
    ax.axhline(mean, color=NC_COLOR, label=f"NC ({mean:.3f})")
    if np.isfinite(std):
        ax.axhspan(mean - std, mean + std, color=NC_COLOR, alpha=0.15, linewidth=0)


def compression_ratio(
    curves: Sequence[dict[str, Any]], datasets: Sequence[str], schemes: Sequence[str], path: Path
) -> None:
    """Fig. 4: log10 CR at S1 and S2 vs λ; a panel per dataset (rows) and scheme (columns)."""
    fig = Figure(figsize=(5.5 * len(schemes), 3.8 * len(datasets)), layout="constrained")
    axes = fig.subplots(len(datasets), len(schemes), squeeze=False, sharex=True)
    for row, dataset in zip(axes, datasets, strict=True):
        for ax, scheme in zip(row, schemes, strict=True):
            # Classic codecs have no λ: only the learned ones are drawn against it.
            mine = [c for c in curves if c["dataset"] == dataset and c["lambda"] is not None]
            for variant in (v for v in _variants(mine) if v.partition("-")[0] == scheme):
                pts = sorted((c for c in mine if c["variant"] == variant),
                             key=lambda c: c["lambda"])  # fmt: skip
                style = _style(variant)
                for split, ls in (("s1", "-"), ("s2", "--")):
                    ax.errorbar(
                        [c["lambda"] for c in pts], [c[f"log10_cr_{split}_mean"] for c in pts],
                        yerr=_err([c[f"log10_cr_{split}_std"] for c in pts]), capsize=2,
                        markersize=4, color=style["color"], marker=style["marker"], linestyle=ls,
                        label=f"{variant.partition('-')[2]} {split.upper()}",
                    )  # fmt: skip
            _log_x(ax)
            ax.set_title(f"{dataset}, scheme {scheme.upper()}", fontsize=10)
            ax.set_xlabel("λ")
            ax.set_ylabel("log10 CR")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.suptitle("Compression ratio of the test features vs λ (mean ± std over seeds)")
    files.save_figure(fig, path)


def training_bpp(data: dict[str, Any], title: str, path: Path) -> None:
    """Figs. 5/6: each crossing's BPP over local epochs (left) and per global round (right)."""
    epochs, curves, local = data["epochs"], data["curves"], data["local_epochs"]
    fig = Figure(figsize=(12, 4), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    rounds = (epochs - 1) // local + 1  # global round (from 1) of each global epoch
    for (column, label), marker in zip(CROSSING_LABELS.items(), "o^sv", strict=True):
        values = curves[column]
        if not np.isfinite(values).any():
            continue
        left.plot(epochs, values, marker=marker, markersize=4, label=label)
        per_round = [finite_mean(values[rounds == r]) for r in np.unique(rounds)]
        right.plot(np.unique(rounds), per_round, marker=marker, markersize=5, label=label)
    for r in np.unique(rounds)[:-1]:
        left.axvline(r * local + 0.5, color="grey", linewidth=0.6, linestyle=":")
    left.set_xlabel(f"global epoch index (round × {local} + local epoch)")
    right.set_xlabel("global round (mean over its local epochs)")
    left.set_ylabel("training BPP (bits per input pixel)")
    finite = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in curves.values()])
    for ax in (left, right):
        if finite.size and finite.max() / finite.min() > 100:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle(title)
    files.save_figure(fig, path)


def examples(data: dict[str, Any], num_classes: int, rows: int, title: str, path: Path) -> None:
    """Table 2: image, ground truth, NC and per-λ predictions, each titled with its MJI."""
    k = min(rows, len(data["images"]))
    cols = 2 + len(data["columns"])
    fig = Figure(figsize=(1.9 * cols, 2.1 * k + 0.4), layout="constrained")
    axes = fig.subplots(k, cols, squeeze=False)
    few = num_classes <= len(MASK_COLORS)
    cmap = ListedColormap(MASK_COLORS[:num_classes]) if few else "tab20"
    mask_kw = {"cmap": cmap, "vmin": 0, "vmax": num_classes - 1, "interpolation": "nearest"}
    for i in range(k):
        axes[i, 0].imshow(data["images"][i])
        axes[i, 0].set_title("image", fontsize=9)
        axes[i, 1].imshow(data["masks"][i], **mask_kw)
        axes[i, 1].set_title("ground truth", fontsize=9)
        for j, (label, pred, mji) in enumerate(data["columns"], start=2):
            axes[i, j].imshow(pred[i], **mask_kw)
            score = "n/a" if math.isnan(float(mji[i])) else f"{float(mji[i]):.3f}"
            axes[i, j].set_title(f"{label}\nMJI {score}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    files.save_figure(fig, path)
