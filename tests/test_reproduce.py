"""``splitfedzip reproduce``: the grid, reuse and resumption, tables, BD, figures and report."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest

from splitfedzip.cli.main import main
from splitfedzip.config import ConfigError, dump_config
from splitfedzip.metrics import bd_metric, bd_rate
from splitfedzip.reproduce import FigureOptions, Preset, load_preset, make_plan, reproduce, runner
from splitfedzip.reproduce.aggregate import BPP_COLUMNS

TINY_RUN = {
    "data": {"image_size": 32, "num_samples": 8, "test_samples": 4,
             "partition": {"kind": "iid", "clients": 2}},
    "model": {"base_width": 2},
    "codec_options": {"latent_channels": 4},
    "train": {"rounds": 1, "local_epochs": 1, "batch_size": 2, "max_batches": 2, "device": "cpu"},
}  # fmt: skip
# The tiny grid has no fg or cheng2020-attn runs: draw the per-run figures from f-ae.
TINY_FIGURES = FigureOptions(history_variants=("f-ae",), example_variant="f-ae")


# Tiny runs are fastest on one thread (and do not fight other processes for cores).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_preset() -> Preset:
    """One dataset, f with ae at two λ, one seed: three runs of about a second each."""
    return Preset("tiny", TINY_RUN, ("synthetic-lesion",), ("f",), ("ae",),
                  {"ae": (0.01, 100.0)}, seeds=1, figures=TINY_FIGURES)  # fmt: skip


def _count_trainings(monkeypatch) -> list[str]:
    """Record each run that is trained (the real training still runs)."""
    trained, real = [], runner.run_embedded

    def counting(cfg, *args, **kwargs):
        trained.append(f"{cfg.scheme}-{cfg.lmbda:g}")
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(runner, "run_embedded", counting)
    return trained


def _csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_reproduction_writes_tables_figures_and_report(tmp_path, monkeypatch):
    trained = _count_trainings(monkeypatch)
    lines: list[str] = []
    result = reproduce(make_plan(tiny_preset()), tmp_path, log=lines.append)
    assert len(trained) == 3 and not result.failed
    assert lines[0] == "3 runs: 0 finished already, 3 to train"
    assert lines[3].startswith("[3/3] synthetic-lesion/f-ae/lambda-100/seed-0: ")
    assert "nothing left" in lines[3] and "about" in lines[2]
    for folder in ("nc/seed-0", "f-ae/lambda-0.01/seed-0", "f-ae/lambda-100/seed-0"):
        assert (tmp_path / "synthetic-lesion" / folder / "summary.json").is_file()
    curves = _csv(tmp_path / "curves.csv")
    assert [(c["variant"], c["lambda"], c["n"]) for c in curves] == [
        ("nc", "", "1"), ("f-ae", "0.01", "1"), ("f-ae", "100.0", "1"),
    ]  # fmt: skip
    assert all(float(c["test_mji_mean"]) >= 0 and c["test_mji_std"] == "" for c in curves)
    assert len(_csv(tmp_path / "runs.csv")) == 3
    bd = _csv(tmp_path / "bd.csv")
    assert [b["rate"] for b in bd] == ["bpp_s1", "bpp_s2", "bpp_t"]
    assert all("no finished f-cheng2020-attn runs" in b["error"] for b in bd)
    (order,) = _csv(tmp_path / "order.csv")
    rates = [float(c["bpp_t_mean"]) for c in curves[1:]]
    assert (order["variant"], order["points"], order["spearman"]) == ("f-ae", "2", "")
    assert float(order["span_decades"]) == pytest.approx(math.log10(max(rates) / min(rates)))
    report = (tmp_path / "report.md").read_text()
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pngs] == [
        "fig-cr-lambda.png", "fig-rate-accuracy-synthetic-lesion.png",
        "fig-training-bpp-synthetic-lesion.png", "table2-predictions-synthetic-lesion.png",
    ]  # fmt: skip
    for png in pngs:
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 5000
        assert f"]({png.name})" in report
    assert "Table 1" in report and "3 runs trained, 0 reused" in report


def test_rerun_reuses_finished_runs_and_redoes_interrupted_ones(tmp_path, monkeypatch):
    plan = make_plan(tiny_preset())
    trained = _count_trainings(monkeypatch)
    runner.run_queue(plan.runs, tmp_path, log=lambda line: None)
    assert len(trained) == 3
    lines: list[str] = []
    outcomes = runner.run_queue(plan.runs, tmp_path, log=lines.append)
    assert len(trained) == 3 and {o.status for o in outcomes} == {"reused"}
    assert lines[0] == "3 runs: 3 finished already, 0 to train"
    assert lines[1] == "[1/3] synthetic-lesion/nc/seed-0: reused"
    # A run killed while writing: no summary.json (and a staging folder left behind).
    folder = tmp_path / "synthetic-lesion" / "f-ae" / "lambda-100" / "seed-0"
    (folder / "summary.json").unlink()
    (folder.parent / ".seed-0.partial").mkdir()
    runner.run_queue(plan.runs, tmp_path, log=lambda line: None)
    assert trained == ["nc-1", "f-0.01", "f-100", "f-100"]
    assert (folder / "summary.json").is_file()
    assert not (folder.parent / ".seed-0.partial").exists()
    # A finished run made with another config is not reused.
    other = make_plan(tiny_preset(), overrides=["train.lr=0.01"])
    assert not runner.is_finished(other.runs[2], folder)
    assert runner.is_finished(plan.runs[2], folder)


def test_jobs_give_the_same_results_as_one_process(tmp_path):
    plan = make_plan(tiny_preset())
    runs = plan.runs[:2]  # nc and f-ae: one each for the two worker processes
    runner.run_queue(runs, tmp_path / "one", jobs=1, log=lambda line: None)
    outcomes = runner.run_queue(runs, tmp_path / "two", jobs=2, log=lambda line: None)
    assert {o.status for o in outcomes} == {"trained"}
    for run in runs:
        a, b = (_untimed(tmp_path / d / run.path / "summary.json") for d in ("one", "two"))
        assert a == b and "test_mji" in a


def test_a_pool_starts_the_costliest_runs_of_a_seed_first():
    runs = make_plan(load_preset("quick")).runs
    order = [runs[i] for i in runner.pool_order(runs, range(len(runs)))]
    first = [r.variant for r in order[:2]]
    assert first == ["fg-cheng2020-attn"] * 2 and order[-1].variant == "nc"
    assert {r.seed for r in order[: len(order) // 2]} == {0}


def _untimed(path) -> dict:
    """A summary without its timings, which differ from run to run."""
    summary = json.loads(path.read_text())
    return {k: v for k, v in summary.items() if "second" not in k}


# --- the grid ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["quick", "full"])
def test_presets_span_six_decades_of_lambda(name):
    preset = load_preset(name)
    assert set(preset.codecs) == {"ae", "cheng2020-attn"} and set(preset.schemes) == {"f", "fg"}
    for codec in preset.codecs:
        lams = preset.lambdas[codec]
        assert math.log10(max(lams) / min(lams)) >= 6 and len(set(lams)) >= 4
    plan = make_plan(preset)
    classic = sum(max(1, len(v)) for v in preset.classic.values())  # fp16: one run, no knob
    points = sum(map(len, preset.lambdas.values())) + classic
    per_dataset = preset.seeds * (1 + len(preset.schemes) * points)
    assert len(plan.runs) == len(preset.datasets) * per_dataset
    names = [r.name for r in plan.runs]
    assert len(set(names)) == len(names)
    last = preset.seeds - 1
    for dataset in preset.datasets:
        assert f"{dataset}/nc/seed-{last}" in names
        for codec, lams in preset.lambdas.items():
            assert f"{dataset}/fg-{codec}/lambda-{max(lams):g}/seed-{last}" in names
    low = min(preset.lambdas["ae"])
    name = f"{preset.datasets[0]}/f-ae/lambda-{low:g}/seed-{last}"
    run = next(r for r in plan.runs if r.name == name)
    assert (run.config.scheme, run.config.codec, run.config.lmbda) == ("f", "ae", low)
    assert run.config.train.seed == last and run.config.data.dataset == preset.datasets[0]


def test_plan_takes_a_config_and_overrides(tmp_path):
    config = tmp_path / "ham.yaml"
    config.write_text("data: {dataset: ham10000, root: /data/ham}\ntrain: {rounds: 3}\n")
    plan = make_plan(tiny_preset(), config=config, overrides=["train.local_epochs=2"], seeds=2)
    assert list(plan.bases) == ["ham10000"] and len(plan.runs) == 6
    cfg = plan.runs[-1].config
    assert (cfg.data.root, cfg.train.rounds, cfg.train.local_epochs) == ("/data/ham", 3, 2)
    assert cfg.data.image_size == 32  # from the preset, which the config did not set


def test_codec_options_of_a_preset_apply_to_that_codec_only():
    preset = Preset("tiny", TINY_RUN, ("synthetic-lesion",), ("f",), ("ae",), {"ae": (1.0,)},
                    seeds=1, classic={"fp16": ()},
                    codec_options={"ae": {"warmup_steps": 7}})  # fmt: skip
    steps = {r.variant: r.config.codec_options.warmup_steps for r in make_plan(preset).runs}
    assert steps == {"nc": 0, "f-ae": 7, "f-fp16": 0}
    with pytest.raises(ConfigError, match="codec_options: 'cheng2020-attn' is not in the grid"):
        Preset("x", TINY_RUN, ("synthetic-lesion",), ("f",), ("ae",), {"ae": (1.0,)}, seeds=1,
               codec_options={"cheng2020-attn": {"warmup_steps": 7}})  # fmt: skip
    bad = Preset("x", TINY_RUN, ("synthetic-lesion",), ("f",), ("ae",), {"ae": (1.0,)}, seeds=1,
                 codec_options={"ae": {"warmup": 7}})  # fmt: skip
    with pytest.raises(ConfigError, match="synthetic-lesion f-ae.*warmup"):
        make_plan(bad)


def test_dataset_run_keys_apply_to_that_dataset_only():
    preset = Preset("tiny", TINY_RUN, ("synthetic-lesion", "synthetic-blastocyst"), ("f",),
                    ("ae",), {"ae": (1.0,)}, seeds=1,
                    dataset_run={"synthetic-blastocyst": {"train": {"batch_size": 1}}})  # fmt: skip
    plan = make_plan(preset, datasets=["synthetic-lesion"])
    assert {r.config.train.batch_size for r in plan.runs} == {2}
    # A dataset outside the grid (Table 3's other dataset) is built the same way.
    other = plan.base("synthetic-blastocyst")
    assert (other.train.batch_size, other.data.dataset) == (1, "synthetic-blastocyst")
    assert plan.base("synthetic-lesion").train.batch_size == 2
    with pytest.raises(ConfigError, match="dataset_run: 'cifar' is not one of"):
        Preset("x", TINY_RUN, ("synthetic-lesion",), ("f",), ("ae",), {"ae": (1.0,)}, seeds=1,
               dataset_run={"cifar": {}})  # fmt: skip


def test_order_rows_rank_the_rate_against_lambda():
    from splitfedzip.reproduce.aggregate import order_rows

    def point(variant, lam, rate, mji):
        return {"dataset": "d", "variant": variant, "lambda": lam, "bpp_t_mean": rate,
                "test_mji_mean": mji}  # fmt: skip

    rates = {1e-3: 0.001, 1e-1: 0.001, 10: 0.01, 1e3: 0.1}
    curves = [point("nc", None, 256.0, 0.8)]
    curves += [point("f-ae", lam, rate, 0.5) for lam, rate in reversed(rates.items())]
    curves += [point("f-cheng2020-attn", lam, 1 / rate, 0.7) for lam, rate in rates.items()]
    curves += [point("f-int", None, 4.0, 0.8)]  # classic: no λ, no row
    ae, cheng = order_rows(curves)
    assert ae["spearman"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [1.5, 1.5, 3, 4])[0, 1])
    assert ae["span_decades"] == pytest.approx(2.0) and ae["lambda_low"] == 1e-3
    assert ae["mji_below_nc"] == pytest.approx(0.3) and cheng["spearman"] < -0.9


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "lambda=3"], "--set lambda: the grid sets it"),
        (["--set", "data.image_size=64"], "cheng2020-attn' needs H and W"),
        (["--seeds", "0"], "--seeds: must be >= 1"),
        (["--jobs", "0"], "--jobs: must be >= 1"),
    ],
)
def test_bad_reproduce_input_is_a_clear_error(argv, message, capsys):
    assert main(["reproduce", "--quick", "--dry-run", *argv]) == 2
    assert message in capsys.readouterr().err


def test_dry_run_lists_the_queue(capsys, tmp_path):
    assert main(["reproduce", "--quick", "--dry-run", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"[1/{len(lines)}] {tmp_path}/synthetic-lesion/nc/seed-0"
    assert not any(tmp_path.iterdir())


# --- tables and figures from finished runs (written here, not trained) ---------------------


def _fake_run(run, out, rng) -> None:
    """A finished run's folder with plausible numbers: rate and accuracy grow with λ."""
    folder = out / run.path
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(run.config))
    lam = run.lmbda or 1e6
    scale = 0.6 if run.variant.endswith("cheng2020-attn") else 1.0
    s1 = 32.0 if run.variant == "nc" else scale * 0.02 * lam**0.25 * rng.uniform(0.9, 1.1)
    s2 = 0.8 * s1
    mji = 0.85 - 0.5 / (1 + lam**0.4 / scale) + rng.normal(0, 0.01)
    summary = {"test_mji": mji, "test_dice": mji, "bpp_s1": s1, "bpp_s2": s2, "bpp_t": s1 + s2,
               "cr_s1": 8 / s1, "cr_s2": 8 / s2, "bytes_split": 1e6 * s1, "bytes_total": 2e6,
               "wall_seconds": 2.0}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    rounds, epochs = run.config.train.rounds, run.config.train.local_epochs
    with open(folder / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["round", "epoch", "client", *BPP_COLUMNS])
        w.writeheader()
        for r in range(rounds):
            for e in range(1, epochs + 1):
                for c in range(2):
                    decay = 1 + 0.5 * math.exp(-(r * epochs + e) / 3)
                    bpp = [decay * v for v in (s1, s2, 0.7 * s2, 0.9 * s1)]
                    row = dict(zip(BPP_COLUMNS, bpp, strict=True))
                    w.writerow({"round": r, "epoch": e, "client": c} | row)
    size, k = run.config.data.image_size, 3
    yy, xx = np.mgrid[:size, :size]
    masks = np.stack([((yy - 40 - 10 * i) ** 2 + (xx - 60) ** 2 < 900).astype(np.uint8)
                      for i in range(k)])  # fmt: skip
    flip = rng.random(masks.shape) < 0.3 / (1 + lam)
    np.savez(folder / "predictions.npz",
             images=rng.integers(0, 255, (k, size, size, 3), dtype=np.uint8), masks=masks,
             predictions=np.where(flip, 1 - masks, masks).astype(np.uint8),
             mji=np.full(k, mji, dtype=np.float32))  # fmt: skip


def fake_reproduction(out, datasets=("synthetic-lesion", "synthetic-blastocyst"), seeds=2):
    """The quick grid's shape (both codecs, two schemes) on fake finished runs."""
    run = {**TINY_RUN, "data": {**TINY_RUN["data"], "image_size": 128},
           "train": {**TINY_RUN["train"], "rounds": 2, "local_epochs": 3}}  # fmt: skip
    lambdas = {"ae": (1e-3, 1e-2, 0.1, 1, 10, 100, 1e3), "cheng2020-attn": (1e-3, 0.1, 10, 1e3)}
    codecs = ("ae", "cheng2020-attn")
    preset = Preset("fake", run, datasets, ("f", "fg"), codecs, lambdas, seeds=seeds)
    plan = make_plan(preset)
    rng = np.random.default_rng(0)
    for run in plan.runs:
        _fake_run(run, out, rng)
    return plan


def test_report_mode_draws_every_figure_from_finished_runs(tmp_path):
    plan = fake_reproduction(tmp_path)
    result = reproduce(plan, tmp_path, train=False, log=lambda line: None)
    assert {o.status for o in result.outcomes} == {"reused"}
    curves = _csv(tmp_path / "curves.csv")
    assert len(curves) == 2 * (1 + 2 * (7 + 4)) and {c["n"] for c in curves} == {"2"}
    bd = _csv(tmp_path / "bd.csv")
    assert len(bd) == 2 * 2 * 3 and {b["method"] for b in bd} == {"cubic"}
    # The fake cheng2020-attn needs 0.6x the rate of the ae for the same accuracy.
    assert all(float(b["bd_rate_percent"]) < 0 for b in bd if b["rate"] == "bpp_s1")
    assert all(float(b["mji_lo"]) < float(b["mji_hi"]) for b in bd)
    names = {p.name for p in tmp_path.glob("*.png")}
    for d in ("synthetic-lesion", "synthetic-blastocyst"):
        assert {f"fig-rate-accuracy-{d}.png", f"fig-training-bpp-{d}.png",
                f"table2-predictions-{d}.png"} <= names  # fmt: skip
    report = (tmp_path / "report.md").read_text()
    assert "fg-cheng2020-attn, λ=0.1" in report and "Not drawn" not in report


def test_figures_without_history_or_predictions_are_skipped_with_a_note(tmp_path):
    plan = fake_reproduction(tmp_path, datasets=("synthetic-lesion",), seeds=1)
    for path in tmp_path.rglob("history.csv"):
        path.unlink()
    shutil.rmtree(tmp_path / "synthetic-lesion" / "nc")
    reproduce(plan, tmp_path, train=False, log=lambda line: None)
    report = (tmp_path / "report.md").read_text()
    assert "Not drawn: the fg-cheng2020-attn runs at λ=0.1 wrote no history.csv" in report
    assert "Not drawn: no predictions.npz from the NC and fg-ae runs" in report
    assert "1 not run" in report and (tmp_path / "fig-rate-accuracy-synthetic-lesion.png").is_file()


# --- BD agrees with the classic method ----------------------------------------------------


def vceg_m33(r1, m1, r2, m2) -> tuple[float, float]:
    """BD-rate (%) and BD-metric as in Bjøntegaard's VCEG-M33 spreadsheet (log10 rates)."""
    l1, l2 = np.log10(r1), np.log10(r2)
    lo, hi = max(min(m1), min(m2)), min(max(m1), max(m2))
    p1, p2 = np.polyint(np.polyfit(m1, l1, 3)), np.polyint(np.polyfit(m2, l2, 3))
    avg = (np.polyval(p2, hi) - np.polyval(p2, lo)) - (np.polyval(p1, hi) - np.polyval(p1, lo))
    rate = (10 ** (avg / (hi - lo)) - 1) * 100
    lo, hi = max(min(l1), min(l2)), min(max(l1), max(l2))
    q1, q2 = np.polyint(np.polyfit(l1, m1, 3)), np.polyint(np.polyfit(l2, m2, 3))
    diff = (np.polyval(q2, hi) - np.polyval(q2, lo)) - (np.polyval(q1, hi) - np.polyval(q1, lo))
    return rate, diff / (hi - lo)


CURVES = [
    # Bjøntegaard-style PSNR curves (kbit/s, dB).
    ([686.76, 309.58, 157.11, 85.95], [40.28, 37.18, 34.24, 31.42],
     [893.34, 407.8, 204.93, 112.75], [40.39, 37.21, 34.17, 31.24]),
    # Rate-accuracy curves like the paper's (BPP, MJI), overlapping in part.
    ([0.002, 0.01, 0.05, 0.3], [0.61, 0.72, 0.80, 0.84],
     [0.004, 0.008, 0.03, 0.2], [0.66, 0.74, 0.79, 0.86]),
    ([1e-4, 1e-3, 1e-2, 1e-1], [0.50, 0.70, 0.78, 0.80],
     [3e-4, 2e-3, 3e-2, 4e-1], [0.55, 0.69, 0.80, 0.83]),
]  # fmt: skip


@pytest.mark.parametrize("r1, m1, r2, m2", CURVES)
def test_cubic_bd_agrees_with_vceg_m33(r1, m1, r2, m2):
    rate, metric = vceg_m33(r1, m1, r2, m2)
    assert bd_rate(r1, m1, r2, m2, method="cubic") == pytest.approx(rate, rel=1e-6, abs=1e-9)
    assert bd_metric(r1, m1, r2, m2, method="cubic") == pytest.approx(metric, rel=1e-6, abs=1e-9)


def test_grid_keys_cannot_be_overridden():
    with pytest.raises(ConfigError, match="train.seed"):
        make_plan(tiny_preset(), overrides=["train.seed=3"])
