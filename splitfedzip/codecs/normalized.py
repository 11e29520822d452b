"""Per-tensor normalisation in front of a codec, for gradients.

Gradients are tiny and their magnitude varies by orders of magnitude from batch to batch; a
codec trained on raw gradients would quantize every one of them to zero. Each batch element is
divided by its RMS before coding and the scales travel as float32 side information, counted
in the payload like any other byte.
"""

from __future__ import annotations

import struct

import torch
from torch import Tensor

from .base import Codec, CodecError, CodecOutput


def rms_scale(x: Tensor) -> Tensor:
    """Per-batch-element RMS as float32, 1 where the element is all zeros; shape [B,1,1,1]."""
    s = x.detach().float().pow(2).flatten(1).mean(1).sqrt()
    s = torch.where(s > 0, s, torch.ones_like(s))
    return s.view(-1, 1, 1, 1)


class NormalizedCodec(Codec):
    """Wraps a codec: codes x / rms(x) and sends the RMS values ahead of the bitstream."""

    def __init__(self, inner: Codec) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.alignment = inner.alignment
        self.learned = inner.learned
        self.decoder_prefixes = tuple("inner." + p for p in inner.decoder_prefixes)

    def check_shape(self, shape: torch.Size | tuple[int, ...]) -> None:
        """As the wrapped codec."""
        self.inner.check_shape(shape)

    def forward(self, x: Tensor) -> CodecOutput:
        """The inner codec on normalised input; ``mse`` stays in normalised units."""
        s = rms_scale(x)
        out = self.inner(x / s)
        return CodecOutput(out.x_hat * s, out.likelihoods, out.mse)

    def update(self) -> None:
        """As the wrapped codec."""
        self.inner.update()

    def aux_loss(self) -> Tensor:
        """As the wrapped codec."""
        return self.inner.aux_loss()

    @torch.no_grad()
    def encode(self, x: Tensor) -> tuple[bytes, float | None]:
        """B float32 scales, then the inner bitstream; the estimate is the inner one's."""
        s = rms_scale(x)
        data, est = self.inner.encode(x / s)
        return s.cpu().numpy().astype("<f4").tobytes() + data, est

    @torch.no_grad()
    def decompress(self, data: bytes, shape: tuple[int, ...]) -> Tensor:
        """Read the scales, decode, rescale."""
        b = shape[0]
        if len(data) < 4 * b:
            raise CodecError(f"codec {self.name!r}: payload too short for {b} scales")
        scales = struct.unpack(f"<{b}f", data[: 4 * b])
        x = self.inner.decompress(data[4 * b :], shape)
        return x * torch.tensor(scales, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
