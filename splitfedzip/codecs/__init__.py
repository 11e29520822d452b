"""Codecs for the tensors that cross split points: ``none``, the learned ``ae`` and
``cheng2020-attn``, and the classic ``fp16``, ``bf16``, ``int``, ``topk`` and ``randtopk``."""

from .base import Codec, CodecError, CodecOutput
from .cheng import Cheng2020AttentionCodec
from .classic import ClassicCodec, ErrorFeedback
from .factorized import FactorizedPriorCodec
from .normalized import NormalizedCodec
from .precision import BFloat16Codec, Float16Codec
from .quantized import IntCodec
from .raw import RawCodec
from .registry import CODEC_NAMES, codec_id, codec_label, make_codec
from .topk import RandTopKCodec, TopKCodec

__all__ = [
    "CODEC_NAMES",
    "BFloat16Codec",
    "Cheng2020AttentionCodec",
    "ClassicCodec",
    "Codec",
    "CodecError",
    "CodecOutput",
    "ErrorFeedback",
    "FactorizedPriorCodec",
    "Float16Codec",
    "IntCodec",
    "NormalizedCodec",
    "RandTopKCodec",
    "RawCodec",
    "TopKCodec",
    "codec_id",
    "codec_label",
    "make_codec",
]
