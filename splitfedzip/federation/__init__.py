"""Federated averaging."""

from .fedavg import fedavg

__all__ = ["fedavg"]
