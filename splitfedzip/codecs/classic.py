"""What the classic codecs (fp16, bf16, int, topk, randtopk) share: nothing to learn.

They code in ``forward`` as well as in ``encode``: the sender sends the payload of the very
forward whose reconstruction the task gradient flows back through, so that a randomised
selection is drawn once per tensor. The gradient passes straight through the rounding (Bengio
et al., 2013) and, for top-k, through the entries that were kept: the true derivative of the
sparsification with its positions held fixed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Codec, CodecError, CodecOutput


class ClassicCodec(Codec):
    """A fixed compressor: ``_code`` turns a tensor into a payload and its reconstruction."""

    learned = False

    def check_shape(self, shape: torch.Size | tuple[int, ...]) -> None:
        """Any non-empty 4-d tensor."""
        if len(shape) != 4 or math.prod(shape) == 0:
            raise CodecError(
                f"codec {self.name!r} takes non-empty 4-d tensors [B, C, H, W], got {tuple(shape)}"
            )

    def _code(self, x: Tensor, random: bool) -> tuple[bytes, Tensor, Tensor | None]:
        """(payload, reconstruction, mask of the entries the gradient passes; None: all)."""
        raise NotImplementedError  # pragma: no cover - interface

    def _checked(self, x: Tensor) -> Tensor:
        self.check_shape(x.shape)
        x = x.detach().float()
        if not torch.isfinite(x).all():
            raise CodecError(f"codec {self.name!r}: the tensor holds NaN or infinite values")
        return x

    def forward(self, x: Tensor) -> CodecOutput:
        """The reconstruction with a straight-through gradient, and the payload it decodes from;
        randomised codecs draw their selection here in train mode."""
        payload, x_hat, keep = self._code(self._checked(x), random=self.training)
        # x_hat + 0 keeps x_hat's value exactly while the gradient reaches x.
        through = x - x.detach()
        y = x_hat + (through if keep is None else keep * through)
        return CodecOutput(y, mse=torch.mean((x_hat - x.detach()) ** 2), payload=payload)

    def encode(self, x: Tensor) -> tuple[bytes, None]:
        """The eval-mode payload; no likelihood estimate (the histogram is the model)."""
        return self._code(self._checked(x), random=False)[0], None


class ErrorFeedback:
    """The sender's residual: what coding lost from the last training tensor, added to the next.

    A tensor of another shape than the residual (an epoch's last, smaller batch) starts afresh.
    """

    def __init__(self) -> None:
        self.residual: Tensor | None = None

    def add(self, x: Tensor) -> Tensor:
        """``x`` plus the residual (a constant: the gradient reaches ``x`` unchanged)."""
        if self.residual is None or self.residual.shape != x.shape:
            return x
        return x + self.residual.to(x.device, x.dtype)

    def update(self, x_in: Tensor, x_hat: Tensor) -> None:
        """Keep what the coded tensor ``x_in`` lost: ``x_in - x_hat``."""
        self.residual = (x_in - x_hat).detach()

    def reset(self) -> None:
        """Drop the residual."""
        self.residual = None
