"""report.md: every figure and table of a reproduction, how to read each, its time and config."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline import Reproduction

#: One line per figure kind saying how to read it.
READ = {
    "ra": "Each point is one λ (mean over seeds, bars ± one std in both axes); further up and to "
    "the left is better; the green line is NC's test MJI (band: ± one std).",
    "cr": "log10 of the compression ratio of the test features at S1 (solid) and S2 (dashed) "
    "against λ; a larger λ weighs distortion more, so the ratio falls as λ grows.",
    "bpp": "Training BPP of each crossing (mean over clients and seeds) per local epoch (left, "
    "dotted lines between rounds) and per round (right); falling curves are codecs learning.",
    "ex": "Rows are test images, columns the image, its ground truth, NC's prediction and "
    "predictions at growing λ, each titled with that image's MJI.",
}
TABLE_1 = (
    "BD-BPP: mean rate difference (%) of cheng2020-attn against the ae anchor at equal MJI "
    "(negative: fewer bits); BD-MJI: mean MJI difference at equal rate; each over the overlap "
    "interval shown; a row without numbers says why."
)
CURVES = (
    "Mean ± std over seeds of each variant at each λ; CR is the compression ratio of the test "
    "features, bytes are what crossed the split points (and in total) during training."
)
FILES = (
    "`runs.csv` (one row per run), `curves.csv` (seed means and stds), `bd.csv` (Table 1), and "
    "each run's folder `<dataset>/<scheme>-<codec>/lambda-<λ>/seed-<s>/` (`nc/seed-<s>/`)."
)


def render(
    r: Reproduction, rows: Sequence[dict], curves: Sequence[dict], bd: Sequence[dict]
) -> str:
    """The whole report as Markdown."""
    lines = [f"# SplitFedZip reproduction: preset `{r.plan.preset.name}`", ""]
    lines += _summary(r, rows) + _config(r)
    for dataset in r.plan.bases:
        lines += [f"## Curves: {dataset}", "", CURVES, ""]
        lines += _curves_table([c for c in curves if c["dataset"] == dataset]) + [""]
    lines += ["## Table 1: BD of cheng2020-attn against ae", "", TABLE_1, ""]
    lines += _bd_table(bd) + [""]
    lines += ["## Figures", ""]
    for a in r.artifacts:
        lines += [f"### {a.title}", ""]
        if a.path is None:
            lines += [f"Not drawn: {a.note}.", ""]
        else:
            lines += [f"![{a.title}]({a.path.name})", "", a.how_to_read, ""]
    lines += ["## Files", "", FILES, ""]
    return "\n".join(lines)


def _summary(r: Reproduction, rows: Sequence[dict]) -> list[str]:
    """When, how long, how many runs trained, reused, failed or missing."""
    count = {s: sum(o.status == s for o in r.outcomes) for s in ("trained", "reused", "failed")}
    missing = sum(o.status == "missing" for o in r.outcomes)
    train_total = sum(x["wall_seconds"] for x in rows if math.isfinite(x["wall_seconds"]))
    lines = [
        f"Written {time.strftime('%Y-%m-%d %H:%M')} into `{r.out}`.",
        "",
        f"- This invocation: {_duration(r.seconds)} with {r.jobs} job(s); {count['trained']} runs "
        f"trained, {count['reused']} reused, {count['failed']} failed"
        + (f", {missing} not run" if missing else "")
        + f" (of {len(r.outcomes)}).",
        f"- Training time of all {len(rows)} finished runs (the sum of their own times): "
        f"{_duration(train_total)}.",
    ]
    for o in r.failed:
        lines.append(f"- Failed: `{o.run.name}`: {o.error}")
    return [*lines, ""]


def _config(r: Reproduction) -> list[str]:
    """The grid and each dataset's base run configuration."""
    p = r.plan.preset
    lams = "; ".join(f"{c}: {', '.join(f'{x:g}' for x in p.lambdas[c])}" for c in p.codecs)
    lines = [
        "## Configuration", "",
        f"- Datasets: {', '.join(r.plan.bases)}; seeds (train.seed): 0..{r.plan.seeds - 1}.",
        f"- Schemes: {', '.join(p.schemes)}; codecs: {', '.join(p.codecs)}; "
        f"NC once per dataset and seed.",
        f"- λ grids: {lams}.",
        "",
    ]  # fmt: skip
    for dataset in r.plan.bases:
        lines += [f"Base run configuration of {dataset} (the grid sets scheme, codec, lambda "
                  "and train.seed):", "", "```yaml", r.plan.base_yaml(dataset).rstrip(), "```",
                  ""]  # fmt: skip
    return lines


def _curves_table(curves: Sequence[dict]) -> list[str]:
    """Markdown table of one dataset's curve points."""
    head = ["variant", "λ", "n", "MJI", "BPP-S1", "BPP-S2", "BPP-T", "log10 CR-S1",
            "split MB", "total MB"]  # fmt: skip
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in curves:
        cells = [c["variant"], "-" if c["lambda"] is None else f"{c['lambda']:g}", str(c["n"])]
        cells += [_pm(c, "test_mji", ".3f"), _pm(c, "bpp_s1", ".3g"), _pm(c, "bpp_s2", ".3g"),
                  _pm(c, "bpp_t", ".3g"), _pm(c, "log10_cr_s1", ".2f"),
                  _pm(c, "bytes_split", ".3g", 1e-6),
                  _pm(c, "bytes_total", ".3g", 1e-6)]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return out


def _bd_table(bd: Sequence[dict]) -> list[str]:
    """Markdown table of the BD rows."""
    head = ["dataset", "scheme", "rate", "fit", "BD-BPP %", "BD-MJI", "MJI overlap",
            "BPP overlap", "note"]  # fmt: skip
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in bd:
        cells = [b["dataset"], b["scheme"].upper(), b["rate"], b.get("method") or "-",
                 _num(b.get("bd_rate_percent"), ".2f"), _num(b.get("bd_mji"), ".4f"),
                 _interval(b, "mji", ".3f"), _interval(b, "ln_rate", ".3g", math.exp),
                 (b.get("error") or "").replace("|", "/")]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return out


def _pm(row: dict[str, Any], key: str, fmt: str, scale: float = 1.0) -> str:
    """``mean ± std`` (just the mean with one seed)."""
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    if not math.isfinite(mean):
        return "-"
    text = format(mean * scale, fmt)
    spread = ".2g" if fmt.endswith("g") else fmt  # two digits say enough of a spread
    return text + (f" ± {format(std * scale, spread)}" if math.isfinite(std) else "")


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, fmt)


def _interval(row: dict[str, Any], name: str, fmt: str, fn=float) -> str:
    """``[lo, hi]`` of an overlap (through ``fn``: BPP from ln-rate), or ``none``."""
    lo, hi = row.get(f"{name}_lo"), row.get(f"{name}_hi")
    return "none" if lo is None or hi is None else f"[{fn(lo):{fmt}}, {fn(hi):{fmt}}]"


def _duration(seconds: float) -> str:
    """``1 h 02 min``, ``12 min 03 s`` or ``41 s``."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"
