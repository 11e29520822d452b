"""``none``: no compression, the float32 tensor as bytes (the paper's NC)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Codec, CodecError, CodecOutput


class RawCodec(Codec):
    """Identity codec: sends the float32 tensor as it is."""

    name = "none"
    learned = False

    def check_shape(self, shape: torch.Size | tuple[int, ...]) -> None:
        """Any shape is fine."""

    def forward(self, x: Tensor) -> CodecOutput:
        """Identity."""
        return CodecOutput(x_hat=x, mse=x.new_zeros(()))

    def encode(self, x: Tensor) -> tuple[bytes, None]:
        """Raw little-endian float32 bytes; there is no estimate to make."""
        return x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes(), None

    def decompress(self, data: bytes, shape: tuple[int, ...]) -> Tensor:
        """Float32 tensor of ``shape`` from raw bytes."""
        n = 1
        for d in shape:
            n *= d
        if len(data) != 4 * n:
            raise CodecError(
                f"codec 'none': {len(data)} bytes for shape {tuple(shape)}, expected {4 * n}"
            )
        return torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(shape)
