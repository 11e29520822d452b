"""report.md: every figure and table of a reproduction, how to read each, its time and config."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import table3
from .aggregate import NC_MARGIN, is_learned, setting

if TYPE_CHECKING:
    from .pipeline import Reproduction

#: One line per figure kind saying how to read it.
READ = {
    "ra": "Each point is one λ, or one setting of a classic codec's knob, written beside it "
    "(bits, or the fraction top-k keeps); mean over seeds, bars ± one std in both axes; further "
    "up and to the left is better; the green line is NC's test MJI (band: ± one std).",
    "cr": "log10 of the compression ratio of the test features at S1 (solid) and S2 (dashed) "
    "against λ; a larger λ weighs distortion more, so the ratio falls as λ grows.",
    "bpp": "Training BPP of each crossing (mean over clients and seeds) per local epoch (left, "
    "dotted lines between rounds) and per round (right); falling curves are codecs learning.",
    "dt": "Test MJI against data transferred (log scale), one curve per method, each point one "
    "gthres (Ayad et al.'s M1, M2) or λ (two-stage, two-phase); left: the paper's formula (one "
    "pass over the training samples), middle: the ledger's split traffic of the whole run, right: "
    "the ledger's total, federation included. Further up and to the left is better.",
    "ex": "Rows are test images, columns the image, its ground truth, NC's prediction and "
    "predictions at growing λ, each titled with that image's MJI.",
}
TABLE_1 = (
    "BD-BPP: mean rate difference (%) of each codec (cheng2020-attn, and the classic codecs "
    "over their knob's grid) against the ae anchor at equal MJI (negative: fewer bits); BD-MJI: "
    "mean MJI difference at equal rate; each over the overlap interval shown; a row without "
    "numbers says why."
)
TABLE_3 = (
    "Test MJI (mean ± std over seeds) and data transferred (DT) of NC, Ayad et al.'s M1 (a "
    "pretrained, frozen AE) and M2 (the AE frozen after a few rounds) over the gradient threshold "
    "gthres, and SplitFedZip's two-stage and two-phase training over λ (docs/baselines.md). DT "
    "three ways: the paper's formula for one pass over the training samples (Ayad et al.'s: "
    "feature bytes x samples + raw gradient bytes x gradients sent; * SplitFedZip's: BPP-T x "
    "input pixels x samples x 2), and the ledger's split traffic and total of the whole run. "
    "`table3.csv` holds the same, `fig-table3-mji-dt-<dataset>.png` draws it; each run's folder "
    "is `<dataset>/<method>/gthres-<g>/` or `lambda-<λ>/`, and the pretraining runs are the "
    "partner dataset's `f-ae` and `fg-ae` runs."
)
REACH = (
    f"The cheapest point (seed means; BPP-T of the test pass) at which each variant's test MJI "
    f"reaches NC's minus {NC_MARGIN:g}, and its best MJI. A point of the grid, not an "
    "interpolation: a finer grid may reach it at a lower rate."
)
ORDER = (
    "Per learned curve: Spearman's ρ of the seed-mean BPP-T against λ (1: the rate never falls "
    "as λ grows; ties, such as points at the stream's fixed cost, count as ties), the decades of "
    "BPP-T between its lowest and highest point, and the test MJI at the lowest λ against NC's."
)
CURVES = (
    "Mean ± std over seeds of each variant at each λ; CR is the compression ratio of the test "
    "features, bytes are what crossed the split points (and in total) during training."
)
FILES = (
    "`runs.csv` (one row per run), `curves.csv` (seed means and stds), `bd.csv` (Table 1), "
    "`reach.csv` (the rate that reaches NC), `order.csv` (how λ orders the rate), and each "
    "run's folder "
    "`<dataset>/<scheme>-<codec>/lambda-<λ>/seed-<s>/` (classic codecs: `<knob>-<value>/` in "
    "place of `lambda-<λ>/`, none for fp16 and bf16; NC: `nc/seed-<s>/`)."
)


def render(
    r: Reproduction,
    rows: Sequence[dict],
    curves: Sequence[dict],
    bd: Sequence[dict],
    reach: Sequence[dict] = (),
    order: Sequence[dict] = (),
    table3_rows: Sequence[dict] = (),
    table3_datasets: Sequence[str] = (),
) -> str:
    """The whole report as Markdown."""
    lines = [f"# SplitFedZip reproduction: preset `{r.plan.preset.name}`", ""]
    lines += _summary(r, rows) + _config(r)
    for dataset in r.plan.bases:
        lines += [f"## Curves: {dataset}", "", CURVES, ""]
        lines += _curves_table([c for c in curves if c["dataset"] == dataset]) + [""]
    lines += ["## How λ orders the rate", "", ORDER, ""] + _order(order) + [""]
    lines += [f"## The rate that reaches NC − {NC_MARGIN:g}", "", REACH, ""]
    lines += _reach(reach, r.plan.bases) + [""]
    lines += ["## Table 1: BD against ae", "", TABLE_1, ""]
    lines += _bd_table(bd) + [""]
    if r.plan.preset.baselines is not None:
        lines += ["## Table 3: against Ayad et al.", "", TABLE_3, ""]
        lines += table3.markdown(table3_rows, table3_datasets)
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
    classic = "; ".join(f"{c}: {', '.join(f'{x:g}' for x in v) or 'one run'}"
                        for c, v in p.classic.items())  # fmt: skip
    lines = [
        "## Configuration", "",
        f"- Datasets: {', '.join(r.plan.bases)}; seeds (train.seed): 0..{r.plan.seeds - 1}.",
        f"- Schemes: {', '.join(p.schemes)}; codecs: {', '.join(p.codecs)}; "
        f"NC once per dataset and seed.",
        f"- λ grids: {lams}.",
        *([f"- Classic codecs and their knobs' grids (bits; top-k fraction), at λ = 1: "
           f"{classic}."] if p.classic else []),
        "",
    ]  # fmt: skip
    for dataset in r.plan.bases:
        lines += [f"Base run configuration of {dataset} (the grid sets scheme, codec, lambda "
                  "and train.seed):", "", "```yaml", r.plan.base_yaml(dataset).rstrip(), "```",
                  ""]  # fmt: skip
    return lines


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Markdown table lines: the header, its rule, then one line per row."""
    return [f"| {' | '.join(r)} |" for r in (head, ["---"] * len(head), *rows)]


def _curves_table(curves: Sequence[dict]) -> list[str]:
    """Markdown table of one dataset's curve points."""
    head = ["variant", "λ or knob", "n", "MJI", "BPP-S1", "BPP-S2", "BPP-T", "log10 CR-S1",
            "split MB", "total MB"]  # fmt: skip
    rows = []
    for c in curves:
        cells = [c["variant"], setting(c) or "-", str(c["n"])]
        cells += [_pm(c, "test_mji", ".3f"), _pm(c, "bpp_s1", ".3g"), _pm(c, "bpp_s2", ".3g"),
                  _pm(c, "bpp_t", ".3g"), _pm(c, "log10_cr_s1", ".2f"),
                  _pm(c, "bytes_split", ".3g", 1e-6),
                  _pm(c, "bytes_total", ".3g", 1e-6)]  # fmt: skip
        rows.append(cells)
    return _table(head, rows)


def _bd_table(bd: Sequence[dict]) -> list[str]:
    """Markdown table of the BD rows."""
    head = ["dataset", "scheme", "codec", "rate", "fit", "BD-BPP %", "BD-MJI", "MJI overlap",
            "BPP overlap", "note"]  # fmt: skip
    rows = []
    for b in bd:
        codec = b["variant"].partition("-")[2]
        cells = [b["dataset"], b["scheme"].upper(), codec, b["rate"], b.get("method") or "-",
                 _num(b.get("bd_rate_percent"), ".2f"), _num(b.get("bd_mji"), ".4f"),
                 _interval(b, "mji", ".3f"), _interval(b, "ln_rate", ".3g", math.exp),
                 (b.get("error") or "").replace("|", "/")]  # fmt: skip
        rows.append(cells)
    return _table(head, rows)


def _reach(reach: Sequence[dict], datasets: Sequence[str]) -> list[str]:
    """Per dataset: which variant reaches NC − margin at the lowest rate, said plainly, and the
    table of every variant."""
    out: list[str] = []
    for dataset in datasets:
        mine = [x for x in reach if x["dataset"] == dataset]
        if not mine:
            out += [f"{dataset}: no finished NC and compressing runs to compare.", ""]
            continue
        out += [f"**{dataset}.** " + _verdict(mine), ""]
        head = ["variant", "reaches it at (BPP-T)", "with", "MJI there", "best MJI (BPP-T, with)"]
        rows = []
        for x in sorted(mine, key=lambda x: (x["rate"] is None, x["rate"] or 0.0)):
            rate = "not reached" if x["rate"] is None else f"{x['rate']:.3g}"
            best = f"{x['best_mji']:.3f} ({x['best_rate']:.3g}, {x['best_setting'] or '-'})"
            rows.append([x["variant"], rate, x["setting"] or "-", _num(x["test_mji"], ".3f"), best])
        out += [*_table(head, rows), ""]
    return out


def _order(order: Sequence[dict]) -> list[str]:
    """Markdown table of :func:`aggregate.order_rows`."""
    head = ["dataset", "variant", "λ points", "Spearman ρ", "span (decades)", "BPP-T range",
            "MJI at lowest λ", "below NC by"]  # fmt: skip
    rows = [[o["dataset"], o["variant"], str(o["points"]), _num(o["spearman"], ".2f"),
             f"{o['span_decades']:.2f}", f"{o['rate_low']:.3g} - {o['rate_high']:.3g}",
             f"{o['mji_low']:.3f} (λ {o['lambda_low']:g})", _num(o["mji_below_nc"], ".3f")]
            for o in order]  # fmt: skip
    return _table(head, rows) if rows else ["No learned curve finished."]


def _verdict(rows: Sequence[dict]) -> str:
    """Plain sentences: the cheapest learned and classic codec to reach NC − margin (or the
    closest to it), and how many times fewer bits the winner needs."""
    text = [f"NC's test MJI is {rows[0]['nc_mji']:.3f}, the mark {rows[0]['target_mji']:.3f}."]
    cheapest = {}
    for learned, name in ((True, "learned"), (False, "classic")):
        family = [x for x in rows if is_learned(x["variant"]) == learned]
        reached = [x for x in family if x["rate"] is not None]
        if reached:
            x = cheapest[name] = min(reached, key=lambda x: x["rate"])
            text.append(f"Cheapest {name} codec to reach it: {_named(x, 'setting')} at "
                        f"{x['rate']:.3g} BPP-T.")  # fmt: skip
        elif family:
            x = max(family, key=lambda x: x["best_mji"])
            text.append(f"No {name} codec reaches it; the closest is {_named(x, 'best_setting')}, "
                        f"MJI {x['best_mji']:.3f} at {x['best_rate']:.3g} BPP-T.")  # fmt: skip
    if len(cheapest) == 2:
        win, lose = sorted(cheapest.values(), key=lambda x: x["rate"])
        text.append(f"{win['variant']} gets there with {lose['rate'] / win['rate']:.3g}x fewer "
                    f"bits than {lose['variant']}.")  # fmt: skip
    return " ".join(text)


def _named(row: dict, key: str) -> str:
    """``fg-int (bits=4)``; a codec with a single setting goes by its name alone."""
    return row["variant"] + (f" ({row[key]})" if row[key] else "")


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
