"""``splitfedzip train`` and ``splitfedzip demo``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import UserError
from .options import add_overrides

LINK_HELP = (
    "BANDWIDTH,RTT: the link (bandwidth per direction, round-trip time) summary.json prices the "
    "traffic at (default 10mbit,20ms)"
)


def _link(text: str) -> str:
    from ..metrics.link import parse_link  # torch loads only when a command runs

    try:
        parse_link(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``demo`` commands."""
    p = subparsers.add_parser("train", help="run SplitFedZip training with every party in-process")
    p.add_argument("config", nargs="?", help="YAML config (defaults for every missing key)")
    add_overrides(p)
    p.add_argument("--out", default="runs/train", help="output folder (default: runs/train)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--link", type=_link, help=LINK_HELP)
    p.add_argument(
        "--resume", action="store_true",
        help="continue the run in OUT from its last complete round (OUT/checkpoints/)",
    )  # fmt: skip
    p.set_defaults(func=_train)

    d = subparsers.add_parser("demo", help="nc, f-ae and fg-ae on synthetic lesions, side by side")
    d.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    add_overrides(d, "a key of the demo's config")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("--link", type=_link, help=LINK_HELP)
    d.set_defaults(func=_demo)

    w = subparsers.add_parser(
        "sweep",
        help="rate-accuracy curves over lambda for scheme:codec variants, and their BD-rates",
        description="Train CONFIG once per variant and lambda, write each run like train, and "
        "write curves.csv (one point per run) and bd.csv (BD-rate and BD-MJI of each variant "
        "against the anchor, on BPP-S1, BPP-S2 and BPP-T).",
    )
    w.add_argument("config", nargs="?", help="YAML config shared by every run")
    add_overrides(w)
    w.add_argument("--lambdas", default="10,100,1000", help="comma-separated (default 10,100,1000)")
    w.add_argument("--variants", default="f:ae,f:cheng2020-attn",
                   help="comma-separated scheme:codec (default f:ae,f:cheng2020-attn)")  # fmt: skip
    w.add_argument("--anchor", help="variant the others are compared with (default: the first)")
    w.add_argument("--method", choices=("auto", "cubic", "pchip"), default="auto",
                   help="cubic, pchip, or auto: cubic given 4 distinct values")  # fmt: skip
    w.add_argument("--out", default="runs/sweep", help="output folder (default: runs/sweep)")
    w.add_argument("--report", action="store_true",
                   help="train nothing: recompute bd.csv from OUT/curves.csv")  # fmt: skip
    w.add_argument("--no-progress", action="store_true", help="no progress bars")
    w.set_defaults(func=_sweep)


def _log_to_stderr() -> None:
    """The package's INFO lines (one per local epoch) on stderr; others' from WARNING."""
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )  # fmt: skip
    logging.getLogger("splitfedzip").setLevel(logging.INFO)


def _train(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..config import load_config
    from ..experiments.train import run_embedded, write_outputs
    from ..metrics.link import DEFAULT_LINK

    cfg = load_config(args.config, args.overrides)
    _log_to_stderr()
    out = Path(args.out)
    with logging_redirect_tqdm():  # log lines go above the progress bars, not through them
        result = run_embedded(
            cfg, progress=not args.no_progress, link=args.link or DEFAULT_LINK,
            checkpoints=out / "checkpoints", resume=args.resume,
        )  # fmt: skip
    write_outputs(cfg, result, out)
    print(json.dumps(result.summary, indent=2))
    files = "config.yaml,metrics.csv,history.csv,ledger.csv,summary.json,predictions.npz"
    print(f"wrote {out}/{{{files},checkpoints/}}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ..experiments.demo import demo_table, run_demo
    from ..metrics.link import DEFAULT_LINK

    out = Path(args.out)
    link = args.link or DEFAULT_LINK
    summaries = run_demo(out, args.overrides, progress=not args.no_progress, link=link)
    table = demo_table(summaries)
    (out / "table.txt").write_text(table + "\n")
    print(table)
    print(f"wrote {out}/{{{','.join(summaries)}}}/ and {out}/table.txt")
    return 0


def _variants(text: str) -> list[tuple[str, str]]:
    out = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        scheme, sep, codec = item.partition(":")
        if not sep or not scheme or not codec:
            raise UserError(f"--variants: {item!r} is not scheme:codec (e.g. fg:ae)")
        out.append((scheme, codec))
    if not out:
        raise UserError("--variants: give at least one scheme:codec")
    return out


def _sweep(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..experiments import sweep

    out = Path(args.out)
    pairs = _variants(args.variants)
    variants = [f"{s}-{c}" for s, c in pairs]
    if args.report:
        points = sweep.read_points(out / "curves.csv")
    else:
        lambdas = [float(x) for x in args.lambdas.split(",") if x.strip()]
        if not lambdas:
            raise UserError("--lambdas: give at least one value")
        # Every configuration is built (and checked) before the first run starts.
        configs = [
            load_config(args.config, [*args.overrides, f"scheme={s}", f"codec={c}", f"lambda={x}"])
            for s, c in pairs
            for x in lambdas
        ]
        out.mkdir(parents=True, exist_ok=True)
        points = sweep.run_sweep(configs, out, progress=not args.no_progress)
    anchor = args.anchor or variants[0]
    several = len({p["variant"] for p in points}) > 1
    bd = sweep.bd_table(points, anchor, args.method) if several else []
    if bd:
        sweep.write_csv(out / "bd.csv", bd)
    print(sweep.format_tables(points, bd))
    print(f"wrote {out}/curves.csv" + (f" and {out}/bd.csv" if bd else ""))
    return 0
