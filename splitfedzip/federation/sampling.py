"""Client sampling per round, as in FedAvg: a seeded draw of the clients that train."""

from __future__ import annotations

import random
from collections.abc import Iterable


def sample_size(spec: float | int, members: int) -> int:
    """How many of ``members`` clients train: ``spec`` clients (an integer >= 1) or that
    fraction of them (0 < spec < 1), at least one and at most all."""
    if isinstance(spec, int) and spec >= 1:
        k = spec
    elif 0 < spec < 1:
        k = round(spec * members)
    else:
        raise ValueError(f"federation.clients_per_round: {spec!r} is neither >= 1 nor in (0, 1)")
    return max(1, min(k, members))


def sample_clients(members: Iterable[int], spec: float | int, seed: int, r: int) -> list[int]:
    """The clients drawn to train in round ``r``: the same for a given seed and round."""
    pool = sorted(members)
    if not pool:
        return []
    # A string seed is hashed deterministically (unlike hash() of a tuple across processes).
    rng = random.Random(f"splitfedzip-sample-{seed}-{r}")
    return sorted(rng.sample(pool, sample_size(spec, len(pool))))
