"""What a run's traffic costs on a real link: serialisation at a bandwidth plus round trips."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..wire import Kind
from .ledger import Ledger

_RATE = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_SPEC = re.compile(r"^\s*([0-9.]+)\s*([a-z]+)\s*,\s*([0-9.]+)\s*([a-z]+)\s*$")
#: The frames a client's request message can start with: each such row is one round trip.
_OPENING = (Kind.CONTROL.label, Kind.FEATURE.label, Kind.GRADIENT.label)


@dataclass(frozen=True)
class Link:
    """A link's bandwidth (bits per second, each direction) and round-trip time (seconds)."""

    bits_per_second: float
    rtt_seconds: float


#: The link summary.json is computed for unless ``--link`` says otherwise.
DEFAULT_LINK = "10mbit,20ms"


def parse_link(text: str) -> Link:
    """``"10mbit,20ms"`` -> Link(10e6, 0.02); ValueError saying what is wrong."""
    m = _SPEC.match(text.lower())
    if not m or m[2] not in _RATE or m[4] not in _TIME:
        raise ValueError(
            f"{text!r}: expected BANDWIDTH,RTT such as 10mbit,20ms (bandwidth in "
            f"{'/'.join(_RATE)}, round trip in {'/'.join(_TIME)})"
        )
    try:
        rate, rtt = float(m[1]) * _RATE[m[2]], float(m[3]) * _TIME[m[4]]
    except ValueError:
        raise ValueError(f"{text!r}: {m[1]!r} or {m[3]!r} is not a number") from None
    if rate <= 0:
        raise ValueError(f"{text!r}: the bandwidth must be > 0")
    return Link(rate, rtt)


def link_time(ledger: Ledger, link: Link, phases: tuple[str, ...]) -> dict[str, float | int | str]:
    """Seconds the frames of ``phases`` take over ``link``, one exchange after another.

    Every request-answer exchange costs one round trip plus both messages' bytes at the
    link's bandwidth; no computation overlaps the transfers and no two clients share the
    link at once (the embedded runtime's order), so it is the time spent on the link alone.
    """
    rows = [r for r in ledger.rows if r.phase in phases]
    up = sum(r.bytes for r in rows if r.direction.startswith("client->"))
    down = sum(r.bytes for r in rows if not r.direction.startswith("client->"))
    trips = sum(1 for r in rows if r.direction.startswith("client->") and r.kind in _OPENING)
    serialisation = 8 * (up + down) / link.bits_per_second
    return {
        "bits_per_second": link.bits_per_second,
        "rtt_seconds": link.rtt_seconds,
        "round_trips": trips,
        "seconds": serialisation + trips * link.rtt_seconds,
        "seconds_serialisation": serialisation,
        "seconds_round_trips": trips * link.rtt_seconds,
    }
