"""Per-message histograms: rANS tables for symbols no learned model predicts.

The classic codecs code integer symbols (quantisation levels, gaps between kept positions) with
CompressAI's rANS coder, like the learned codecs, but under the message's own empirical
distribution: the sender counts the symbols, quantises the counts to the coder's 16-bit
precision with CompressAI's ``pmf_to_quantized_cdf``, and sends those frequencies ahead of the
stream. Symbols past the table's last slot take the coder's escape (a 4-bit-nibble bypass
code), which keeps tables small for long-tailed symbols such as gaps.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import torch
from compressai._CXX import pmf_to_quantized_cdf
from torch import Tensor

from .base import CodecError
from .streams import Tables

#: The rANS coder's probability precision (CompressAI's ``entropy_coder_precision``).
PRECISION = 16
_HEAD = struct.Struct("<IH")  # offset (smallest symbol), number of frequencies


@dataclass(frozen=True)
class Histogram:
    """Quantised frequencies of the symbols ``offset``, ``offset + 1``, ..., and the escape."""

    offset: int
    freqs: tuple[int, ...]

    @property
    def size(self) -> int:
        """Bytes of the table as sent: offset, count, then one u16 per frequency."""
        return _HEAD.size + 2 * len(self.freqs)

    def tables(self) -> Tables:
        """The table as the rANS coder takes it (one CDF, index 0)."""
        cdf = [0]
        for f in self.freqs:
            cdf.append(cdf[-1] + f)
        return [cdf], [len(cdf)], [self.offset]

    def to_bytes(self) -> bytes:
        """``offset`` (u32), the number of frequencies (u16), the frequencies (u16 each)."""
        return _HEAD.pack(self.offset, len(self.freqs)) + struct.pack(
            f"<{len(self.freqs)}H", *self.freqs
        )

    @classmethod
    def from_bytes(cls, data: bytes, at: int, codec: str) -> tuple[Histogram, int]:
        """The table that starts at ``data[at]``, and the offset just after it."""
        if len(data) < at + _HEAD.size:
            raise CodecError(f"codec {codec!r}: payload too short for its symbol table")
        offset, n = _HEAD.unpack_from(data, at)
        end = at + _HEAD.size + 2 * n
        if n < 2 or len(data) < end:
            raise CodecError(f"codec {codec!r}: symbol table of {n} frequencies is cut short")
        freqs = struct.unpack_from(f"<{n}H", data, at + _HEAD.size)
        if sum(freqs) != 1 << PRECISION or 0 in freqs:
            raise CodecError(
                f"codec {codec!r}: symbol table frequencies do not sum to 2^{PRECISION}"
            )
        return cls(offset, freqs), end


def fit(symbols: Tensor, slots: int | None = None) -> Histogram:
    """The table of ``symbols`` (non-negative integers): one slot per value from the smallest
    to the largest, or to ``slots`` values at most, the rest escaped."""
    flat = symbols.reshape(-1).long()
    lo = int(flat.min())
    width = int(flat.max()) - lo + 1
    if slots is not None:
        width = min(width, slots)
    # Counts of the in-table values, then of the escaped ones (the coder's last slot).
    counts = torch.bincount((flat - lo).clamp(max=width), minlength=width + 1).double()
    cdf = pmf_to_quantized_cdf((counts / counts.sum()).tolist(), PRECISION)
    return Histogram(lo, tuple(b - a for a, b in zip(cdf[:-1], cdf[1:], strict=True)))
