"""``splitfedzip inspect``: parameters, MACs and tensor shapes of the network and codecs."""

from __future__ import annotations

import argparse
import json

from ..config import load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``inspect`` command."""
    p = subparsers.add_parser(
        "inspect",
        help="parameters, MACs and split/latent shapes of the split U-Net and its codecs",
        description="Without CONFIG: the paper's set-up (256x256 RGB, base width 32, 5 classes, "
        "latent 64). With CONFIG: its image size, width, classes and latent channels.",
    )
    p.add_argument("config", nargs="?", help="YAML run configuration")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Count and print."""
    cfg = None if args.config is None else load_config(args.config)
    # Imported here: torch and CompressAI take seconds to load, which --help should not pay.
    from ..experiments.inspect import PAPER_SETUP, format_report, inspect_model, setup_from_config

    setup = PAPER_SETUP if cfg is None else setup_from_config(cfg)
    report = inspect_model(setup)
    print(json.dumps(report, indent=2) if args.json else format_report(report, setup))
    return 0
