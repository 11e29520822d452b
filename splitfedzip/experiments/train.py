"""``splitfedzip train``: a whole SplitFedZip run with every party in this process."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config, dump_config
from ..data import FederatedData, build_federated_data
from ..errors import UserError
from ..metrics.history import HISTORY_COLUMNS, epoch_history
from ..metrics.ledger import Ledger
from ..metrics.link import DEFAULT_LINK, link_time, parse_link
from ..metrics.summary import TRAINING, strict_json, summarize
from ..models import split_channels
from ..parties.client import Client, ClientResult
from ..parties.federation_server import FederationServer
from ..parties.main_server import MainServer
from ..transport.embedded import EmbeddedChannel
from ..wire import Kind
from .checkpoint import clear as clear_checkpoints
from .resume import EmbeddedCheckpoints, RoundTurns


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device: {name!r} requested but CUDA is not available")
    return torch.device(name)


@dataclass
class RunResult:
    """Everything a run produced."""

    summary: dict[str, Any]
    ledger: Ledger
    clients: list[ClientResult]
    #: Name -> state dict of the tested global model's parts, for ``checkpoints/``.
    checkpoints: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


@dataclass
class EmbeddedParties:
    """Every party of a run in this process, wired by embedded channels into one ledger."""

    data: FederatedData
    main: MainServer
    federation: FederationServer
    clients: list[Client]
    ledger: Ledger


def embedded_parties(cfg: Config, device: torch.device, progress: bool = False) -> EmbeddedParties:
    """Build the data and every party of ``cfg``; client 0 holds the test set."""
    torch.manual_seed(cfg.train.seed)
    data = build_federated_data(cfg.data, cfg.train.seed)
    num_classes = cfg.model.num_classes or data.num_classes
    ledger = Ledger()
    main = MainServer(cfg, num_classes, device)
    # The clients take turns in one event loop, each training its round while the others wait:
    # a round deadline would drop the ones whose turn had not come (see FederationServer).
    federation = FederationServer(cfg, num_classes, len(data.clients), deadlines=False)
    clients = [
        Client(
            cid, cfg, num_classes, cd.train, cd.val,
            EmbeddedChannel(main, cid, "main", ledger),
            EmbeddedChannel(federation, cid, "federation", ledger),
            device, test=data.test if cid == 0 else None, progress=progress,
        )
        for cid, cd in enumerate(data.clients)
    ]  # fmt: skip
    return EmbeddedParties(data, main, federation, clients, ledger)


def run_embedded(
    cfg: Config,
    progress: bool = False,
    link: str = DEFAULT_LINK,
    checkpoints: Path | None = None,
    resume: bool = False,
) -> RunResult:
    """Run every party in this process over the embedded transport; with ``checkpoints`` save
    every party at each round boundary there, and with ``resume`` continue from the last one."""
    start = time.perf_counter()
    device = resolve_device(cfg.train.device)
    p = embedded_parties(cfg, device, progress)
    # Clients take their rounds in turn, and every party is saved at each round boundary.
    saver = EmbeddedCheckpoints(cfg, p, checkpoints)
    RoundTurns(p.clients, cfg.train.rounds + 1, saver.on_boundary)
    restored = saver.restore() if resume else None
    if checkpoints is not None and restored is None:
        clear_checkpoints(checkpoints)

    async def run_all() -> list[ClientResult]:
        runs = [
            c.run(None if restored is None else (restored[0], restored[1][c.cid]))
            for c in p.clients
        ]
        tasks = [asyncio.create_task(run) for run in runs]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            # The first client that fails ends the run: stop the others and collect their
            # errors here, rather than have them reported again as the loop shuts down.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(run_all())
    summary = build_summary(cfg, p.ledger, results, len(p.data.test), link)
    summary["wall_seconds"] = time.perf_counter() - start
    summary["device"] = str(device)
    best = p.federation.best_round
    checkpoints = {
        "client_global": p.federation.globals[best], "server_global": p.main.globals[best]
    }  # fmt: skip
    return RunResult(summary, p.ledger, results, checkpoints)


def build_summary(
    cfg: Config,
    ledger: Ledger,
    results: list[ClientResult],
    test_images: int,
    link: str = DEFAULT_LINK,
) -> dict[str, Any]:
    """summary.json's content from the ledger and the tester's metrics; the traffic's time over
    ``link`` (e.g. "10mbit,20ms")."""
    tester = next(r for r in results if r.test is not None)
    size = cfg.data.image_size
    raw = test_images * split_channels(cfg.model.base_width) * (size // 2) ** 2 * 4
    summary = {"scheme": cfg.scheme, "codec": cfg.codec, "lambda": cfg.lmbda}
    summary |= summarize(ledger, tester.test, test_images * size * size, raw)
    summary["clients"] = len(results)
    # Throughput: every client's training batches over the time during which at least one
    # client was training (embedded clients take turns, deployed ones overlap).
    batches = sum(r.train_batches for r in results)
    seconds = covered_seconds([span for r in results for span in r.train_spans])
    summary["train_batches"] = batches
    summary["train_seconds"] = seconds
    summary["train_batches_per_second"] = batches / seconds if seconds > 0 else None
    summary["rounds"] = tester.rounds
    summary["events"] = tester.events
    summary["link"] = {"link": link, **link_time(ledger, parse_link(link), TRAINING)}
    return strict_json(summary)  # null, not NaN, for a class never seen


def covered_seconds(spans: list[tuple[float, float]]) -> float:
    """Length of the union of time intervals."""
    total, end = 0.0, -math.inf
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


#: Ledger frame kind -> its metrics.csv column.
BYTES_COLUMNS = {
    Kind.FEATURE.label: "bytes_features",
    Kind.GRADIENT.label: "bytes_gradients",
    Kind.WEIGHTS.label: "bytes_weights",
    Kind.CODEC_SYNC.label: "bytes_codec_sync",
    Kind.CONTROL.label: "bytes_control",
}

#: Ledger frame kinds that weights coding shrinks -> their metrics.csv column before coding.
UNCODED_COLUMNS = {
    Kind.WEIGHTS.label: "bytes_weights_uncoded",
    Kind.CODEC_SYNC.label: "bytes_codec_sync_uncoded",
}


def metrics_rows(result: RunResult) -> list[dict[str, Any]]:
    """One row per round: losses and the bytes that crossed in that round."""
    rounds: dict[int, dict[str, Any]] = {}
    participants = {rec["round"]: rec["participants"] for cr in result.clients for rec in cr.rounds}
    for cr in result.clients:
        for h in cr.history:
            row = rounds.setdefault(h["round"], {"round": h["round"], "_train": [], "_val": []})
            if "global_val_loss" in h:
                row.setdefault("_global", []).append(h["global_val_loss"])
            else:
                row["_train"].append(h["train_loss"])
                row["_val"].append(h["val_loss"])
    for row in result.ledger.rows:
        if row.phase == "test":
            continue
        # Every training and validation frame lands in its round's row (the last round's
        # validation of the final global model included), so the rows add up to the summary.
        rec = rounds.setdefault(row.round, {"round": row.round, "_train": [], "_val": []})
        key = BYTES_COLUMNS[row.kind]
        rec[key] = rec.get(key, 0) + row.bytes
        if row.kind in UNCODED_COLUMNS:
            key = UNCODED_COLUMNS[row.kind]
            rec[key] = rec.get(key, 0) + (row.uncoded_bytes or row.bytes)
    out = []
    for r in sorted(rounds):
        row = rounds[r]
        counts = {k: row.get(k, 0) for k in BYTES_COLUMNS.values()}
        out.append({
            "round": r,
            "participants": " ".join(map(str, participants.get(r) or [])),
            "train_loss": float(np.mean(row["_train"])) if row["_train"] else None,
            "local_val_loss": float(np.mean(row["_val"])) if row["_val"] else None,
            "global_val_loss": float(np.mean(row["_global"])) if row.get("_global") else None,
            **counts,
            "bytes_federation": counts["bytes_weights"] + counts["bytes_codec_sync"],
            "bytes_total": sum(counts.values()),
            **{k: row.get(k, 0) for k in UNCODED_COLUMNS.values()},
        })  # fmt: skip
    return out


def history_rows(cfg: Config, result: RunResult) -> list[dict[str, Any]]:
    """history.csv's rows: every client's local epochs with the BPP of each crossing."""
    histories = {cr.client: cr.history for cr in result.clients}
    return epoch_history(histories, result.ledger, cfg.data.image_size)


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)  # None is written as an empty field


def write_outputs(cfg: Config, result: RunResult, out: Path) -> None:
    """config.yaml, metrics.csv, history.csv, ledger.csv, summary.json, predictions.npz,
    checkpoints/."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    rows = metrics_rows(result)
    _write_csv(out / "metrics.csv", rows, list(rows[0]))
    _write_csv(out / "history.csv", history_rows(cfg, result), list(HISTORY_COLUMNS))
    result.ledger.write_csv(out / "ledger.csv")
    examples = next((r.examples for r in result.clients if r.examples is not None), None)
    if examples is not None:
        np.savez(out / "predictions.npz", **examples)
    summary = json.dumps(result.summary, indent=2, allow_nan=False)
    (out / "summary.json").write_text(summary + "\n")
    (out / "checkpoints").mkdir(exist_ok=True)
    for name, state in result.checkpoints.items():
        torch.save(state, out / "checkpoints" / f"{name}.pt")
