"""Many simulated clients in one process: peak memory and time per round against the number
of clients (``splitfedzip bench clients``).

Each client count runs in a fresh process (spawned), so that its peak resident set size is its
own; the run is an ordinary embedded run (``train``) at the configured scale.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from dataclasses import dataclass
from typing import Any

from ..config import Config, from_dict

#: The scale of the issue's measurement: 64x64 images, one round of one local epoch.
DEFAULT_OVERRIDES = (
    "data.image_size=64", "model.base_width=32", "train.rounds=1", "train.local_epochs=1",
    "train.batch_size=2", "train.device=cpu", "data.test_samples=2", "scheme=fg", "codec=ae",
    "lambda=10",
)  # fmt: skip


@dataclass(frozen=True)
class ClientsSetup:
    """Client counts to run, and how many images each client holds (train and validation)."""

    counts: tuple[int, ...] = (10, 100)
    images_per_client: int = 3
    threads: int = 1


def scaled(cfg: Config, clients: int, images_per_client: int) -> Config:
    """``cfg`` with ``clients`` iid clients of ``images_per_client`` generated images each."""
    raw = cfg.to_dict()
    raw["data"]["partition"] = {"kind": "iid", "clients": clients}
    raw["data"]["num_samples"] = clients * images_per_client
    return from_dict(raw)


def _one(raw: dict[str, Any], threads: int, queue: Any) -> None:
    """The child: one run; reports its figures and its peak RSS."""
    import torch

    from .train import run_embedded

    torch.set_num_threads(threads)
    cfg = from_dict(raw)
    tic = time.perf_counter()
    result = run_embedded(cfg)
    wall = time.perf_counter() - tic
    s = result.summary
    rounds = cfg.train.rounds
    trained = sum(len(r["participants"] or []) for r in s["rounds"])
    queue.put({
        "clients": s["clients"], "rounds": rounds, "clients_trained": trained,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_seconds": wall, "seconds_per_round": wall / rounds,
        "train_seconds_per_round": s["train_seconds"] / rounds,
        "train_batches": s["train_batches"],
    })  # fmt: skip


def bench_clients(cfg: Config, setup: ClientsSetup) -> list[dict[str, Any]]:
    """One row per client count: peak RSS (MB) and seconds per round of the whole run."""
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for n in setup.counts:
        run = scaled(cfg, n, setup.images_per_client)
        queue = ctx.Queue()
        child = ctx.Process(target=_one, args=(run.to_dict(), setup.threads, queue))
        child.start()
        row = queue.get()
        child.join()
        rows.append({"base_width": run.model.base_width, "scheme": run.scheme, **row})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows."""
    lines = [
        "| clients | trained per round | base width | scheme | peak RSS (MB) | s / round | "
        "training s / round |",
        "|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['clients_trained'] / r['rounds']:g} | {r['base_width']} | "
            f"{r['scheme']} | {r['peak_rss_mb']:,.0f} | {r['seconds_per_round']:.1f} | "
            f"{r['train_seconds_per_round']:.1f} |"
        )
    return "\n".join(lines)
