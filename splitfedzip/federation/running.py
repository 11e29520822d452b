"""FedAvg as a running weighted sum: one accumulator however many clients take part."""

from __future__ import annotations

import torch
from torch import Tensor


class RunningAverage:
    """Adds each client's state as it arrives (weighted by its sample count); holds one float64
    accumulator per tensor, never the submitted states themselves.

    The sum runs in float64 and is divided once at the end; integer entries (BatchNorm's
    counters) are rounded back, as :func:`fedavg` does.
    """

    def __init__(self) -> None:
        self._acc: dict[str, Tensor] | None = None
        self._dtypes: dict[str, torch.dtype] = {}
        self.total = 0.0
        self.clients: list[int] = []

    def add(self, client: int, state: dict[str, Tensor], weight: float) -> None:
        """Fold ``client``'s ``state`` in with ``weight``; a client counts once."""
        if client in self.clients:
            raise ValueError(f"client {client} was already averaged into this round")
        if weight <= 0:
            raise ValueError(f"client {client}: weight {weight} must be positive")
        if self._acc is None:
            self._acc = {k: v.detach().double() * weight for k, v in state.items()}
            self._dtypes = {k: v.dtype for k, v in state.items()}
        else:
            if list(state) != list(self._acc):
                missing = set(self._acc) ^ set(state)
                raise ValueError(f"client {client}: keys differ: {sorted(missing)[:5]}")
            for k, v in state.items():
                self._acc[k].add_(v.detach().double(), alpha=weight)
        self.total += float(weight)
        self.clients.append(client)

    def result(self) -> dict[str, Tensor]:
        """The weighted mean of every state added, in the states' dtypes."""
        if self._acc is None:
            raise ValueError("running average: no states to average")
        out = {}
        for k, acc in self._acc.items():
            mean, dtype = acc / self.total, self._dtypes[k]
            out[k] = mean.to(dtype) if dtype.is_floating_point else mean.round().to(dtype)
        return out
