"""The ``splitfedzip`` command: each subcommand registers itself from its own module."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from ..errors import RunFailure, UserError
from . import bench_cmd, inspect_cmd, reproduce_cmd, serve_cmd, train_cmd

# Each module exposes ``register(subparsers)``, which adds its parser and sets ``func``.
COMMANDS = (inspect_cmd, train_cmd, serve_cmd, bench_cmd, reproduce_cmd)
# Errors caused by what the user gave us (arguments, configuration, data files, a path that is
# not there): one line and exit status 2, the usage status.
USER_ERRORS = (UserError, FileNotFoundError)
# A run that cannot go on for a reason outside this program (a peer, the codecs' two sides
# disagreeing, divergence): one line and exit status 1. Anything else is a fault in this
# program: it keeps its traceback (and Python's exit status 1).
RUN_FAILURES = (RunFailure,)


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
    except RUN_FAILURES as e:
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
