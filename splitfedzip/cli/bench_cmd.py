"""``splitfedzip bench ...``: benchmarks, each a sub-subcommand registered from ``BENCHES``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..config import load_config


def register_codecs(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench codecs``."""
    p = subparsers.add_parser(
        "codecs",
        help="size, exactness and speed of every codec on real S1 features and gradients",
        description="Train a split U-Net briefly on synthetic images, collect S1 features and "
        "gradients, train each codec for a short while, and measure it on held-out tensors. "
        "Without CONFIG: 128x128 input, base width 8, latent 64.",
    )
    p.add_argument("config", nargs="?", help="YAML run configuration (its size and widths)")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows")
    p.add_argument("--steps", type=int, help="training steps of each codec (default 150)")
    p.add_argument("--warmup", type=int, help="SGD steps of the U-Net first (default 30)")
    p.add_argument("--lmbda", type=float, help="λ of rate + λ·MSE (default 100)")
    p.add_argument("--codecs", help="comma-separated codec names (default: all)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default 1)")
    p.set_defaults(func=run_codecs)


# Each entry adds one benchmark's parser to the ``bench`` subparsers and sets its ``func``.
BENCHES = (register_codecs,)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` command and its benchmarks."""
    p = subparsers.add_parser("bench", help="benchmarks", description="Benchmarks.")
    sub = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for add in BENCHES:
        add(sub)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line; the rest keep the benchmark's defaults."""
    opts: dict[str, Any] = {}
    if args.steps is not None:
        opts["steps"] = args.steps
    if args.warmup is not None:
        opts["warmup_steps"] = args.warmup
    if args.lmbda is not None:
        opts["lmbda"] = args.lmbda
    if args.codecs is not None:
        opts["codecs"] = tuple(c.strip() for c in args.codecs.split(",") if c.strip())
    if args.threads is not None:
        opts["threads"] = args.threads
    if opts.get("steps", 0) < 0 or opts.get("warmup_steps", 0) < 0:
        raise ValueError("--steps and --warmup must be >= 0")
    if opts.get("lmbda", 1) <= 0 or opts.get("threads", 1) < 1:
        raise ValueError("--lmbda must be > 0 and --threads >= 1")
    return opts


def run_codecs(args: argparse.Namespace) -> int:
    """Run the codec benchmark and print a table or JSON."""
    opts = _options(args)
    cfg = None if args.config is None else load_config(args.config)
    # Imported here: torch and CompressAI take seconds to load, which --help should not pay.
    from ..experiments.bench_codecs import BenchSetup, bench_codecs, format_rows, setup_from_config

    setup = BenchSetup(**opts) if cfg is None else setup_from_config(cfg, **opts)
    rows = bench_codecs(setup)
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows, setup))
    return 0
