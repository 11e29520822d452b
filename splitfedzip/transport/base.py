"""What a transport provides: a client's channel to a serving party, and that party's handler.

Clients initiate every exchange (hospitals sit behind firewalls): a client sends a request
message (one or more frames, back to back) and gets a response message. Serving parties (main
server, federation server) implement :class:`Handler`. Party code sees nothing else, so the
same parties run over the embedded transport and over the network.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ..errors import RunFailure


class TransportError(RunFailure):
    """A peer went away, refused the message, or did not answer in time."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        #: The network's status name where it gave one (e.g. ``UNAVAILABLE``).
        self.status = status


@dataclass
class Reply:
    """A serving party's answer, with the est_bits of its frames for the sender's ledger."""

    message: bytes = b""
    estimates: dict[int, float] = field(default_factory=dict)


class Handler(ABC):
    """A serving party: answers one request message from one client."""

    @abstractmethod
    async def handle(self, request: bytes, client: int) -> Reply:
        """Answer ``request`` from ``client`` (an empty answer is allowed)."""

    async def disconnected(self, client: int) -> None:  # noqa: B027 - optional hook
        """``client``'s connection ended without it saying goodbye (it died or was cut off)."""


class Channel(ABC):
    """A client's connection to one serving party."""

    @abstractmethod
    async def request(self, message: bytes, estimates: dict[int, float] | None = None) -> bytes:
        """Send a message and wait for the answer; ``estimates`` feed the ledger's est_bits."""

    async def close(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Release the connection."""
