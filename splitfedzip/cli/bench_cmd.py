"""``splitfedzip bench ...``: benchmarks, each a sub-subcommand registered from ``BENCHES``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..config import load_config
from ..errors import UserError
from .options import add_overrides


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


def register_runtime(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench runtime``."""
    p = subparsers.add_parser(
        "runtime",
        help="time per training batch of nc, f and fg with each codec, as ratios to nc",
        description="Time one client's training batches (front end, S1, main server, S2, back "
        "end, gradients back, every crossing really coded) for each scheme and codec, "
        "interleaved in one run. Without CONFIG: the demo's configuration.",
    )
    p.add_argument("config", nargs="?", help="YAML run configuration (default: the demo's)")
    add_overrides(p)
    p.add_argument("--json", action="store_true", help="print a JSON list of rows")
    p.add_argument("--schemes", default="nc,f,fg", help="comma-separated (default nc,f,fg)")
    p.add_argument(
        "--codecs", default="ae,cheng2020-attn", help="comma-separated (default: both learned)"
    )
    p.add_argument("--batches", type=int, default=8, help="timed batches per repeat (default 8)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved passes (default 3)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    p.set_defaults(func=run_runtime)


def register_deploy(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench deploy``."""
    p = subparsers.add_parser(
        "deploy",
        help="training batches per second of launch (gRPC, processes) over train (embedded)",
        description="Run the same configuration with train and with launch, one after the "
        "other, and compare their training throughput. Without CONFIG: the demo's "
        "configuration with scheme fg.",
    )
    p.add_argument("config", nargs="?", help="YAML run configuration (default: the demo's, fg)")
    add_overrides(p)
    p.add_argument("--out", default="runs/bench-deploy", help="output directory of both runs")
    p.add_argument("--insecure", action="store_true", help="launch without TLS")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_deploy)


def register_clients(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench clients``."""
    p = subparsers.add_parser(
        "clients",
        help="peak memory and seconds per round of train against the number of clients",
        description="Run train (every party in one process) once per client count, each in a "
        "fresh process, and report its peak RSS and seconds per round. Without CONFIG: 64x64 "
        "images, base width 32, fg with ae, one round of one local epoch.",
    )
    p.add_argument("config", nargs="?", help="YAML run configuration (its scale)")
    add_overrides(p)
    p.add_argument("--clients", default="10,100", help="comma-separated counts (default 10,100)")
    p.add_argument("--images-per-client", type=int, default=3,
                   help="images per client, training and validation (default 3)")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows")
    p.set_defaults(func=run_clients)


def register_exchange(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench exchange``."""
    p = subparsers.add_parser(
        "exchange",
        help="test MJI and total bytes of the coded weights exchange against float32, by seed",
        description="At each seed, run the demo's nc, fg-ae (float32 weights exchange) and "
        "fg-ae-int2 (the same, exchange coded), and print the coded exchange's test MJI "
        "difference to float32 with its standard error over the seeds, and its total bytes "
        "against nc. Runs are kept under --out; a second call resumes, and a call with other "
        "--coded settings reuses the nc and float32 runs. Without CONFIG: the demo's "
        "configuration.",
    )
    p.add_argument("config", nargs="?", help="YAML run configuration (default: the demo's)")
    add_overrides(p, "a config key of every run")
    p.add_argument(
        "--coded", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key of the coded run alone, e.g. --coded "
        "federation.weights_codec=int4 (repeatable; its runs go in a folder of their own)",
    )  # fmt: skip
    p.add_argument("--seeds", default="0-4", help="a range or comma-separated (default 0-4)")
    p.add_argument("--out", default="runs/bench-exchange", help="folder of the runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print a JSON list of rows")
    p.set_defaults(func=run_exchange)


# Each entry adds one benchmark's parser to the ``bench`` subparsers and sets its ``func``.
BENCHES = (register_codecs, register_runtime, register_deploy, register_clients, register_exchange)


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
        raise UserError("--steps and --warmup must be >= 0")
    if opts.get("lmbda", 1) <= 0 or opts.get("threads", 1) < 1:
        raise UserError("--lmbda must be > 0 and --threads >= 1")
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


def _names(text: str, what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise UserError(f"--{what}: give at least one name")
    return names


def _demo_config(path: str | None, overrides: list[str], *extra: str):
    from ..experiments.demo import DEMO_CONFIG

    if path is not None:
        return load_config(path, overrides)
    return load_config(DEMO_CONFIG, [*extra, *overrides])


def run_runtime(args: argparse.Namespace) -> int:
    """Run the per-batch runtime benchmark and print a table or JSON."""
    from ..config import CODECS, SCHEMES
    from ..experiments.bench_runtime import RuntimeSetup, bench_runtime, format_rows

    cfg = _demo_config(args.config, args.overrides)
    schemes, codecs = _names(args.schemes, "schemes"), _names(args.codecs, "codecs")
    for what, names, known in (("schemes", schemes, SCHEMES), ("codecs", codecs, CODECS)):
        for name in names:
            if name not in known:
                raise UserError(f"--{what}: {name!r} is not one of {', '.join(known)}")
    if min(args.batches, args.repeats, args.threads) < 1:
        raise UserError("--batches, --repeats and --threads must be >= 1")
    setup = RuntimeSetup(schemes, codecs, batches=args.batches, repeats=args.repeats,
                         threads=args.threads)  # fmt: skip
    rows = bench_runtime(cfg, setup)
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows, cfg, setup))
    return 0


def run_deploy(args: argparse.Namespace) -> int:
    """Run train and launch on one configuration and print their throughput ratio."""
    from ..experiments.bench_deploy import bench_deploy, format_result

    cfg = _demo_config(args.config, args.overrides, "scheme=fg")
    result = bench_deploy(cfg, args.out, insecure=args.insecure)
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0


def run_clients(args: argparse.Namespace) -> int:
    """Run train at each client count and print peak RSS and seconds per round."""
    from ..experiments.bench_clients import (
        DEFAULT_OVERRIDES,
        ClientsSetup,
        bench_clients,
        format_rows,
    )

    try:
        counts = tuple(int(c) for c in args.clients.split(",") if c.strip())
    except ValueError:
        raise UserError(f"--clients: {args.clients!r} is not comma-separated counts") from None
    if not counts or min(counts) < 1 or args.images_per_client < 2 or args.threads < 1:
        raise UserError("--clients must be counts >= 1, --images-per-client >= 2, --threads >= 1")
    overrides = args.overrides if args.config else [*DEFAULT_OVERRIDES, *args.overrides]
    cfg = load_config(args.config, overrides)
    setup = ClientsSetup(counts, args.images_per_client, args.threads)
    rows = bench_clients(cfg, setup)
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0


def _seeds(text: str) -> tuple[int, ...]:
    """``0-4`` or ``0,3,7``: the seeds, in order."""
    try:
        if "-" in text.strip("-"):
            first, last = (int(t) for t in text.split("-", 1))
            seeds = tuple(range(first, last + 1))
        else:
            seeds = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UserError(f"--seeds: {text!r} is neither a range (0-4) nor seeds (0,3,7)") from None
    if not seeds or min(seeds) < 0:
        raise UserError(f"--seeds: {text!r} gives no seeds >= 0")
    return seeds


def run_exchange(args: argparse.Namespace) -> int:
    """Run the coded and float32 exchanges at each seed and print their comparison."""
    from pathlib import Path

    from ..experiments.bench_exchange import ExchangeSetup, bench_exchange, format_rows
    from ..experiments.demo import DEMO_CONFIG

    config = DEMO_CONFIG if args.config is None else Path(args.config)
    if not config.is_file():
        raise UserError(f"{config}: no such configuration file")
    setup = ExchangeSetup(
        Path(args.out), _seeds(args.seeds), config, tuple(args.overrides), tuple(args.coded)
    )
    rows = bench_exchange(setup, progress=not args.no_progress)
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
    return 0
