"""Federated averaging of state dicts."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def fedavg(states: Sequence[dict[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    """Average state dicts weighted by ``weights`` (e.g. training-sample counts).

    Integer entries (BatchNorm's batch counters) are averaged and rounded back to integers.
    """
    if not states:
        raise ValueError("fedavg: no states to average")
    if len(states) != len(weights):
        raise ValueError(f"fedavg: {len(states)} states but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("fedavg: weights must sum to a positive number")
    keys = list(states[0])
    for i, s in enumerate(states[1:], 1):
        if list(s) != keys:
            missing = set(keys) ^ set(s)
            raise ValueError(f"fedavg: state {i} has different keys: {sorted(missing)[:5]}")
    out = {}
    for k in keys:
        acc = sum(s[k].double() * (w / total) for s, w in zip(states, weights, strict=True))
        ref = states[0][k]
        out[k] = acc.round().to(ref.dtype) if not ref.is_floating_point() else acc.to(ref.dtype)
    return out
