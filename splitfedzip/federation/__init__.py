"""Federated averaging and the round bookkeeping around it."""

from .fedavg import fedavg
from .rounds import SUBMIT, VALIDATE, Event, Rounds

__all__ = ["SUBMIT", "VALIDATE", "Event", "Rounds", "fedavg"]
