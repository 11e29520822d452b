"""``topk`` and ``randtopk``: the k largest-magnitude values of each batch element.

Each element keeps k = round(fraction * C*H*W) values (at least one). Positions, in the
element's flattened C, H, W order, are delta-coded: the gaps between consecutive kept
positions go through rANS under the message's histogram, whose table stops at
``GAP_SLOTS`` values, longer gaps taking the coder's escape. Measured on S1 features and
gradients this beats a bitmap at every fraction from 0.1 % to 50 % (docs/codecs.md), so there
is no switch. Values are float16 (after ``fp16``'s power-of-two scale) or quantised like
``int``.

``randtopk`` is the randomised top-k of Zheng et al. (IJCAI 2023): in training it draws the k
positions without replacement, the top k with probability (1 - alpha) / k each and the others
alpha / (n - k) each, so that entries outside the top k get gradient too; evaluation keeps the
plain top k.
"""

from __future__ import annotations

import math
import struct

import torch
from torch import Tensor

from .base import CodecError
from .classic import ClassicCodec
from .histogram import Histogram, fit
from .precision import from_half, half_bytes, half_from_bytes, half_shift, to_half
from .quantized import (
    SCALES,
    Ranges,
    Scale,
    check_bits,
    dequantize,
    per_symbol,
    quantize,
    read_levels,
    write_levels,
)
from .streams import SymbolReader, SymbolWriter

#: Table size for gaps (measured: 64 beats 16 and 256 at 0.1-50 % kept, docs/codecs.md).
GAP_SLOTS = 64
_HEAD = struct.Struct("<IB")  # k per element, value bits (0: float16)


def kept(fraction: float, n: int) -> int:
    """Values each element keeps: round(fraction * n), within 1..n."""
    return max(1, min(n, math.floor(fraction * n + 0.5)))


class TopKCodec(ClassicCodec):
    """Top-k sparsification; payload: u32 k, u8 value bits (0: float16), the gap table, the
    values part, then one rANS stream (every element's gaps, then the packed value levels).

    Values part: float16 values: i8 exponent and B*k float16; quantised: u8 scale (0 tensor,
    1 channel), one (lo, step) float32 pair per group and the table of the packed levels.
    """

    name = "topk"
    #: Probability mass randtopk gives the entries outside the top k (0: plain top-k).
    alpha = 0.0

    def __init__(
        self, fraction: float = 0.1, value_bits: int | None = None, scale: Scale = "tensor"
    ) -> None:
        super().__init__()
        if not 0 < fraction <= 1:
            raise CodecError(f"codec {self.name!r}: fraction must be in (0, 1], got {fraction}")
        if value_bits is not None:
            check_bits(value_bits, self.name)
        if scale not in SCALES:
            raise CodecError(f"codec {self.name!r}: scale must be one of {SCALES}, got {scale!r}")
        self.fraction, self.value_bits, self.scale = fraction, value_bits, scale

    def select(self, flat: Tensor, k: int, random: bool) -> Tensor:
        """Kept positions of each row of ``flat`` [B, n], ascending."""
        top = flat.abs().topk(k, dim=1).indices
        n = flat.shape[1]
        if random and self.alpha > 0 and k < n:
            weights = torch.full_like(flat, self.alpha / (n - k))
            weights.scatter_(1, top, (1 - self.alpha) / k)
            top = torch.multinomial(weights, k, replacement=False)
        return top.sort(dim=1).values

    def _code(self, x: Tensor, random: bool) -> tuple[bytes, Tensor, Tensor]:
        shape = tuple(x.shape)
        flat = x.reshape(shape[0], -1)
        k = kept(self.fraction, flat.shape[1])
        idx = self.select(flat, k, random)
        values = flat.gather(1, idx)
        gaps = torch.diff(idx, dim=1, prepend=idx.new_full((shape[0], 1), -1)) - 1
        gap_table = fit(gaps, GAP_SLOTS)
        writer = SymbolWriter()
        writer.write(gaps, torch.zeros_like(gaps), gap_table.tables())
        if self.value_bits is None:
            shift = half_shift(values)
            h = to_half(values, shift)
            part, v_hat = struct.pack("<b", shift) + half_bytes(h), from_half(h, shift)
        else:
            groups, count = self._groups(idx, shape)
            q, ranges = quantize(values.reshape(-1), groups, count, self.value_bits)
            table = write_levels(writer, q, self.value_bits)
            part = struct.pack("<B", SCALES.index(self.scale)) + ranges.to_bytes()
            part += table.to_bytes()
            v_hat = dequantize(q, groups, ranges).reshape(idx.shape)
        head = _HEAD.pack(k, self.value_bits or 0) + gap_table.to_bytes()
        x_hat = torch.zeros_like(flat).scatter_(1, idx, v_hat).reshape(shape)
        keep = torch.zeros_like(flat).scatter_(1, idx, 1.0).reshape(shape)
        return head + part + writer.flush(), x_hat, keep

    def _groups(
        self, idx: Tensor, shape: tuple[int, ...], scale: Scale | None = None
    ) -> tuple[Tensor, int]:
        """Quantiser group of each kept value (its channel, or 0) and the number of groups."""
        if (scale or self.scale) == "tensor":
            return torch.zeros(idx.numel(), dtype=torch.long, device=idx.device), 1
        return (idx // (shape[2] * shape[3])).reshape(-1), shape[1]

    def decompress(self, data: bytes, shape: tuple[int, ...]) -> Tensor:
        """Read k and the tables, decode positions and values, scatter them into zeros."""
        self.check_shape(shape)
        b, n = shape[0], math.prod(shape[1:])
        if len(data) < _HEAD.size:
            raise CodecError(f"codec {self.name!r}: payload too short for its header")
        k, bits = _HEAD.unpack_from(data)
        if not 1 <= k <= n:
            raise CodecError(f"codec {self.name!r}: k = {k} for {n} values per element")
        gap_table, at = Histogram.from_bytes(data, _HEAD.size, self.name)
        if bits == 0:
            if len(data) < at + 1 + 2 * b * k:
                raise CodecError(f"codec {self.name!r}: payload too short for {b * k} values")
            (shift,) = struct.unpack_from("<b", data, at)
            v_hat = from_half(half_from_bytes(data, at + 1, b * k), shift).reshape(b, k)
            at += 1 + 2 * b * k
        else:
            check_bits(bits, self.name)
            if len(data) < at + 1 or data[at] >= len(SCALES):
                raise CodecError(f"codec {self.name!r}: payload lacks a valid scale id")
            scale = SCALES[data[at]]
            count = shape[1] if scale == "channel" else 1
            ranges, at = Ranges.from_bytes(data, at + 1, count, self.name)
            table, at = Histogram.from_bytes(data, at, self.name)
        symbols = b * k + (-(-b * k // per_symbol(bits)) if bits else 0)
        with SymbolReader(data[at:], self.name, symbols=symbols) as reader:
            zeros = torch.zeros(b, k, dtype=torch.int32)
            gaps = reader.read(zeros, gap_table.tables()).long()
            idx = torch.cumsum(gaps + 1, dim=1) - 1
            if int(gaps.min()) < 0 or int(idx[:, -1].max()) >= n:
                raise CodecError(f"codec {self.name!r}: decoded positions fall outside the tensor")
            if bits:
                q = read_levels(reader, table, bits, b * k)
                groups, _ = self._groups(idx, shape, scale)
                v_hat = dequantize(q, groups, ranges).reshape(b, k)
        return torch.zeros(b, n).scatter_(1, idx, v_hat).reshape(shape)


class RandTopKCodec(TopKCodec):
    """Randomised top-k (Zheng et al., IJCAI 2023); the payload is ``topk``'s."""

    name = "randtopk"

    def __init__(
        self,
        fraction: float = 0.1,
        value_bits: int | None = None,
        scale: Scale = "tensor",
        alpha: float = 0.1,
    ) -> None:
        super().__init__(fraction, value_bits, scale)
        if not 0 <= alpha < 1:
            raise CodecError(f"codec 'randtopk': alpha must be in [0, 1), got {alpha}")
        self.alpha = alpha
