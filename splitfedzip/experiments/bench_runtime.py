"""Time per training batch of each scheme and codec, real coding included, as ratios to nc."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..config import Config
from ..errors import UserError
from ..metrics.ledger import Ledger
from ..parties.client import Client
from ..parties.messages import Ids
from ..wire import Kind
from .train import embedded_parties, resolve_device


@dataclass(frozen=True)
class RuntimeSetup:
    """What to time: the run configuration's scale, and which schemes and codecs."""

    schemes: tuple[str, ...] = ("nc", "f", "fg")
    codecs: tuple[str, ...] = ("ae", "cheng2020-attn")
    warmup: int = 3  # untimed batches first: allocator, codec snapshots, Adam state
    batches: int = 8  # timed batches per repeat
    repeats: int = 3  # passes over every variant, interleaved, so drift hits them alike
    threads: int = 1  # see bench codecs: stable on shared cores


@dataclass
class _Variant:
    name: tuple[str, str]
    client: Client
    ledger: Ledger
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    times: list[float]
    next: int = 0


def variants(cfg: Config, setup: RuntimeSetup) -> list[Config]:
    """nc once, then every compressed scheme with every codec."""
    out = [replace(cfg, scheme="nc")] if "nc" in setup.schemes else []
    for scheme in (s for s in setup.schemes if s != "nc"):
        out += [replace(cfg, scheme=scheme, codec=codec) for codec in setup.codecs]
    return out


async def _prepare(cfg: Config, device: torch.device) -> _Variant:
    """Client 0 with a main and a federation server, at the start of round 0."""
    parties = embedded_parties(cfg, device)
    client, ledger, own = parties.clients[0], parties.ledger, parties.data.clients[0]
    await client.join()
    await client.begin_round(Ids(client=0))
    loader = DataLoader(own.train, batch_size=cfg.train.batch_size)
    batches = [(x, y) for x, y in loader if len(x) == cfg.train.batch_size]
    if not batches:
        raise UserError("bench runtime: client 0 has no full training batch; add data")
    name = ("nc", "-") if cfg.scheme == "nc" else (cfg.scheme, cfg.codec)
    return _Variant(name, client, ledger, batches, [])


async def _time(v: _Variant, n: int, device: torch.device, keep: bool) -> None:
    for _ in range(n):
        x, y = v.batches[v.next % len(v.batches)]
        ids = Ids(batch=v.next, epoch=1, client=0)
        v.next += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tic = time.perf_counter()
        await v.client.train_batch(ids, x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if keep:
            v.times.append(time.perf_counter() - tic)


def bench_runtime(cfg: Config, setup: RuntimeSetup) -> list[dict[str, Any]]:
    """Median seconds per training batch of every variant, timed in one interleaved run."""
    device = resolve_device(cfg.train.device)
    threads = torch.get_num_threads()
    torch.set_num_threads(setup.threads)
    try:
        return asyncio.run(_bench(cfg, setup, device))
    finally:
        torch.set_num_threads(threads)


async def _bench(cfg: Config, setup: RuntimeSetup, device: torch.device) -> list[dict[str, Any]]:
    runs = [await _prepare(c, device) for c in variants(cfg, setup)]
    for v in runs:
        await _time(v, setup.warmup, device, keep=False)
    for v in runs:
        v.ledger.rows.clear()  # count the bytes of the timed batches only
    for _ in range(setup.repeats):
        for v in runs:
            await _time(v, setup.batches, device, keep=True)
    base = statistics.median(runs[0].times) if runs[0].name[0] == "nc" else None
    rows = []
    for v in runs:
        ms = statistics.median(v.times) * 1e3
        split = sum(
            r.bytes for r in v.ledger.rows if r.kind in (Kind.FEATURE.label, Kind.GRADIENT.label)
        )
        rows.append({
            "scheme": v.name[0], "codec": v.name[1], "batches": len(v.times),
            "ms_per_batch": ms, "ratio_to_nc": None if base is None else ms / (base * 1e3),
            "split_bytes_per_batch": split / len(v.times),
        })  # fmt: skip
    return rows


def format_rows(rows: list[dict[str, Any]], cfg: Config, setup: RuntimeSetup) -> str:
    """A fixed-width table with a one-line description of the set-up."""
    head = (
        f"{cfg.data.image_size}x{cfg.data.image_size} input, width {cfg.model.base_width}, "
        f"batch {cfg.train.batch_size}, latent {cfg.codec_options.latent_channels}, "
        f"{setup.threads} thread(s), median of {setup.repeats}x{setup.batches} batches"
    )
    title = f"{'scheme':<7} {'codec':<15} {'ms/batch':>9} {'x nc':>6} {'bytes/batch':>12}"
    lines = [head, "", title]
    for r in rows:
        ratio = "" if r["ratio_to_nc"] is None else f"{r['ratio_to_nc']:.2f}"
        lines.append(
            f"{r['scheme']:<7} {r['codec']:<15} {r['ms_per_batch']:>9.1f} {ratio:>6} "
            f"{r['split_bytes_per_batch']:>12,.0f}"
        )
    return "\n".join(lines)
