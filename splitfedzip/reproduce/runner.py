"""The queue of runs: reuse of finished ones, parallel jobs, progress lines."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import Config, dump_config
from ..experiments.train import run_embedded, write_outputs
from . import files
from .plan import Run

Status = Literal["trained", "reused", "failed", "missing"]
#: Keys a summary.json must have for its run to count as finished.
REQUIRED = ("test_mji", "bpp_s1", "bpp_s2", "bpp_t", "bytes_total")


@dataclass
class Outcome:
    """What became of one run of the queue."""

    run: Run
    status: Status
    seconds: float = 0.0
    error: str | None = None


def is_finished(run: Run, folder: Path) -> bool:
    """A complete summary.json beside a config.yaml equal to this run's resolved config."""
    try:
        same = (folder / "config.yaml").read_text() == dump_config(run.config)
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return same and all(k in summary for k in REQUIRED)


def cores() -> int:
    """CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def execute(config: Config, folder: str, threads: int | None = None) -> float:
    """Train one run and publish its folder whole; returns its seconds (worker entry point)."""
    if threads is not None:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    final = Path(folder)
    stage = files.staging(final)
    shutil.rmtree(stage, ignore_errors=True)  # left by a run that was killed
    result = run_embedded(config)
    write_outputs(config, result, stage)
    files.publish(stage, final)
    return time.perf_counter() - start


def attempt(config: Config, folder: str, threads: int | None = None) -> tuple[float, str | None]:
    """:func:`execute`, with a failure returned as the last line of its traceback."""
    start = time.perf_counter()
    try:
        execute(config, folder, threads)
    except Exception as e:  # a failed run is reported and the queue goes on
        return time.perf_counter() - start, _last_line(e)
    return time.perf_counter() - start, None


@dataclass
class Progress:
    """Progress lines: place in the queue, elapsed time, and an estimate of what remains."""

    total: int
    todo: list[Run]
    jobs: int
    log: Callable[[str], None]
    start: float = field(default_factory=time.perf_counter)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    done: int = 0

    def reused(self, place: int, run: Run) -> None:
        """A finished run found in place."""
        self.done += 1
        self.log(f"[{place}/{self.total}] {run.name}: reused")

    def finished(self, place: int, outcome: Outcome) -> None:
        """A run trained (or failed) just now."""
        self.done += 1
        run = outcome.run
        self.todo.remove(run)
        if outcome.status == "trained":
            self.seconds.setdefault(run.variant, []).append(outcome.seconds)
            what = f"{outcome.seconds:.1f} s"
        else:
            what = f"FAILED after {outcome.seconds:.1f} s: {outcome.error}"
        self.log(
            f"[{place}/{self.total}] {run.name}: {what} | {self.done} done, "
            f"elapsed {_clock(time.perf_counter() - self.start)}, {self.remaining()}"
        )

    def remaining(self) -> str:
        """Mean time of the finished runs of each variant (or of all), times what is left."""
        if not self.todo:
            return "nothing left"
        every = [s for v in self.seconds.values() for s in v]
        if not every:
            return "no estimate yet"
        left = sum(float(np.mean(self.seconds.get(r.variant, every))) for r in self.todo)
        return f"about {_clock(left / self.jobs)} left"


def _clock(seconds: float) -> str:
    """``1h02m``, ``12m03s`` or ``41s``."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def run_queue(
    runs: Sequence[Run],
    out: Path,
    jobs: int = 1,
    train: bool = True,
    log: Callable[[str], None] = print,
) -> list[Outcome]:
    """Run every unfinished run of ``runs`` under ``out``; outcomes in queue order.

    With ``jobs > 1`` runs go to that many worker processes, each with cores // jobs threads.
    With ``train=False`` nothing is trained and unfinished runs are reported as missing.
    """
    outcomes: dict[int, Outcome] = {}
    todo = []
    for i, run in enumerate(runs):
        if is_finished(run, out / run.path):
            outcomes[i] = Outcome(run, "reused")
        elif train:
            todo.append(i)
        else:
            outcomes[i] = Outcome(run, "missing")
    reused = sum(o.status == "reused" for o in outcomes.values())
    if train:
        jobs_text = f" in {jobs} jobs" if todo and jobs > 1 else ""
        log(f"{len(runs)} runs: {reused} finished already, {len(todo)} to train{jobs_text}")
    else:
        log(f"{len(runs)} runs: {reused} finished, {len(runs) - reused} not (nothing is trained)")
    progress = Progress(len(runs), [runs[i] for i in todo], max(1, min(jobs, len(todo))), log)
    for i, o in sorted(outcomes.items()):
        if o.status == "reused":
            progress.reused(i + 1, o.run)
    for i, outcome in _train(runs, todo, out, jobs):
        outcomes[i] = outcome
        progress.finished(i + 1, outcome)
    return [outcomes[i] for i in range(len(runs))]


def _train(runs: Sequence[Run], todo: list[int], out: Path, jobs: int):
    """Yield (index, outcome) as runs finish: in this process, or in a process pool."""
    if jobs <= 1 or len(todo) <= 1:
        for i in todo:
            yield i, _outcome(runs[i], *attempt(runs[i].config, str(out / runs[i].path)))
        return
    threads = max(1, cores() // jobs)
    order = pool_order(runs, todo)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=_context()) as pool:
        futures: dict[Future, int] = {
            pool.submit(attempt, runs[i].config, str(out / runs[i].path), threads): i for i in order
        }
        try:
            for future in as_completed(futures):
                i = futures[future]
                try:
                    yield i, _outcome(runs[i], *future.result())
                except Exception as e:  # the worker itself died (e.g. killed for memory)
                    yield i, Outcome(runs[i], "failed", 0.0, _last_line(e))
        finally:
            for future in futures:
                future.cancel()  # on Ctrl-C or an error: start nothing more


def pool_order(runs: Sequence[Run], todo: Sequence[int]) -> list[int]:
    """The order a pool starts ``todo`` (indexes into ``runs``): seed by seed, and within a
    seed the costliest first, so that the last minutes go to short runs, not to one Cheng run
    while the other workers sit idle."""
    return sorted(todo, key=lambda i: (runs[i].seed, *(-x for x in cost_rank(runs[i]))))


def cost_rank(run: Run) -> tuple[int, int]:
    """How costly a run is likely to be, to order a pool's queue: cheng2020-attn, then ae, then
    classic codecs, then NC; within a codec, the more crossings a scheme codes the costlier."""
    if run.variant == "nc":
        return (0, 0)
    return ({"cheng2020-attn": 3, "ae": 2}.get(run.config.codec, 1), len(run.config.scheme))


def _context() -> multiprocessing.context.BaseContext:
    """Fork workers from a server that imported the training code once (torch and CompressAI
    take seconds to import), where the platform has one; else spawn them."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _outcome(run: Run, seconds: float, error: str | None) -> Outcome:
    return Outcome(run, "failed" if error else "trained", seconds, error)


def _last_line(e: BaseException) -> str:
    """The last line of an exception's traceback: its type and message."""
    return traceback.format_exception_only(type(e), e)[-1].strip()
