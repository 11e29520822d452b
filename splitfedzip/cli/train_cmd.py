"""``splitfedzip train`` and ``splitfedzip demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``demo`` commands."""
    p = subparsers.add_parser("train", help="run SplitFedZip training with every party in-process")
    p.add_argument("config", nargs="?", help="YAML config (defaults for every missing key)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set lambda=4 (repeatable)")  # fmt: skip
    p.add_argument("--out", default="runs/train", help="output folder (default: runs/train)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)

    d = subparsers.add_parser("demo", help="nc, f-ae and fg-ae on synthetic lesions, side by side")
    d.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the demo's config")  # fmt: skip
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=_demo)


def _train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..experiments.train import run_embedded, write_outputs

    cfg = load_config(args.config, args.overrides)
    result = run_embedded(cfg, progress=not args.no_progress)
    out = Path(args.out)
    write_outputs(cfg, result, out)
    print(json.dumps(result.summary, indent=2))
    print(f"wrote {out}/{{config.yaml,metrics.csv,ledger.csv,summary.json,checkpoints/}}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ..experiments.demo import demo_table, run_demo

    out = Path(args.out)
    summaries = run_demo(out, args.overrides, progress=not args.no_progress)
    table = demo_table(summaries)
    (out / "table.txt").write_text(table + "\n")
    print(table)
    print(f"wrote {out}/{{nc,f-ae,fg-ae}}/ and {out}/table.txt")
    return 0
