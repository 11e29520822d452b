"""Codec names, wire ids, and construction."""

from __future__ import annotations

from .base import Codec, CodecError
from .cheng import Cheng2020AttentionCodec
from .factorized import FactorizedPriorCodec
from .normalized import NormalizedCodec
from .raw import RawCodec

_CLASSES: dict[str, type[Codec]] = {
    "none": RawCodec,
    "ae": FactorizedPriorCodec,
    "cheng2020-attn": Cheng2020AttentionCodec,
}
# Stable wire ids (frame header field ``codec``); bit 8 marks a normalising codec.
_IDS = {"none": 0, "ae": 1, "cheng2020-attn": 2}
NORMALIZED_FLAG = 0x100

CODEC_NAMES = tuple(_CLASSES)


def make_codec(
    name: str,
    channels: int,
    *,
    latent_channels: int = 64,
    normalize: bool = False,
    init_scale: float = 10.0,
) -> Codec:
    """Build a codec by name for tensors with ``channels`` channels.

    ``init_scale`` is the initial width of the factorized prior's density (CompressAI's default
    is 10); latents much narrower than that cost bits until the density has learned their scale.
    """
    if name not in _CLASSES:
        raise CodecError(f"unknown codec {name!r}; known: {', '.join(CODEC_NAMES)}")
    if name == "none":
        codec: Codec = RawCodec()
    else:
        codec = _CLASSES[name](channels, latent_channels, init_scale=init_scale)
    return NormalizedCodec(codec) if normalize and codec.learned else codec


def codec_id(codec: Codec) -> int:
    """The codec's id in frame headers."""
    return _IDS[codec.name] | (NORMALIZED_FLAG if isinstance(codec, NormalizedCodec) else 0)


def codec_label(cid: int) -> str:
    """Readable name for a wire id, for error messages."""
    names = {v: k for k, v in _IDS.items()}
    base = names.get(cid & 0xFF, f"unknown({cid & 0xFF})")
    return base + ("+norm" if cid & NORMALIZED_FLAG else "")
