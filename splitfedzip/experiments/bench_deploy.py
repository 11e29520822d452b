"""Training throughput of ``launch`` (every party a process, gRPC) over ``train`` (embedded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config
from .launch import launch
from .train import run_embedded, write_outputs

KEYS = ("train_batches", "train_batches_per_second", "wall_seconds", "test_mji", "bytes_split")


def bench_deploy(cfg: Config, out: str | Path, *, insecure: bool = False) -> dict[str, Any]:
    """Run ``cfg`` with train, then with launch; their summaries and the throughput ratio."""
    out = Path(out)
    embedded = run_embedded(cfg)
    write_outputs(cfg, embedded, out / "train")
    deployed = launch(cfg, out / "launch", insecure=insecure)
    runs = {"train": embedded.summary, "launch": deployed.summary}
    result: dict[str, Any] = {name: {k: s[k] for k in KEYS} for name, s in runs.items()}
    result["launch"]["transport"] = deployed.summary["transport"]
    result["ratio"] = (
        runs["launch"]["train_batches_per_second"] / runs["train"]["train_batches_per_second"]
    )
    return result


def format_result(result: dict[str, Any]) -> str:
    """Two lines, one per way of running, and the ratio."""
    lines = [f"{'run':<8} {'batches':>8} {'batches/s':>10} {'wall s':>8} {'test MJI':>9}"]
    for name in ("train", "launch"):
        r = result[name]
        lines.append(
            f"{name:<8} {r['train_batches']:>8} {r['train_batches_per_second']:>10.2f} "
            f"{r['wall_seconds']:>8.1f} {r['test_mji']:>9.4f}"
        )
    lines.append(f"launch / train throughput: {result['ratio']:.2f}")
    return "\n".join(lines)
