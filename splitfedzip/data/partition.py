"""Division of a sample pool among clients, and per-client train/validation splits."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

from ..config import PartitionConfig

MIN_PER_CLIENT = 2  # one training and one validation sample at the very least
_DIRICHLET_TRIES = 100


def partition_indices(
    n: int,
    cfg: PartitionConfig,
    seed: int | Sequence[int],
    strata: Sequence[Hashable] | None = None,
) -> list[list[int]]:
    """Split ``range(n)`` among clients by ``cfg.kind``; ``strata`` keys drive ``dirichlet``."""
    rng = np.random.default_rng(seed)
    if cfg.kind == "counts":
        counts = list(cfg.counts or [])
        if not counts:
            raise ValueError("partition kind 'counts' needs a non-empty list of counts")
        if sum(counts) > n:
            raise ValueError(f"partition counts sum to {sum(counts)} but only {n} samples exist")
        perm = rng.permutation(n)
        bounds = np.cumsum([0, *counts])
        return [sorted(perm[a:b].tolist()) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    clients = cfg.clients
    if n < MIN_PER_CLIENT * clients:
        raise ValueError(f"{n} samples cannot give {clients} clients {MIN_PER_CLIENT} each")
    if cfg.kind == "iid":
        return [sorted(s.tolist()) for s in np.array_split(rng.permutation(n), clients)]
    if cfg.kind == "dirichlet":
        if strata is None or len(strata) != n:
            got = "none" if strata is None else len(strata)
            raise ValueError(
                f"dirichlet partition needs one stratum key per sample ({n}), got {got}"
            )
        return _dirichlet(strata, clients, cfg.alpha, rng)
    raise ValueError(f"unknown partition kind {cfg.kind!r}")


def _dirichlet(
    strata: Sequence[Hashable], clients: int, alpha: float, rng: np.random.Generator
) -> list[list[int]]:
    """Label-skew split: each stratum divided among clients by proportions ~ Dir(alpha)."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(strata):  # first-appearance order keeps this deterministic
        groups.setdefault(key, []).append(i)
    for _ in range(_DIRICHLET_TRIES):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for members in groups.values():
            shuffled = rng.permutation(members)
            cuts = (np.cumsum(rng.dirichlet([alpha] * clients))[:-1] * len(members)).astype(int)
            for part, chunk in zip(parts, np.split(shuffled, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(map(len, parts)) >= MIN_PER_CLIENT:
            break
    # Small alpha can keep starving a client: top it up from the largest one.
    while min(map(len, parts)) < MIN_PER_CLIENT:
        small = min(range(clients), key=lambda c: len(parts[c]))
        large = max(range(clients), key=lambda c: len(parts[c]))
        parts[small].append(parts[large].pop(int(rng.integers(len(parts[large])))))
    return [sorted(p) for p in parts]


def segmentation_strata(masks: Iterable[np.ndarray], num_classes: int, bins: int = 4) -> list[int]:
    """Stratum per mask: dominant foreground class, or foreground-area quantile when binary."""
    masks = [np.asarray(m) for m in masks]
    if num_classes == 2:
        fractions = np.array([float((m > 0).mean()) for m in masks])
        edges = np.quantile(fractions, np.linspace(0, 1, bins + 1)[1:-1]) if masks else []
        return np.searchsorted(edges, fractions, side="right").tolist()
    strata = []
    for m in masks:
        counts = np.bincount(m.ravel(), minlength=num_classes)[1:]
        strata.append(int(counts.argmax()) + 1 if counts.any() else 0)
    return strata


def train_val_split(
    indices: Sequence[int], val_fraction: float, seed: int | Sequence[int]
) -> tuple[list[int], list[int]]:
    """Shuffle and split into (train, val): ceil(fraction * n) validation, at least 1 of each."""
    n = len(indices)
    if n < 2:
        raise ValueError(f"a client needs at least 2 samples for train and validation, got {n}")
    # The tolerance stops float error turning e.g. 0.15 * 240 = 36.000...01 into 37.
    n_val = min(max(math.ceil(n * val_fraction - 1e-9), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    picked = [int(indices[i]) for i in perm]
    return sorted(picked[n_val:]), sorted(picked[:n_val])
