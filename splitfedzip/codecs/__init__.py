"""Codecs for the tensors that cross split points: ``none``, ``ae``, ``cheng2020-attn``."""

from .base import Codec, CodecError, CodecOutput
from .cheng import Cheng2020AttentionCodec
from .factorized import FactorizedPriorCodec
from .normalized import NormalizedCodec
from .raw import RawCodec
from .registry import CODEC_NAMES, codec_id, codec_label, make_codec

__all__ = [
    "CODEC_NAMES",
    "Cheng2020AttentionCodec",
    "Codec",
    "CodecError",
    "CodecOutput",
    "FactorizedPriorCodec",
    "NormalizedCodec",
    "RawCodec",
    "codec_id",
    "codec_label",
    "make_codec",
]
