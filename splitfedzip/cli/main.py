"""The ``splitfedzip`` command: each subcommand registers itself from its own module."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from ..config import ConfigError
from . import bench_cmd, inspect_cmd, reproduce_cmd, serve_cmd, train_cmd

# Each module exposes ``register(subparsers)``, which adds its parser and sets ``func``.
COMMANDS = (inspect_cmd, train_cmd, serve_cmd, bench_cmd, reproduce_cmd)
# Errors caused by what the user gave us: a message and exit status 2, no traceback.
# (CodecError, like ConfigError, is a ValueError; importing it here would load torch for --help.)
USER_ERRORS = (ConfigError, FileNotFoundError, ValueError)


def _version() -> str:
    try:
        return version("splitfedzip")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered command."""
    parser = argparse.ArgumentParser(
        prog="splitfedzip",
        description="Split-federated learning with learned compression of features and gradients.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            # CompressAI scripts a function when imported, which this torch deprecates; a user
            # can do nothing about it.
            warnings.filterwarnings(
                "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
            )
            return int(args.func(args))
    except USER_ERRORS as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
