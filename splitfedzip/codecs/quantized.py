"""``int``: uniform b-bit quantisation with per-tensor or per-channel range as side information.

Each group (the whole tensor, or one channel over batch and space) is mapped onto the 2^b
levels ``lo + q * step``, ``step = (hi - lo) / (2^b - 1)``, from its own minimum and maximum
(widened to take in 0), with ``lo`` moved by less than half a step so that one level is exactly
0: the affine quantisation of integer inference, whose zero point keeps ReLU zeros and small
gradients at 0. ``lo`` and ``step`` travel as float32. The levels are packed 8 // b to a byte,
in order, and the bytes coded with rANS under the message's own histogram (``histogram.py``):
the histogram of a byte is that of 8 // b neighbouring levels, which captures the runs of zeros
in features (measured in docs/codecs.md).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .base import CodecError
from .classic import ClassicCodec
from .histogram import Histogram, fit
from .streams import SymbolReader, SymbolWriter

Scale = Literal["tensor", "channel"]
SCALES: tuple[Scale, ...] = ("tensor", "channel")
#: Bit depths a level fits in one coder symbol for (and a byte, were it sent raw).
MAX_BITS = 8


@dataclass(frozen=True)
class Ranges:
    """Per-group quantiser ranges: the lowest level and the step between levels (float32)."""

    lo: Tensor
    step: Tensor

    def to_bytes(self) -> bytes:
        """``lo`` and ``step`` of each group as little-endian float32 pairs."""
        pairs = torch.stack([self.lo, self.step], dim=1).cpu().numpy().astype("<f4")
        return pairs.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, at: int, groups: int, codec: str) -> tuple[Ranges, int]:
        """``groups`` ranges from ``data[at:]``, and the offset after them."""
        end = at + 8 * groups
        if len(data) < end:
            raise CodecError(f"codec {codec!r}: payload too short for {groups} quantiser ranges")
        pairs = np.frombuffer(data, dtype="<f4", count=2 * groups, offset=at).reshape(groups, 2)
        pairs = torch.from_numpy(pairs.copy())
        return cls(pairs[:, 0].contiguous(), pairs[:, 1].contiguous()), end


def quantize(values: Tensor, groups: Tensor, count: int, bits: int) -> tuple[Tensor, Ranges]:
    """Levels (int64) of ``values`` (1-d), each in its group's range; ``count`` groups."""
    levels = (1 << bits) - 1
    lo = values.new_full((count,), math.inf).scatter_reduce(0, groups, values, "amin")
    hi = values.new_full((count,), -math.inf).scatter_reduce(0, groups, values, "amax")
    empty = torch.isinf(lo)  # a group with no values (top-k may keep none of a channel)
    lo, hi = torch.where(empty, 0.0, lo).clamp(max=0), torch.where(empty, 0.0, hi).clamp(min=0)
    step = (hi - lo) / levels
    safe = torch.where(step > 0, step, torch.ones_like(step))
    # Shift the levels so that one of them is exactly 0 (lo + zero * step == 0 in float32):
    # small gradients then round to 0 rather than to a level up to a step away.
    zero = torch.round(-lo / safe).clamp_(0, levels)
    lo = -(zero * step)
    q = torch.round((values - lo[groups]) / safe[groups]).clamp_(0, levels).long()
    return q, Ranges(lo, step)


def dequantize(q: Tensor, groups: Tensor, ranges: Ranges) -> Tensor:
    """``lo + q * step`` per group, in float32 (two separate roundings, as on every device)."""
    lo, step = ranges.lo.to(q.device), ranges.step.to(q.device)
    return lo[groups] + q.float() * step[groups]


def channel_groups(shape: tuple[int, ...], scale: Scale, device: torch.device) -> Tensor:
    """Group index of every element of a [B, C, H, W] tensor, flattened."""
    if scale == "tensor":
        return torch.zeros(math.prod(shape), dtype=torch.long, device=device)
    b, c, h, w = shape
    return torch.arange(c, device=device).view(1, c, 1).expand(b, c, h * w).reshape(-1)


def per_symbol(bits: int) -> int:
    """Levels packed into one coder symbol (a byte)."""
    return 8 // bits


def pack(q: Tensor, bits: int) -> Tensor:
    """Levels (1-d) packed ``per_symbol(bits)`` to a byte, the first in the low bits; the last
    byte is padded with level 0."""
    m = per_symbol(bits)
    q = torch.nn.functional.pad(q, (0, -q.numel() % m)).view(-1, m)
    shifts = torch.arange(0, bits * m, bits, device=q.device)
    return (q << shifts).sum(dim=1)


def unpack(symbols: Tensor, bits: int, count: int) -> Tensor:
    """The first ``count`` levels packed in ``symbols``."""
    m = per_symbol(bits)
    shifts = torch.arange(0, bits * m, bits, device=symbols.device)
    return ((symbols.view(-1, 1) >> shifts) & ((1 << bits) - 1)).reshape(-1)[:count]


def write_levels(writer: SymbolWriter, q: Tensor, bits: int) -> Histogram:
    """Pack ``q``, queue the bytes on ``writer``; returns their histogram table as sent."""
    symbols = pack(q, bits)
    table = fit(symbols)
    writer.write(symbols, torch.zeros_like(symbols), table.tables())
    return table


def read_levels(reader: SymbolReader, table: Histogram, bits: int, count: int) -> Tensor:
    """``count`` levels from ``reader``; :class:`CodecError` if a byte is not ``bits``-packed."""
    symbols = reader.read(torch.zeros(-(-count // per_symbol(bits)), dtype=torch.int32),
                          table.tables()).long()  # fmt: skip
    if int(symbols.min()) < 0 or int(symbols.max()) >= 1 << (bits * per_symbol(bits)):
        raise CodecError(f"codec {reader.codec!r}: a decoded byte does not hold {bits}-bit levels")
    return unpack(symbols, bits, count)


def check_bits(bits: int, codec: str) -> None:
    """Raise :class:`CodecError` for a bit depth outside 1..8."""
    if not 1 <= bits <= MAX_BITS:
        raise CodecError(f"codec {codec!r}: bits must be 1-{MAX_BITS}, got {bits}")


class IntCodec(ClassicCodec):
    """Uniform ``bits``-bit quantisation; payload: u8 bits, u8 scale (0 tensor, 1 channel),
    one (lo, step) float32 pair per group, the byte histogram, one rANS stream of the packed
    levels."""

    name = "int"

    def __init__(self, bits: int = 8, scale: Scale = "tensor") -> None:
        super().__init__()
        check_bits(bits, self.name)
        if scale not in SCALES:
            raise CodecError(f"codec 'int': scale must be one of {SCALES}, got {scale!r}")
        self.bits, self.scale = bits, scale

    def _code(self, x: Tensor, random: bool) -> tuple[bytes, Tensor, None]:
        shape = tuple(x.shape)
        groups = channel_groups(shape, self.scale, x.device)
        count = shape[1] if self.scale == "channel" else 1
        q, ranges = quantize(x.reshape(-1), groups, count, self.bits)
        writer = SymbolWriter()
        table = write_levels(writer, q, self.bits)
        head = struct.pack("<BB", self.bits, SCALES.index(self.scale))
        payload = head + ranges.to_bytes() + table.to_bytes() + writer.flush()
        return payload, dequantize(q, groups, ranges).reshape(shape), None

    def decompress(self, data: bytes, shape: tuple[int, ...]) -> Tensor:
        """Read the ranges and the histogram, decode the levels, dequantise."""
        self.check_shape(shape)
        if len(data) < 2:
            raise CodecError("codec 'int': payload too short for its header")
        bits, scale_id = struct.unpack_from("<BB", data)
        check_bits(bits, self.name)
        if scale_id >= len(SCALES):
            raise CodecError(f"codec 'int': unknown scale id {scale_id}")
        scale = SCALES[scale_id]
        count = shape[1] if scale == "channel" else 1
        ranges, at = Ranges.from_bytes(data, 2, count, self.name)
        table, at = Histogram.from_bytes(data, at, self.name)
        n = math.prod(shape)
        with SymbolReader(data[at:], self.name, symbols=-(-n // per_symbol(bits))) as reader:
            q = read_levels(reader, table, bits, n)
        groups = channel_groups(tuple(shape), scale, q.device)
        return dequantize(q, groups, ranges).reshape(shape)
