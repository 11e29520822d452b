"""A whole reproduction: the queue of runs, then the tables, figures and report from them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..data import num_classes_for
from . import aggregate, baselines, files, report, table3
from .plan import Plan
from .runner import Outcome, run_queue

#: Columns of runs.csv and curves.csv, in order.
RUN_COLUMNS = ("dataset", "variant", "lambda", "knob", "knob_value", "seed", *aggregate.RUN_KEYS,
               "log10_cr_s1", "log10_cr_s2")  # fmt: skip
CURVE_COLUMNS = ("dataset", "variant", "lambda", "knob", "knob_value", "n",
                 *(f"{k}_{s}" for k in aggregate.CURVE_KEYS for s in ("mean", "std")))  # fmt: skip
BD_COLUMNS = ("dataset", "scheme", "variant", "anchor", "rate", "method", "bd_rate_percent",
              "bd_mji", "mji_lo", "mji_hi", "ln_rate_lo", "ln_rate_hi", "error")  # fmt: skip
ORDER_COLUMNS = ("dataset", "variant", "points", "spearman", "span_decades", "rate_low",
                 "rate_high", "lambda_low", "mji_low", "nc_mji", "mji_below_nc")  # fmt: skip
REACH_COLUMNS = ("dataset", "variant", "nc_mji", "target_mji", "setting", "rate", "test_mji",
                 "best_setting", "best_mji", "best_rate")  # fmt: skip


@dataclass
class Artifact:
    """A figure of the report: its file (None when skipped), what it shows, how to read it."""

    title: str
    path: Path | None
    how_to_read: str
    note: str | None = None


@dataclass
class Reproduction:
    """What a reproduction did and wrote."""

    plan: Plan
    out: Path
    jobs: int
    outcomes: list[Outcome]
    seconds: float = 0.0
    artifacts: list[Artifact] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        """Runs that raised (their folders are not written)."""
        return [o for o in self.outcomes if o.status == "failed"]


def reproduce(
    plan: Plan, out: Path, jobs: int = 1, train: bool = True, log: Callable[[str], None] = print
) -> Reproduction:
    """Run (or reuse) every run of ``plan`` under ``out``, then write the tables and figures."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    extra = baselines.stages(plan, out)  # Table 3: empty without the preset's baselines key
    outcomes = run_queue([*plan.runs, *extra.first], out, jobs=jobs, train=train, log=log)
    if extra.then:  # these load checkpoints of runs the first queue wrote
        outcomes += run_queue(extra.then, out, jobs=jobs, train=train, log=log)
    result = Reproduction(plan, out, jobs, outcomes)
    rows = aggregate.run_rows(plan.runs, out)
    curves = aggregate.curve_rows(rows)
    tests = (aggregate.TEST, *plan.preset.classic)
    bd = aggregate.bd_rows(curves, plan.preset.schemes, tests)
    reach = aggregate.reach_rows(curves)
    order = aggregate.order_rows(curves)
    files.write_csv(out / "runs.csv", rows, RUN_COLUMNS)
    files.write_csv(out / "curves.csv", curves, CURVE_COLUMNS)
    files.write_csv(out / "bd.csv", bd, BD_COLUMNS)
    files.write_csv(out / "reach.csv", reach, REACH_COLUMNS)
    files.write_csv(out / "order.csv", order, ORDER_COLUMNS)
    result.artifacts = draw(plan, out, curves)
    table = table3.table_rows(table3.run_rows(extra.table_runs(plan.runs), out))
    if plan.preset.baselines is not None:
        files.write_csv(out / "table3.csv", table, table3.COLUMNS)
        result.artifacts += draw_table3(out, table, extra.datasets)
    result.seconds = time.perf_counter() - start
    text = report.render(result, rows, curves, bd, reach, order, table, extra.datasets)
    files.write_text(out / "report.md", text)
    drawn = sum(a.path is not None for a in result.artifacts)
    tables = "runs.csv, curves.csv, bd.csv, reach.csv, order.csv"
    log(f"wrote {out}/report.md, {tables} and {drawn} figures")
    return result


def draw(plan: Plan, out: Path, curves: list[dict]) -> list[Artifact]:
    """Every figure; one that cannot be drawn is listed with the reason."""
    from . import figures  # matplotlib: not for the worker processes, which import this package

    datasets, runs, opts = list(plan.bases), plan.runs, plan.preset.figures
    arts = [
        _per_dataset(f"Rate-accuracy, {d} (paper Figs. 2/3)", "ra", curves, d,
                     out / f"fig-rate-accuracy-{d}.png", figures.rate_accuracy, "no finished runs")
        for d in datasets
    ]  # fmt: skip
    title = "Compression ratio vs λ (paper Fig. 4)"
    if any(c["lambda"] is not None for c in curves):
        path = out / "fig-cr-lambda.png"
        figures.compression_ratio(curves, datasets, plan.preset.schemes, path)
        arts.append(Artifact(title, path, report.READ["cr"]))
    else:
        arts.append(Artifact(title, None, report.READ["cr"], "no finished learned-codec runs"))
    for d in datasets:
        arts.append(_training_bpp(plan, out, d))
    for d in datasets:
        title = f"Predictions, {d} (paper Table 2)"
        data = aggregate.examples(runs, out, d, opts.example_variant, opts.example_lambdas)
        if data is None:
            note = f"no predictions.npz from the NC and {opts.example_variant} runs"
            arts.append(Artifact(title, None, report.READ["ex"], note))
            continue
        path = out / f"table2-predictions-{d}.png"
        caption = f"{d}, seed {data['seed']}: {opts.example_variant} predictions over λ"
        figures.examples(data, _classes(plan, d), opts.examples, caption, path)
        arts.append(Artifact(title, path, report.READ["ex"]))
    return arts


def draw_table3(out: Path, table: list[dict], datasets: tuple[str, ...]) -> list[Artifact]:
    """Table 3's MJI-vs-DT figure of each dataset, or the reason it is missing."""
    from . import table3_figure

    return [
        _per_dataset(f"MJI vs data transferred, {d} (paper Table 3)", "dt", table, d,
                     out / f"fig-table3-mji-dt-{d}.png", table3_figure.mji_dt,
                     "no finished Table 3 runs")
        for d in datasets
    ]  # fmt: skip


def _per_dataset(
    title: str, kind: str, rows: list[dict], dataset: str, path: Path, draw_fn, missing: str
) -> Artifact:
    """One dataset's figure drawn from ``rows`` by ``draw_fn(rows, dataset, path)``, or the
    reason it is missing (no row of that dataset)."""
    if not any(r["dataset"] == dataset for r in rows):
        return Artifact(title, None, report.READ[kind], missing)
    draw_fn(rows, dataset, path)
    return Artifact(title, path, report.READ[kind])


def _training_bpp(plan: Plan, out: Path, dataset: str) -> Artifact:
    """Figs. 5/6 for one dataset, or the reason they are missing."""
    from . import figures

    opts = plan.preset.figures
    title = f"Training BPP per crossing, {dataset} (paper Figs. 5/6)"
    pick = aggregate.pick_run(plan.runs, dataset, opts.history_variants, opts.history_lambda, out)
    if pick is None:
        note = f"no finished run of {' or '.join(opts.history_variants)}"
        return Artifact(title, None, report.READ["bpp"], note)
    variant, lam = pick
    data = aggregate.training_bpp(plan.runs, out, dataset, variant, lam)
    if data is None:
        note = f"the {variant} runs at λ={lam:g} wrote no history.csv"
        return Artifact(title, None, report.READ["bpp"], note)
    path = out / f"fig-training-bpp-{dataset}.png"
    seeds = figures.seeds_text(data["seeds"])
    caption = f"{dataset}: {variant} at λ={lam:g}, mean over clients and {seeds}"
    figures.training_bpp(data, caption, path)
    return Artifact(f"{title}: {variant}, λ={lam:g}", path, report.READ["bpp"])


def _classes(plan: Plan, dataset: str) -> int:
    """Classes of a dataset's masks (background included), for the mask colours."""
    cfg = plan.bases[dataset]
    return cfg.model.num_classes or num_classes_for(cfg.data.dataset)
