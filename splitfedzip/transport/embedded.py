"""The embedded transport: every party in one process, still talking only in bytes."""

from __future__ import annotations

from ..metrics.ledger import Ledger
from .base import Channel, Handler, TransportError


class EmbeddedChannel(Channel):
    """Calls the serving party's handler directly, passing nothing but ``bytes``.

    Each message is copied into a fresh ``bytes`` object on the way in and out, so no buffer
    is shared, and recorded in the ledger in both directions.
    """

    def __init__(self, handler: Handler, client: int, peer: str, ledger: Ledger) -> None:
        self._handler, self._client, self._peer, self._ledger = handler, client, peer, ledger
        self._closed = False

    async def request(self, message: bytes, estimates: dict[int, float] | None = None) -> bytes:
        """Deliver ``message`` to the handler and return its answer."""
        if self._closed:
            raise TransportError(f"channel to {self._peer} is closed")
        if not isinstance(message, bytes):
            raise TypeError(f"parties exchange bytes only, got {type(message).__name__}")
        self._ledger.record_message(message, f"client->{self._peer}", estimates=estimates)
        reply = await self._handler.handle(bytes(bytearray(message)), self._client)
        if not isinstance(reply.message, bytes):
            raise TypeError(f"{self._peer} answered with {type(reply.message).__name__}, not bytes")
        self._ledger.record_message(
            reply.message, f"{self._peer}->client", estimates=reply.estimates
        )
        return bytes(bytearray(reply.message))

    async def close(self) -> None:
        """Mark the channel closed."""
        self._closed = True
