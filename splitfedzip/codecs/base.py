"""The interface of everything that can sit at a split point."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

#: State-dict name endings of the entropy coders' tables: derived from the weights (``update``)
#: and sized by them, so never averaged, saved or compared as weights.
ENTROPY_TABLES = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


class CodecError(ValueError):
    """A tensor or bitstream that a codec cannot take."""


@dataclass
class CodecOutput:
    """A training (or eval) forward: reconstruction, likelihoods of every coded latent, distortion.

    ``mse`` is measured in the codec's own units (normalised ones for a normalising codec), so
    that λ weighs it the same way whatever the magnitude of the tensor.
    """

    x_hat: Tensor
    likelihoods: dict[str, Tensor] = field(default_factory=dict)
    mse: Tensor | None = None
    #: The bitstream of ``x_hat``, for codecs that code in ``forward`` (the classic ones): a
    #: randomised selection is then drawn once, and what crosses is what the gradient assumed.
    payload: bytes | None = None

    def bits(self) -> Tensor:
        """Estimated size of the coded latents in bits: -sum(log2 likelihoods)."""
        total = self.x_hat.new_zeros(())
        for lik in self.likelihoods.values():
            total = total + torch.log(lik).sum() / -math.log(2)
        return total


class LatentGain(nn.Module):
    """A learned gain per latent channel (Cui et al. 2021, "Asymmetric gained deep image
    compression with continuous rate adaptation"): the analysis transform's latents are
    multiplied by exp(g) before quantisation, the decoded ones by exp(-g) before synthesis.

    One scalar per channel sets the latents' scale against the quantisation step, which a deep
    transform at a small learning rate moves only slowly. ``g`` starts at log(``gain``).
    """

    def __init__(self, channels: int, gain: float) -> None:
        super().__init__()
        if not gain > 0:
            raise ValueError(f"latent gain must be > 0, got {gain}")
        self.log_gain = nn.Parameter(torch.full((channels,), math.log(gain)))

    def scale(self, y: Tensor) -> Tensor:
        """y * exp(g), per channel (the encoder side)."""
        return y * self.log_gain.exp().view(1, -1, 1, 1)

    def unscale(self, y_hat: Tensor) -> Tensor:
        """y_hat * exp(-g), per channel (the decoder side)."""
        return y_hat * self.log_gain.neg().exp().view(1, -1, 1, 1)


class Codec(nn.Module):
    """A learned (or identity) codec for one tensor crossing a split point.

    ``forward`` is the differentiable training path (noise in train mode, rounding in eval
    mode); ``compress``/``decompress`` write and read a real entropy-coded bitstream, and
    ``decompress(compress(x))`` equals the eval-mode ``forward(x).x_hat`` exactly.
    """

    #: Registry name, as in configs.
    name: str = ""
    #: Spatial size must be a positive multiple of this (the product of the analysis strides).
    alignment: int = 1
    #: Module-name prefixes the receiving side needs to decode (what a codec sync carries).
    decoder_prefixes: tuple[str, ...] = ()
    #: Whether the codec has anything to learn (``none`` has not).
    learned: bool = True

    def check_shape(self, shape: torch.Size | tuple[int, ...]) -> None:
        """Raise :class:`CodecError` if the codec cannot take a tensor of this shape."""
        if len(shape) != 4:
            raise CodecError(
                f"codec {self.name!r} takes 4-d tensors [B, C, H, W], got {tuple(shape)}"
            )
        h, w = shape[-2:]
        a = self.alignment
        if h < a or w < a or h % a or w % a:
            raise CodecError(
                f"codec {self.name!r} needs H and W to be multiples of {a} and at least {a} "
                f"(minimum size {a}x{a}); got {h}x{w}"
            )

    def set_latent_gain(self, channels: int, gain: float | None) -> None:
        """Give the latent a learned per-channel gain started at ``gain`` (None: none); the
        receiver applies its inverse, so it joins what a codec sync carries."""
        self.latent_gain = None if gain is None else LatentGain(channels, gain)
        if self.latent_gain is not None:
            self.decoder_prefixes = (*type(self).decoder_prefixes, "latent_gain.")

    def gained(self, y: Tensor) -> Tensor:
        """The latent to quantise: ``y`` times the gain, if any."""
        return y if self.latent_gain is None else self.latent_gain.scale(y)

    def ungained(self, y_hat: Tensor) -> Tensor:
        """The decoded latent divided by the gain, if any, for the synthesis transform."""
        return y_hat if self.latent_gain is None else self.latent_gain.unscale(y_hat)

    def update(self) -> None:
        """Rebuild the entropy coder's tables from the current weights."""

    def aux_loss(self) -> Tensor:
        """Auxiliary loss of the entropy bottlenecks (fits their quantiles)."""
        return torch.zeros(())

    def encode(self, x: Tensor) -> tuple[bytes, float | None]:  # pragma: no cover - interface
        """Bitstream for ``x`` (eval-mode quantisation) and the entropy model's size estimate."""
        raise NotImplementedError

    def compress(self, x: Tensor) -> bytes:
        """Encode ``x`` into a bitstream (eval-mode quantisation)."""
        return self.encode(x)[0]

    def decompress(self, data: bytes, shape: tuple[int, ...]) -> Tensor:  # pragma: no cover
        """Decode a bitstream into a tensor of ``shape``."""
        raise NotImplementedError

    def decoder_state(self) -> dict[str, Tensor]:
        """The weights and entropy tables the receiver needs to decode, as a state dict."""
        return {
            k: v.detach().cpu().clone()
            for k, v in self.state_dict().items()
            if k.startswith(self.decoder_prefixes)
        }

    def load_decoder_state(self, state: dict[str, Tensor]) -> None:
        """Load what :meth:`decoder_state` produced; the encoder side stays as it is."""
        foreign = [k for k in state if not k.startswith(self.decoder_prefixes)]
        if foreign:
            raise CodecError(
                f"codec {self.name!r}: unexpected keys in decoder state: {foreign[:5]}"
            )
        missing = [k for k in self.decoder_state() if k not in state]
        if missing:
            raise CodecError(f"codec {self.name!r}: decoder state lacks keys: {missing[:5]}")
        # Entropy-coder tables are buffers whose size depends on the weights; resize them first.
        own = self.state_dict(keep_vars=True)  # built once: it walks every submodule
        for key, value in state.items():
            current = own[key]
            if current.shape != value.shape and not isinstance(current, nn.Parameter):
                # A fresh storage rather than resize_: one loaded from a checkpoint cannot grow.
                current.set_(torch.empty(value.shape, dtype=current.dtype, device=current.device))
        full = self.state_dict()
        full.update(state)
        self.load_state_dict(full)
