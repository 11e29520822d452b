"""The ledger: one row for every frame that crosses between parties."""

from __future__ import annotations

import csv
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..federation.weights import uncoded_size
from ..wire import Frame, Kind, decode_frame, frame_size

COLUMNS = (
    "round", "epoch", "batch", "client", "split", "direction", "kind", "bytes", "est_bits",
    "phase", "wire_bytes", "uncoded_bytes",
)  # fmt: skip
_CODED_KINDS = (Kind.WEIGHTS, Kind.CODEC_SYNC)


@dataclass
class LedgerRow:
    """One frame as it crossed: ids from its header, its size, the codec's estimate."""

    round: int
    epoch: int
    batch: int
    client: int
    phase: str
    split: str
    direction: str
    kind: str
    bytes: int
    est_bits: float | None = None
    wire_bytes: int | None = None
    #: The frame's size had its weights crossed as float32 (``federation.weights_codec``):
    #: ``bytes`` for every frame but a coded weights or codec-sync frame.
    uncoded_bytes: int | None = None


def _uncoded(frame: Frame, size: int) -> int:
    """The frame's size with the float32 state its coded payload declares in its place."""
    if frame.header.kind not in _CODED_KINDS:
        return size
    declared = uncoded_size(frame.payload)
    return size if declared is None else size - len(frame.payload) + declared


def _frame_key(r: LedgerRow) -> tuple:
    """What tells one frame from another in both parties' ledgers."""
    return (r.client, r.direction, r.round, r.epoch, r.batch, r.phase, r.split, r.kind, r.bytes)


class Ledger:
    """Thread-safe list of :class:`LedgerRow`; written as ``ledger.csv``."""

    def __init__(self) -> None:
        self.rows: list[LedgerRow] = []
        self._lock = threading.Lock()

    def record_message(
        self,
        message: bytes,
        direction: str,
        *,
        estimates: dict[int, float] | None = None,
        wire_bytes: int | None = None,
    ) -> None:
        """Record every frame of a message; ``estimates`` maps frame index to est_bits."""
        pos, index, rows = 0, 0, []
        while pos < len(message):
            n = frame_size(message[pos:])
            frame = decode_frame(message[pos : pos + n])
            h, est = frame.header, (estimates or {}).get(index)
            rows.append(
                LedgerRow(
                    h.round, h.epoch, h.batch, h.client, h.phase.label, h.split.label,
                    direction, h.kind.label, n, est, None, _uncoded(frame, n),
                )
            )  # fmt: skip
            pos, index = pos + n, index + 1
        if rows and wire_bytes is not None:
            rows[0].wire_bytes = wire_bytes  # the transport's bytes for the whole message
        with self._lock:
            self.rows.extend(rows)

    def extend(self, rows: list[LedgerRow]) -> None:
        """Append rows recorded elsewhere (another process's ledger)."""
        with self._lock:
            self.rows.extend(rows)

    def write_csv(self, path: str | Path) -> None:
        """Write ``ledger.csv``."""
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for row in self.rows:
                w.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})

    def adopt_estimates(self, sender: Ledger) -> None:
        """Copy ``sender``'s est_bits onto the same frames as recorded here by their receiver
        (the codec's estimate is known to the sender only)."""
        known: dict[tuple, list[float]] = {}
        for r in sender.rows:
            if r.est_bits is not None:
                known.setdefault(_frame_key(r), []).append(r.est_bits)
        for r in self.rows:
            queue = known.get(_frame_key(r)) if r.est_bits is None else None
            if queue:
                r.est_bits = queue.pop(0)

    @staticmethod
    def read_csv(path: str | Path) -> Ledger:
        """Read a ``ledger.csv`` written by :meth:`write_csv`."""
        ledger = Ledger()
        types = {f.name: f.type for f in fields(LedgerRow)}
        with open(path, newline="") as f:
            for raw in csv.DictReader(f):
                vals = {}
                for k, v in raw.items():
                    t = types[k]
                    if v == "":
                        vals[k] = None if "None" in str(t) else ""
                    elif t in ("int", int) or str(t).startswith("int"):
                        vals[k] = int(v)
                    elif "float" in str(t):
                        vals[k] = float(v)
                    else:
                        vals[k] = v
                ledger.rows.append(LedgerRow(**vals))
        return ledger

    def total(
        self,
        kinds: tuple[Kind, ...] | None = None,
        phases: tuple[str, ...] | None = None,
        uncoded: bool = False,
    ) -> int:
        """Sum of frame bytes, filtered by frame kind and by phase (train, val, test);
        ``uncoded``: the sizes the frames had with the float32 weights exchange."""
        labels = None if kinds is None else {k.label for k in kinds}
        return sum(
            (r.uncoded_bytes if uncoded and r.uncoded_bytes is not None else r.bytes)
            for r in self.rows
            if (labels is None or r.kind in labels) and (phases is None or r.phase in phases)
        )
