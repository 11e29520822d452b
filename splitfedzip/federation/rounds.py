"""Who takes part in which round: membership, the barriers that close each round, and the
events (a client dropped, timed out, came back) that change them.

A client is *expected* in round ``r`` when it is a member whose first round is at most ``r``.
A barrier (the submissions of round ``r``, or its validation reports) closes as soon as every
expected client has arrived. Dropping a client (its connection was lost, or it missed a
deadline) removes it from the members, so the barriers stop waiting for it; a client that joins
again, or arrives after its barrier closed, is a member again from the next round on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUBMIT, VALIDATE = "submit", "validate"


@dataclass(frozen=True)
class Event:
    """A change of membership, for the run's record."""

    round: int
    client: int
    event: str  # joined, rejoined, dropped, timeout, late, refused
    detail: str = ""


@dataclass
class Barrier:
    """One value per client for one round."""

    received: dict[int, Any] = field(default_factory=dict)
    closed: bool = False


class Rounds:
    """Membership of the federation and the per-round barriers (no I/O, no clock)."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        #: member -> the first round it is expected in; every configured client starts in round 0.
        self.first: dict[int, int] = {c: 0 for c in range(clients)}
        self.joined: set[int] = set()
        self.events: list[Event] = []
        self.barriers: dict[tuple[str, int], Barrier] = {}
        #: round -> the clients drawn to train in it (client sampling); absent: every member
        self.sampled: dict[int, set[int]] = {}

    def expected(self, r: int) -> set[int]:
        """The members a barrier of round ``r`` waits for."""
        return {c for c, first in self.first.items() if first <= r}

    def join(self, client: int, in_progress: int) -> int:
        """Admit ``client`` while round ``in_progress`` trains; returns its first round."""
        if not 0 <= client < self.clients:
            raise ValueError(f"client {client}: this federation has clients 0..{self.clients - 1}")
        if client not in self.joined and in_progress == 0:
            start = 0  # a first join before round 0 closed: the client is waited for
        else:
            # Rejoining mid-round would hold up a round that the others are finishing.
            start = in_progress + 1
            kind = "rejoined" if client in self.joined else "joined"
            self.events.append(Event(start, client, kind, f"takes part from round {start}"))
        self.joined.add(client)
        self.first[client] = start
        return start

    def drop(self, client: int, r: int, event: str, detail: str) -> None:
        """Stop waiting for ``client`` (from round ``r`` on) and record why."""
        if self.first.pop(client, None) is not None:
            self.events.append(Event(r, client, event, detail))

    def arrive(self, kind: str, r: int, client: int, value: Any) -> bool:
        """Record ``client``'s value at barrier (kind, r); False when that barrier had closed."""
        barrier = self.barriers.setdefault((kind, r), Barrier())
        if barrier.closed:
            self.first[client] = r + 1
            self.events.append(
                Event(r, client, "late", f"{kind} after round {r} closed; expected from {r + 1}")
            )
            return False
        barrier.received[client] = value
        return True

    def missing(self, kind: str, r: int) -> set[int]:
        """Expected clients that have not arrived at barrier (kind, r)."""
        expected = self.expected(r)
        if kind == SUBMIT and r in self.sampled:
            expected &= self.sampled[r]
        return expected - set(self.barriers[kind, r].received)

    def ready(self) -> list[tuple[str, int]]:
        """Open barriers that every expected client has reached, in round order."""
        return sorted(
            (key for key, b in self.barriers.items() if not b.closed and not self.missing(*key)),
            key=lambda key: (key[1], key[0]),
        )

    def close(self, kind: str, r: int) -> dict[int, Any]:
        """Close barrier (kind, r); returns the values received, by client."""
        barrier = self.barriers[kind, r]
        barrier.closed = True
        values, barrier.received = barrier.received, {}
        return values
