"""``cheng2020-attn``: Cheng et al. 2020 with attention, hyperprior and autoregressive context."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import AttentionBlock, ResidualBlockWithStride, subpel_conv3x3
from compressai.models import Cheng2020Attention
from compressai.models.base import get_scale_table
from torch import Tensor, nn

from .base import ENTROPY_TABLES, Codec, CodecOutput
from .streams import SymbolReader, SymbolWriter, bottleneck_medians, tables

_KERNEL = 5  # context model (masked conv) kernel
_PAD = (_KERNEL - 1) // 2


class ResidualUnit(nn.Module):
    """CompressAI's attention-block residual unit, at module level so that pickle can name it.

    CompressAI defines the unit inside ``AttentionBlock.__init__``; round checkpoints pickle
    whole parties, codecs included, and pickle cannot name a class local to a function.
    """

    def forward(self, x: Tensor) -> Tensor:
        """conv(x) + x, then ReLU (as CompressAI's unit)."""
        out = self.conv(x)
        out += x
        return self.relu(out)


def make_picklable(net: nn.Module) -> None:
    """Give every attention block's residual units the module-level class (same weights)."""
    for block in net.modules():
        if isinstance(block, AttentionBlock):
            for unit in (*block.conv_a, *block.conv_b[:-1]):
                unit.__class__ = ResidualUnit


class Cheng2020AttentionCodec(Codec):
    """CompressAI's Cheng2020Attention with its first and last layers sized to the tensor.

    The eval-mode forward, ``compress`` and ``decompress`` share one raster scan
    (:meth:`_scan`): each latent is rounded around the mean that the context model predicts
    from the latents decoded before it, so all three give bit-identical reconstructions.
    (CompressAI's own eval forward rounds without the means and would not match.)

    With ``latent_gain`` set, a learned per-channel gain (:class:`LatentGain`, started at that
    value) scales the analysis transform's latents before quantisation and the decoded latents
    back before synthesis; the receiver needs it, so it is part of the decoder state. None (the
    default) is the paper's model, without it.
    """

    name = "cheng2020-attn"
    alignment = 64  # four stride-2 layers to y, two more to the hyper-latent z
    decoder_prefixes = (
        "net.g_s.",
        "net.h_s.",
        "net.entropy_parameters.",
        "net.context_prediction.",
        "net.entropy_bottleneck.",
        "net.gaussian_conditional.",
    )

    def __init__(
        self,
        channels: int,
        latent_channels: int = 64,
        init_scale: float = 10.0,
        latent_gain: float | None = None,
    ) -> None:
        super().__init__()
        n = latent_channels
        self.net = Cheng2020Attention(N=n)
        self.net.g_a[0] = ResidualBlockWithStride(channels, n, stride=2)
        self.net.g_s[-1] = subpel_conv3x3(n, channels, 2)
        # The hyper-latent's factorized prior; its initialisation draws no random numbers.
        self.net.entropy_bottleneck = EntropyBottleneck(n, init_scale=init_scale)
        make_picklable(self.net)
        self.set_latent_gain(n, latent_gain)

    def _analysis(self, x: Tensor) -> Tensor:
        """The latent y: g_a, then the gain if any."""
        return self.gained(self.net.g_a(x))

    def _synthesis(self, y_hat: Tensor) -> Tensor:
        """The reconstruction: the inverse gain if any, then g_s."""
        return self.net.g_s(self.ungained(y_hat))

    def _train_forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """CompressAI's parallel noisy forward (JointAutoregressiveHierarchicalPriors), with
        the gain around the quantised latent."""
        net = self.net
        if self.latent_gain is None:
            out = net(x)
            return out["x_hat"], out["likelihoods"]
        y = self._analysis(x)
        z_hat, z_lik = net.entropy_bottleneck(net.h_a(y))
        params = net.h_s(z_hat)
        y_hat = net.gaussian_conditional.quantize(y, "noise")
        ctx = net.context_prediction(y_hat)
        gp = net.entropy_parameters(torch.cat((params, ctx), dim=1))
        scales, means = gp.chunk(2, 1)
        _, y_lik = net.gaussian_conditional(y, scales, means=means)
        return self._synthesis(y_hat), {"y": y_lik, "z": z_lik}

    def forward(self, x: Tensor) -> CodecOutput:
        """Training: CompressAI's parallel noisy forward. Eval: the exact raster scan."""
        self.check_shape(x.shape)
        if self.training:
            x_hat, lik = self._train_forward(x)
        else:
            net = self.net
            y = self._analysis(x)
            z_hat, z_lik = net.entropy_bottleneck(net.h_a(y))
            y_hat, scales, means = self._scan(y, net.h_s(z_hat))
            y_lik = net.gaussian_conditional._likelihood(y_hat, scales, means)
            y_lik = net.gaussian_conditional.likelihood_lower_bound(y_lik)
            x_hat = self._synthesis(y_hat)
            lik = {"y": y_lik, "z": z_lik}
        return CodecOutput(x_hat, lik, nn.functional.mse_loss(x_hat, x))

    def update(self) -> None:
        """Rebuild the CDF tables of the bottleneck and the Gaussian conditional."""
        self.net.update(force=True)

    def aux_loss(self) -> Tensor:
        """Quantile loss of the hyper-latent's entropy bottleneck."""
        return self.net.aux_loss()

    def _scan(self, y: Tensor | None, params: Tensor, step=None) -> tuple[Tensor, Tensor, Tensor]:
        """Raster scan over latent positions; returns (y_hat, scales, means).

        With ``y`` given, latents are rounded around the predicted means; without it,
        ``step(h, w, scales, means)`` supplies the rounded symbols (decoding). ``step`` is also
        called while encoding, to hand symbols to the entropy coder.
        """
        net = self.net
        b, _, h, w = params.shape
        m = net.M
        y_hat = params.new_zeros((b, m, h + 2 * _PAD, w + 2 * _PAD))
        scales = params.new_zeros((b, m, h, w))
        means = params.new_zeros((b, m, h, w))
        weight = net.context_prediction.weight * net.context_prediction.mask
        for i in range(h):
            for j in range(w):
                crop = y_hat[:, :, i : i + _KERNEL, j : j + _KERNEL]
                ctx = F.conv2d(crop, weight, bias=net.context_prediction.bias)
                p = params[:, :, i : i + 1, j : j + 1]
                gp = net.entropy_parameters(torch.cat((p, ctx), dim=1)).squeeze(3).squeeze(2)
                s, mu = gp.chunk(2, 1)
                if y is not None:
                    q = torch.round(y[:, :, i, j] - mu)
                    if step is not None:
                        step(i, j, s, q)
                else:
                    q = step(i, j, s, None)
                y_hat[:, :, i + _PAD, j + _PAD] = q + mu
                scales[:, :, i, j], means[:, :, i, j] = s, mu
        return y_hat[:, :, _PAD : _PAD + h, _PAD : _PAD + w].contiguous(), scales, means

    def decoder_state(self) -> dict[str, Tensor]:
        """As the base class, less the Gaussian tables: they derive from constants alone."""
        gc = "net.gaussian_conditional."
        drop = tuple(gc + b for b in ENTROPY_TABLES)
        return {k: v for k, v in super().decoder_state().items() if not k.endswith(drop)}

    def load_decoder_state(self, state: dict[str, Tensor]) -> None:
        """Load the sent weights and rebuild the Gaussian tables locally."""
        super().load_decoder_state(state)
        self.net.gaussian_conditional.update_scale_table(get_scale_table(), force=True)

    @torch.no_grad()
    def encode(self, x: Tensor) -> tuple[bytes, float]:
        """One stream: hyper-latents, then latents position by position; and the estimate."""
        self.check_shape(x.shape)
        net = self.net
        eb, gc = net.entropy_bottleneck, net.gaussian_conditional
        y = self._analysis(x)
        z = net.h_a(y)
        _, z_lik = eb(z, training=False)
        writer = SymbolWriter()
        writer.write_bottleneck(eb, z)
        z_hat = eb.quantize(z, "dequantize", bottleneck_medians(eb, z.shape))  # as decoded
        gaussian = tables(gc)

        def step(i: int, j: int, s: Tensor, q: Tensor) -> None:
            writer.write(q, gc.build_indexes(s), gaussian)

        y_hat, scales, means = self._scan(y, net.h_s(z_hat), step)
        y_lik = gc.likelihood_lower_bound(gc._likelihood(y_hat, scales, means))
        est = float(torch.log2(y_lik).sum().neg() + torch.log2(z_lik).sum().neg())
        return writer.flush(), est

    @torch.no_grad()
    def decompress(self, data: bytes, shape: tuple[int, ...]) -> Tensor:
        """Decode the hyper-latent, then the latent position by position, then synthesise."""
        self.check_shape(shape)
        net = self.net
        eb, gc = net.entropy_bottleneck, net.gaussian_conditional
        b, _, h, w = shape
        device = next(self.parameters()).device
        hyper = (b, eb.channels, h // 64, w // 64)
        symbols = math.prod(hyper) + b * net.M * (h // 16) * (w // 16)
        with SymbolReader(data, self.name, symbols) as reader:
            z_hat = reader.read_bottleneck(eb, hyper).to(device)
            gaussian = tables(gc)

            def step(i: int, j: int, s: Tensor, _: None) -> Tensor:
                return reader.read(gc.build_indexes(s), gaussian).to(s.device, s.dtype)

            y_hat, _, _ = self._scan(None, net.h_s(z_hat), step)
        return self._synthesis(y_hat)
