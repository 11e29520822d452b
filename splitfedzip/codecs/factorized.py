"""``ae``: the paper's custom AE, a factorized-prior codec (Ballé et al. 2018)."""

from __future__ import annotations

import math

import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import GDN
from compressai.models.utils import conv, deconv
from torch import Tensor, nn

from .base import Codec, CodecOutput
from .streams import SymbolReader, SymbolWriter


def analysis(channels: int, latent: int) -> nn.Sequential:
    """conv5x5/s2, GDN, conv5x5/s2, GDN, conv5x5/s2."""
    return nn.Sequential(
        conv(channels, latent, kernel_size=5, stride=2),
        GDN(latent),
        conv(latent, latent, kernel_size=5, stride=2),
        GDN(latent),
        conv(latent, latent, kernel_size=5, stride=2),
    )


def synthesis(latent: int, channels: int) -> nn.Sequential:
    """The mirror of :func:`analysis`: transposed convs and inverse GDN."""
    return nn.Sequential(
        deconv(latent, latent, kernel_size=5, stride=2),
        GDN(latent, inverse=True),
        deconv(latent, latent, kernel_size=5, stride=2),
        GDN(latent, inverse=True),
        deconv(latent, channels, kernel_size=5, stride=2),
    )


class FactorizedPriorCodec(Codec):
    """Analysis transform -> entropy bottleneck (factorized prior) -> synthesis transform.

    ``latent_gain``: as for ``cheng2020-attn``, a learned per-channel gain around the
    quantised latent (:class:`LatentGain`), part of the decoder state; None: none.
    """

    name = "ae"
    alignment = 8
    decoder_prefixes = ("g_s.", "entropy_bottleneck.")

    def __init__(
        self,
        channels: int,
        latent_channels: int = 64,
        init_scale: float = 10.0,
        latent_gain: float | None = None,
    ) -> None:
        super().__init__()
        self.g_a = analysis(channels, latent_channels)
        self.g_s = synthesis(latent_channels, channels)
        self.entropy_bottleneck = EntropyBottleneck(latent_channels, init_scale=init_scale)
        self.set_latent_gain(latent_channels, latent_gain)

    def _analysis(self, x: Tensor) -> Tensor:
        return self.gained(self.g_a(x))

    def _synthesis(self, y_hat: Tensor) -> Tensor:
        return self.g_s(self.ungained(y_hat))

    def forward(self, x: Tensor) -> CodecOutput:
        """Noisy (train) or rounded (eval) reconstruction with the latent's likelihoods."""
        self.check_shape(x.shape)
        y_hat, y_lik = self.entropy_bottleneck(self._analysis(x))
        x_hat = self._synthesis(y_hat)
        return CodecOutput(x_hat, {"y": y_lik}, nn.functional.mse_loss(x_hat, x))

    def update(self) -> None:
        """Rebuild the bottleneck's CDF tables."""
        self.entropy_bottleneck.update(force=True)

    def aux_loss(self) -> Tensor:
        """Quantile loss of the entropy bottleneck."""
        return self.entropy_bottleneck.loss()

    @torch.no_grad()
    def encode(self, x: Tensor) -> tuple[bytes, float]:
        """One rANS stream for the whole batch, and the likelihood estimate of its size."""
        self.check_shape(x.shape)
        y = self._analysis(x)
        _, lik = self.entropy_bottleneck(y, training=False)
        est = float(torch.log2(lik).sum().neg())
        writer = SymbolWriter()
        writer.write_bottleneck(self.entropy_bottleneck, y)
        return writer.flush(), est

    @torch.no_grad()
    def decompress(self, data: bytes, shape: tuple[int, ...]) -> Tensor:
        """Decode the latent, then run the synthesis transform."""
        self.check_shape(shape)
        b, _, h, w = shape
        eb = self.entropy_bottleneck
        latent = (b, eb.channels, h // 8, w // 8)
        with SymbolReader(data, self.name, symbols=math.prod(latent)) as reader:
            y_hat = reader.read_bottleneck(eb, latent)
        return self._synthesis(y_hat.to(next(self.parameters()).device))
