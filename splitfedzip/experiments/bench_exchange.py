"""The coded weights exchange against the float32 one, seed by seed
(``splitfedzip bench exchange``).

At each seed it runs the demo's nc, fg-ae (float32 exchange) and fg-ae-int2 (the same run with
the exchange coded) and compares their test MJI and total bytes, paired by seed: a single run
moves by more than the coding costs (docs/benchmarks.md, "What five seeds can resolve"), so
the mean difference comes with its standard error. Every run is kept in its own folder and a
second call reuses it: a long comparison resumes where it stopped. ``coded`` overrides change
the coded run alone (another weights codec, say); its runs then go in a folder named after them,
beside the nc and float32 runs they share.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import sem

from ..config import Config, dump_config, load_config
from ..errors import UserError
from .demo import DEMO_CONFIG, demo_configs
from .demo import VARIANTS as DEMO_VARIANTS
from .train import run_embedded, write_outputs

#: The runs compared at each seed: the reference of the reductions, the float32 exchange and
#: the coded one (experiments/demo.py).
VARIANTS = ("nc", "fg-ae", "fg-ae-int2")
CODED = VARIANTS[-1]


@dataclass(frozen=True)
class ExchangeSetup:
    """Seeds, the runs' configuration (base file and ``--set`` overrides) and where they go."""

    out: Path
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    config: Path = DEMO_CONFIG
    overrides: tuple[str, ...] = ()
    #: Overrides of the coded run alone, after the demo's own exchange settings.
    coded: tuple[str, ...] = ()

    @property
    def coded_name(self) -> str:
        """The coded run's folder: the demo's name, or one that names its overrides."""
        if not self.coded:
            return CODED
        return "fg-ae-coded-" + hashlib.sha256("\n".join(self.coded).encode()).hexdigest()[:8]


def _run(cfg: Config, folder: Path, progress: bool) -> dict[str, Any]:
    """The summary of ``cfg``'s run in ``folder``: the one kept there, else a new one."""
    summary = folder / "summary.json"
    if summary.exists():
        held = (folder / "config.yaml").read_text() if (folder / "config.yaml").exists() else ""
        if held != dump_config(cfg):
            raise UserError(
                f"{folder} holds a run of another configuration: remove it or choose another --out"
            )
        return json.loads(summary.read_text())
    result = run_embedded(cfg, progress=progress)
    write_outputs(cfg, result, folder)
    return result.summary


def bench_exchange(setup: ExchangeSetup, progress: bool = True) -> list[dict[str, Any]]:
    """One row per seed: each variant's test MJI and total bytes, and the coded exchange's
    MJI difference to the float32 one."""
    rows, done, total = [], 0, len(setup.seeds) * len(VARIANTS)
    if setup.coded:
        print(f"{setup.coded_name}: {CODED} with {' '.join(setup.coded)}", flush=True)
    for seed in setup.seeds:
        overrides = [*setup.overrides, f"train.seed={seed}"]
        cfgs = demo_configs(overrides, base=setup.config)
        if setup.coded:  # after the demo's own exchange settings, which they may change
            coded = [*overrides, *DEMO_VARIANTS[CODED], *setup.coded]
            cfgs[CODED] = load_config(setup.config, coded)
        row: dict[str, Any] = {"seed": seed}
        for name in VARIANTS:
            folder = setup.coded_name if name == CODED else name
            tic = time.perf_counter()
            s = _run(cfgs[name], setup.out / folder / f"seed-{seed}", progress)
            done += 1
            key = "coded" if name == CODED else name
            row[f"mji {key}"], row[f"bytes {key}"] = s["test_mji"], s["bytes_total"]
            print(
                f"[{done}/{total}] seed {seed} {folder}: test MJI {s['test_mji']:.4f}, "
                f"{s['bytes_total']:,} bytes ({time.perf_counter() - tic:.0f} s)",
                flush=True,
            )
        row["mji difference"] = row["mji coded"] - row["mji fg-ae"]
        row["coded below nc"] = row["bytes nc"] / row["bytes coded"]
        rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Per seed, then the mean difference with its standard error over the seeds."""
    lines = [
        f"{'seed':>5}{'nc MJI':>10}{'fg-ae':>10}{'coded':>10}{'difference':>12}"
        f"{'coded bytes':>14}{'below nc':>10}"
    ]
    for r in rows:
        lines.append(
            f"{r['seed']:>5}{r['mji nc']:>10.4f}{r['mji fg-ae']:>10.4f}"
            f"{r['mji coded']:>10.4f}{r['mji difference']:>+12.4f}"
            f"{r['bytes coded']:>14,}{r['coded below nc']:>9.1f}x"
        )
    diffs = np.array([r["mji difference"] for r in rows])
    ratios = [r["coded below nc"] for r in rows]
    spread = f" (standard error {sem(diffs):.4f})" if len(diffs) > 1 else ""
    lines.append(
        f"coded exchange vs float32: test MJI {diffs.mean():+.4f} on average{spread}; "
        f"total bytes {min(ratios):.1f}-{max(ratios):.1f}x below nc"
    )
    return "\n".join(lines)
