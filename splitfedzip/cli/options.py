"""Arguments several commands share."""

from __future__ import annotations

import argparse


def add_overrides(p: argparse.ArgumentParser, what: str = "a config key") -> None:
    """``--set KEY=VALUE`` (repeatable), collected in ``args.overrides``."""
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"override {what}, e.g. --set lambda=4 (repeatable)",
    )  # fmt: skip
