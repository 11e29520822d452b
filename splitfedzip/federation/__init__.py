"""Federated averaging and the round bookkeeping around it."""

from .fedavg import fedavg
from .rounds import SUBMIT, VALIDATE, Event, Rounds
from .running import RunningAverage

__all__ = ["SUBMIT", "VALIDATE", "Event", "Rounds", "RunningAverage", "fedavg"]
