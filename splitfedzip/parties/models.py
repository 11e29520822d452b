"""What each party holds: the client's and the main server's modules and codecs."""

from __future__ import annotations

from torch import Tensor, nn

from ..codecs import Codec, make_codec
from ..codecs.base import ENTROPY_TABLES
from ..config import Config
from ..models import BackEnd, FrontEnd, ServerPart, build_split_unet, split_channels
from .pretrained import load_pretrained
from .rng import seeded

# Scheme -> which of (features, gradients) are compressed.
SCHEMES = {"nc": (False, False), "f": (True, False), "g": (False, True), "fg": (True, True)}


def crossing_codec(cfg: Config, kind: str) -> Codec:
    """The codec for a feature or gradient crossing under the configured scheme."""
    features, gradients = SCHEMES[cfg.scheme]
    compressed = features if kind == "feature" else gradients
    opts = cfg.codec_options
    return make_codec(
        cfg.codec if compressed else "none",
        split_channels(cfg.model.base_width),
        latent_channels=opts.latent_channels,
        normalize=kind == "gradient" or opts.normalize_features,
        init_scale=opts.init_scale,
        latent_gain=opts.latent_gain,
        bits=opts.bits,
        scale=opts.scale,
        topk_fraction=opts.topk_fraction,
        topk_value_bits=opts.topk_value_bits,
        randtopk_alpha=opts.randtopk_alpha,
    )


def resynced(cfg: Config) -> bool:
    """Whether every round start syncs every learned codec afresh: none is ever frozen (a
    frozen codec is synced only when its weights changed)."""
    t = cfg.codec_training
    flags = t.trainable
    trains = (flags.s1_feature, flags.s2_feature, flags.s1_gradient, flags.s2_gradient)
    return all(trains) and t.freeze_round is None and t.freeze_rate_change is None


def split_shape(cfg: Config, batch: int) -> tuple[int, int, int, int]:
    """The shape of a tensor crossing S1 or S2 (both at half the input size) for ``batch``."""
    half = cfg.data.image_size // 2
    return (batch, split_channels(cfg.model.base_width), half, half)


def exchanged_state(module: nn.Module) -> dict[str, Tensor]:
    """The state a party exchanges for averaging: weights and BN statistics, no coder tables."""
    return {
        k: v.detach().cpu()
        for k, v in module.state_dict().items()
        if not k.endswith(ENTROPY_TABLES)
    }


class ClientModel(nn.Module):
    """A client's part of the system: front end, back end, the codecs it sends with."""

    def __init__(
        self, cfg: Config, num_classes: int, seed: int = 0, pretrained: bool = True
    ) -> None:
        super().__init__()
        # The U-Net seed is shared with the main server: FE + server + BE is one U-Net.
        parts = build_split_unet(
            num_classes, cfg.model.base_width, seed, foreground_prior=cfg.model.foreground_prior
        )
        self.front_end: FrontEnd = parts.front_end
        self.back_end: BackEnd = parts.back_end
        with seeded(seed + 1):
            self.s1_feature = crossing_codec(cfg, "feature")
            self.s2_gradient = crossing_codec(cfg, "gradient")
        if pretrained:
            load_pretrained(self, cfg, "client_global")  # codec_training.pretrained, if any


class ServerModel(nn.Module):
    """The main server's part: the server part of the U-Net and the codecs it sends with."""

    def __init__(self, cfg: Config, num_classes: int, seed: int = 0) -> None:
        super().__init__()
        self.server: ServerPart = build_split_unet(num_classes, cfg.model.base_width, seed).server
        with seeded(seed + 2):
            self.s2_feature = crossing_codec(cfg, "feature")
            self.s1_gradient = crossing_codec(cfg, "gradient")
        load_pretrained(self, cfg, "server_global")  # codec_training.pretrained, if any
