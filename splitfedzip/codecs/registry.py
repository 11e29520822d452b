"""Codec names, wire ids, and construction."""

from __future__ import annotations

from .base import Codec, CodecError
from .cheng import Cheng2020AttentionCodec
from .factorized import FactorizedPriorCodec
from .normalized import NormalizedCodec
from .precision import BFloat16Codec, Float16Codec
from .quantized import IntCodec, Scale
from .raw import RawCodec
from .topk import RandTopKCodec, TopKCodec

_CLASSES: dict[str, type[Codec]] = {
    "none": RawCodec,
    "ae": FactorizedPriorCodec,
    "cheng2020-attn": Cheng2020AttentionCodec,
    "fp16": Float16Codec,
    "bf16": BFloat16Codec,
    "int": IntCodec,
    "topk": TopKCodec,
    "randtopk": RandTopKCodec,
}
# Stable wire ids (frame header field ``codec``); bit 8 marks a normalising codec.
_IDS = {"none": 0, "ae": 1, "cheng2020-attn": 2, "fp16": 3, "bf16": 4, "int": 5, "topk": 6,
        "randtopk": 7}  # fmt: skip
NORMALIZED_FLAG = 0x100

CODEC_NAMES = tuple(_CLASSES)


def make_codec(
    name: str,
    channels: int,
    *,
    latent_channels: int = 64,
    normalize: bool = False,
    init_scale: float = 10.0,
    latent_gain: float | None = None,
    bits: int = 8,
    scale: Scale = "tensor",
    topk_fraction: float = 0.1,
    topk_value_bits: int | None = None,
    randtopk_alpha: float = 0.1,
) -> Codec:
    """Build a codec by name for tensors with ``channels`` channels.

    ``init_scale`` is the initial width of the factorized prior's density (CompressAI's default
    is 10); latents much narrower than that cost bits until the density has learned their scale.
    ``latent_gain`` (``ae``, ``cheng2020-attn``): a learned per-channel gain on the latent,
    started at this value (:class:`~.base.LatentGain`); None: none.
    The other options are the classic codecs' (``codec_options`` in docs/codecs.md).
    """
    if name not in _CLASSES:
        raise CodecError(f"unknown codec {name!r}; known: {', '.join(CODEC_NAMES)}")
    if name == "none":
        codec: Codec = RawCodec()
    elif name in ("fp16", "bf16"):
        codec = _CLASSES[name]()
    elif name == "int":
        codec = IntCodec(bits, scale)
    elif name == "topk":
        codec = TopKCodec(topk_fraction, topk_value_bits, scale)
    elif name == "randtopk":
        codec = RandTopKCodec(topk_fraction, topk_value_bits, scale, randtopk_alpha)
    else:
        codec = _CLASSES[name](
            channels, latent_channels, init_scale=init_scale, latent_gain=latent_gain
        )
    return NormalizedCodec(codec) if normalize and codec.learned else codec


def codec_id(codec: Codec) -> int:
    """The codec's id in frame headers."""
    return _IDS[codec.name] | (NORMALIZED_FLAG if isinstance(codec, NormalizedCodec) else 0)


def codec_label(cid: int) -> str:
    """Readable name for a wire id, for error messages."""
    names = {v: k for k, v in _IDS.items()}
    base = names.get(cid & 0xFF, f"unknown({cid & 0xFF})")
    return base + ("+norm" if cid & NORMALIZED_FLAG else "")
