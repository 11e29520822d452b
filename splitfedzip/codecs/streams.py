"""One rANS stream per message: how a codec lays out its entropy-coded symbols in a payload.

CompressAI's entropy models write one stream per batch element (and Cheng's model two: the
hyper-latent and the latent). Each stream pays for its own flush, so a message of B elements
paid B (or 2B) times the coder's final state and padding, plus a length prefix each. Here every
symbol of a message, whatever entropy model it belongs to, goes into one buffered rANS encoder
in decoding order; the receiver reads them back in the same order, each run with its own CDF
tables. The payload is that single stream: the frame already knows its length.
"""

from __future__ import annotations

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, EntropyModel
from torch import Tensor

from .base import CodecError

#: Most bytes a stream can exceed its information content by: the rANS coder's 64-bit final
#: state, and padding to its 32-bit output words.
STREAM_OVERHEAD = 8 + 3

#: An entropy model's quantized CDFs, their lengths and offsets, as the rANS coder takes them.
Tables = tuple[list[list[int]], list[int], list[int]]


def tables(model: EntropyModel) -> Tables:
    """The coder tables of ``model`` (built by its ``update``)."""
    return (
        model._quantized_cdf.tolist(),
        model._cdf_length.reshape(-1).int().tolist(),
        model._offset.reshape(-1).int().tolist(),
    )


def _flat(t: Tensor) -> list[int]:
    return t.reshape(-1).int().tolist()


class SymbolWriter:
    """Collects runs of symbols, each with its CDF indexes and tables; one stream at the end."""

    def __init__(self) -> None:
        self._encoder = BufferedRansEncoder()
        # Consecutive runs with the same tables are handed to the coder in one call: converting
        # the tables for the C++ coder costs more than coding a few hundred symbols.
        self._table: Tables | None = None
        self._symbols: list[int] = []
        self._indexes: list[int] = []

    def write(self, symbols: Tensor, indexes: Tensor, table: Tables) -> None:
        """Append ``symbols`` (integers), coded with ``table[indexes]``."""
        if table is not self._table:
            self._hand_over()
            self._table = table
        self._symbols += _flat(symbols)
        self._indexes += _flat(indexes)

    def _hand_over(self) -> None:
        if self._table is not None and self._symbols:
            self._encoder.encode_with_indexes(self._symbols, self._indexes, *self._table)
        self._symbols, self._indexes = [], []

    def write_bottleneck(self, model: EntropyBottleneck, y: Tensor) -> None:
        """Append a factorized-prior latent, rounded around its channel medians."""
        medians = bottleneck_medians(model, y.shape)
        symbols = model.quantize(y, "symbols", medians)
        self.write(symbols, model._build_indexes(y.size()), tables(model))

    def flush(self) -> bytes:
        """The stream of every symbol written."""
        self._hand_over()
        return self._encoder.flush()


class SymbolReader:
    """Reads back, run by run, what a :class:`SymbolWriter` wrote."""

    def __init__(self, data: bytes, codec: str) -> None:
        # A flushed stream holds at least the coder's 64-bit final state, in 32-bit words.
        if len(data) < 8 or len(data) % 4:
            raise CodecError(
                f"codec {codec!r}: a {len(data)}-byte payload is not an rANS stream "
                "(whole 32-bit words, the final state at least)"
            )
        self._decoder = RansDecoder()
        self._decoder.set_stream(data)

    def read(self, indexes: Tensor, table: Tables) -> Tensor:
        """The next ``indexes.numel()`` symbols, shaped like ``indexes``."""
        values = self._decoder.decode_stream(_flat(indexes), *table)
        return torch.tensor(values, dtype=torch.int32).reshape(indexes.shape)

    def read_bottleneck(self, model: EntropyBottleneck, shape: tuple[int, ...]) -> Tensor:
        """A factorized-prior latent of ``shape`` (B, C, H, W), dequantised."""
        symbols = self.read(model._build_indexes(torch.Size(shape)), tables(model))
        medians = bottleneck_medians(model, shape)
        return model.dequantize(symbols.to(medians.device), medians, medians.dtype)


def bottleneck_medians(model: EntropyBottleneck, shape: tuple[int, ...]) -> Tensor:
    """The bottleneck's channel medians, broadcast to a [B, C, 1, 1] tensor."""
    medians = model._extend_ndims(model._get_medians().detach(), len(shape) - 2)
    return medians.expand(shape[0], *([-1] * (len(shape) - 1)))
