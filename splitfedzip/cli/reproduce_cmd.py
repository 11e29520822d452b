"""``splitfedzip reproduce``: the paper's experiments at an affordable scale, every figure."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from ..config import DATASETS
from ..errors import UserError
from .options import add_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``reproduce`` command."""
    p = subparsers.add_parser(
        "reproduce",
        help="run the paper's experiments (nc, f/fg x ae/cheng2020-attn over λ and seeds) and "
        "write every figure",
        description="Train nc once per seed and every scheme x codec x λ x seed of a preset "
        "(configs/reproduce-{quick,full}.yaml), reusing finished runs, then write runs.csv, "
        "curves.csv, bd.csv, the figures (PNG) and report.md into OUT.",
    )
    p.add_argument("--quick", action="store_true", help="the quick preset (default: full)")
    p.add_argument("--preset", help="a preset YAML file instead of quick/full")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--dataset", nargs="+", choices=DATASETS, metavar="NAME",
                       help="datasets to run (default: the preset's)")  # fmt: skip
    which.add_argument("--config", help="one run config (YAML), e.g. a real dataset's data.root; "
                       "its keys override the preset's base run config")  # fmt: skip
    p.add_argument("--seeds", type=int, help="seeds per point (default: the preset's)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    p.add_argument("--out", help="output folder (default: runs/reproduce-<preset>)")
    add_overrides(p, "a key of every run's config")
    p.add_argument(
        "--report", action="store_true",
        help="train nothing: tables, figures and report from the finished runs",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.set_defaults(func=_reproduce)


def _reproduce(args: argparse.Namespace) -> int:
    from ..reproduce import load_preset, make_plan, reproduce

    if args.jobs < 1:
        raise UserError(f"--jobs: must be >= 1, got {args.jobs}")
    preset = load_preset(args.preset or ("quick" if args.quick else "full"))
    plan = make_plan(preset, args.dataset, args.config, args.overrides, args.seeds)
    out = Path(args.out or f"runs/reproduce-{preset.name}")
    if args.dry_run:
        from ..reproduce.baselines import stages

        runs = [*plan.runs, *stages(plan, out).runs]  # Table 3's after the grid's
        for i, run in enumerate(runs, start=1):
            print(f"[{i}/{len(runs)}] {out / run.path}")
        return 0
    log = functools.partial(print, flush=True)
    result = reproduce(plan, out, jobs=args.jobs, train=not args.report, log=log)
    return 1 if result.failed else 0
