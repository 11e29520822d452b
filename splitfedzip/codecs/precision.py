"""``fp16`` and ``bf16``: the tensor in half precision.

float16 keeps 10 mantissa bits but only five exponent bits: its smallest normal value is
6.1e-5, below which precision falls off, and split gradients (about 1e-6 and smaller) would
lose most of theirs or flush to zero. So ``fp16`` first scales the tensor by a power of two,
which is exact, putting its largest magnitude just under 2^15, and sends the exponent (one
signed byte) ahead of the values; this is the loss scaling of mixed-precision training
(Micikevicius et al., 2018) done per message. bfloat16 has float32's exponent range and needs
none.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import torch
from torch import Tensor

from .base import CodecError
from .classic import ClassicCodec

#: The largest magnitude is scaled into [2^14, 2^15): float16 holds up to 65504.
_TOP = 15
#: Scales stay powers of two that float32 holds as normal numbers.
_MAX_SHIFT = 126


def half_shift(x: Tensor) -> int:
    """The exponent s such that max|x| * 2^s lies in [2^14, 2^15) (0 for an all-zero x)."""
    peak = float(x.abs().max()) if x.numel() else 0.0
    if peak == 0.0:
        return 0
    return max(-_MAX_SHIFT, min(_MAX_SHIFT, _TOP - math.frexp(peak)[1]))


def to_half(x: Tensor, shift: int) -> Tensor:
    """``x * 2^shift`` rounded to float16 (round to nearest even)."""
    return (x * 2.0**shift).to(torch.float16)


def from_half(h: Tensor, shift: int) -> Tensor:
    """The float32 values that float16 ``h`` stands for."""
    return h.float() * 2.0**-shift


def half_bytes(h: Tensor) -> bytes:
    """Little-endian float16 bytes."""
    return h.detach().cpu().numpy().astype("<f2").tobytes()


def half_from_bytes(data: bytes, at: int, count: int) -> Tensor:
    """``count`` float16 values from ``data[at:]``."""
    return torch.from_numpy(np.frombuffer(data, dtype="<f2", count=count, offset=at).copy())


class Float16Codec(ClassicCodec):
    """float16 after a per-message power-of-two scale; payload: i8 exponent, n float16."""

    name = "fp16"

    def _code(self, x: Tensor, random: bool) -> tuple[bytes, Tensor, None]:
        shift = half_shift(x)
        h = to_half(x, shift)
        return struct.pack("<b", shift) + half_bytes(h), from_half(h, shift), None

    def decompress(self, data: bytes, shape: tuple[int, ...]) -> Tensor:
        """Read the exponent and the float16 values."""
        self.check_shape(shape)
        n = math.prod(shape)
        if len(data) != 1 + 2 * n:
            raise CodecError(
                f"codec 'fp16': {len(data)} bytes for shape {tuple(shape)}, expected {1 + 2 * n}"
            )
        (shift,) = struct.unpack_from("<b", data)
        return from_half(half_from_bytes(data, 1, n), shift).reshape(shape)


class BFloat16Codec(ClassicCodec):
    """bfloat16 (round to nearest even); payload: n little-endian bfloat16."""

    name = "bf16"

    def _code(self, x: Tensor, random: bool) -> tuple[bytes, Tensor, None]:
        b = x.to(torch.bfloat16)
        data = b.view(torch.int16).cpu().numpy().astype("<i2").tobytes()
        return data, b.float(), None

    def decompress(self, data: bytes, shape: tuple[int, ...]) -> Tensor:
        """The bfloat16 values as float32."""
        self.check_shape(shape)
        n = math.prod(shape)
        if len(data) != 2 * n:
            raise CodecError(
                f"codec 'bf16': {len(data)} bytes for shape {tuple(shape)}, expected {2 * n}"
            )
        bits = torch.from_numpy(np.frombuffer(data, dtype="<i2").copy())
        return bits.view(torch.bfloat16).float().reshape(shape)
