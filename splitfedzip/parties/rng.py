"""Random-number state owned by a party, so that parties sharing a process stay independent.

Codecs draw training noise from torch's global generator. When several parties share one
process (the embedded transport), each one swaps its own generator state in while it computes,
so a party draws the same numbers whether it runs alone in a process or beside others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class RngScope:
    """A private copy of torch's global CPU (and CUDA) generator state."""

    def __init__(self, seed: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._cpu = torch.get_rng_state()
        self._cuda = None
        if torch.cuda.is_available():
            with torch.random.fork_rng():
                torch.cuda.manual_seed_all(seed)
                self._cuda = torch.cuda.get_rng_state_all()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Run the body with this party's generator state."""
        saved_cpu = torch.get_rng_state()
        saved_cuda = torch.cuda.get_rng_state_all() if self._cuda is not None else None
        torch.set_rng_state(self._cpu)
        if self._cuda is not None:
            torch.cuda.set_rng_state_all(self._cuda)
        try:
            yield
        finally:
            self._cpu = torch.get_rng_state()
            torch.set_rng_state(saved_cpu)
            if saved_cuda is not None:
                self._cuda = torch.cuda.get_rng_state_all()
                torch.cuda.set_rng_state_all(saved_cuda)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with the global generator seeded, restoring it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
