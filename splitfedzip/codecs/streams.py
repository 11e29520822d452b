"""One rANS stream per message: how a codec lays out its entropy-coded symbols in a payload.

CompressAI's entropy models write one stream per batch element (and Cheng's model two: the
hyper-latent and the latent). Each stream pays for its own flush, so a message of B elements
paid B (or 2B) times the coder's final state and padding, plus a length prefix each. Here every
symbol of a message, whatever entropy model it belongs to, goes into one buffered rANS encoder
in decoding order; the receiver reads them back in the same order, each run with its own CDF
tables. The payload is that single stream followed by a 16-bit CRC of the symbols it codes.

The coder flushes its final state as a 64-bit word, but at the rates of a well-trained codec a
message's content is a few bits and the state a little over 2^31: its high bytes are zeros.
The payload keeps the state's low 5 to 8 bytes, as few as hold it, and the reader restores the
word. The rest of the stream is whole 32-bit words, so the payload's length names the count.

The check is over symbols, not bytes (the frame's CRC32 covers those): a receiver whose entropy
parameters come out differently (another device, library or thread set-up, a known hazard of
learned entropy models across machines) picks other CDF tables and decodes other symbols from
intact bytes, and rANS never notices. :meth:`SymbolReader.finish` does.
"""

from __future__ import annotations

import binascii
import struct

import numpy as np
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, EntropyModel
from torch import Tensor

from .base import CodecError

_CHECK = struct.Struct("<H")
#: The symbol check that ends every stream: CRC-16-CCITT of the symbols as little-endian int32.
#: 16 bits, not 32: a receiver whose tables differ does so for every message, so a mismatch
#: that one check misses (1 in 65,536) the next ones catch, and at the rates of a trained codec
#: two more bytes per message are a third of its size (docs/deployment.md, "Decode integrity").
CHECK_SIZE = _CHECK.size
# CRC-16-CCITT's usual start value: with 0, a run of zero symbols would check to 0.
_CRC_INIT = 0xFFFF
#: Bytes of the coder's final state in a payload: 5 to 8, as few as hold it (5, not 4, so that
#: the count modulo 4 tells them apart). The state is never below the coder's bound 2^31.
STATE_SIZES = range(5, 9)
_STATE_LOW = 1 << 31
#: Most bytes a payload can exceed its information content by: the rANS coder's final state,
#: padding to its 32-bit output words, and the symbol check.
STREAM_OVERHEAD = STATE_SIZES[-1] + 3 + CHECK_SIZE
#: Most bytes one symbol can take: a 16-bit CDF slot and, for a value outside its table, an
#: escape of up to 9 nibbles (its length and 32 bits). A longer payload cannot be a stream.
MAX_SYMBOL_BYTES = 8
# CompressAI's rANS decoder reads its input without bounds checks, and bytes that are not its
# own stream can make it read past the end (a 300 kB payload of 0xFF crashes the process). The
# reader therefore decodes a copy followed by guard words: 0x80000000 keeps the coder's state
# above its renormalisation bound, so every guard word yields at least 7 of the 4-bit escape
# reads; the escape length hostile bytes can claim grows by 15 per nibble; hence at most
# 15 * 8 / 7 < 18 guard words per input word, plus one per symbol (32 and 2 with margin).
_GUARD = struct.pack("<I", 0x80000000)
_GUARD_PER_WORD, _GUARD_PER_SYMBOL, _GUARD_BASE = 32, 2, 256

#: An entropy model's quantized CDFs, their lengths and offsets, as the rANS coder takes them.
Tables = tuple[list[list[int]], list[int], list[int]]


def tables(model: EntropyModel) -> Tables:
    """The coder tables of ``model`` (built by its ``update``), each CDF cut to its length."""
    lengths = model._cdf_length.reshape(-1).int().tolist()
    # The rows are padded to the longest CDF; the coder reads only ``length`` entries of each,
    # and copying the padding into C++ on every call would cost more than the coding.
    cdfs = [row[:n] for row, n in zip(model._quantized_cdf.tolist(), lengths, strict=True)]
    return cdfs, lengths, model._offset.reshape(-1).int().tolist()


def _flat(t: Tensor) -> list[int]:
    return t.reshape(-1).int().tolist()


def _crc(values: list[int], crc: int) -> int:
    """CRC-16-CCITT of ``values`` as little-endian int32, continuing from ``crc``."""
    return binascii.crc_hqx(np.asarray(values, dtype="<i4").tobytes(), crc)


class SymbolMismatch(CodecError):
    """A stream decoded to other symbols than were coded into it."""


class SymbolWriter:
    """Collects runs of symbols, each with its CDF indexes and tables; one stream at the end."""

    def __init__(self) -> None:
        self._encoder = BufferedRansEncoder()
        # Consecutive runs with the same tables are handed to the coder in one call: converting
        # the tables for the C++ coder costs more than coding a few hundred symbols.
        self._table: Tables | None = None
        self._symbols: list[int] = []
        self._indexes: list[int] = []
        self._crc = _CRC_INIT

    def write(self, symbols: Tensor, indexes: Tensor, table: Tables) -> None:
        """Append ``symbols`` (integers), coded with ``table[indexes]``."""
        if table is not self._table:
            self._hand_over()
            self._table = table
        values = _flat(symbols)
        self._crc = _crc(values, self._crc)
        self._symbols += values
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
        """The stream of every symbol written, then the symbols' check."""
        self._hand_over()
        return compact(self._encoder.flush()) + _CHECK.pack(self._crc)


class SymbolReader:
    """Reads back, run by run, what a :class:`SymbolWriter` wrote: exactly ``symbols`` of them.

    Use it as a context manager, or call :meth:`finish` after the last read: that compares the
    symbols read with the check the writer appended.
    """

    def __init__(self, data: bytes, codec: str, symbols: int) -> None:
        self.codec, self.symbols = codec, symbols
        self._checked: Tables | None = None
        if len(data) < STATE_SIZES[0] + CHECK_SIZE:
            raise CodecError(
                f"codec {codec!r}: a {len(data)}-byte payload is not an rANS stream "
                f"(the coder's final state, at least {STATE_SIZES[0]} bytes, and a "
                f"{CHECK_SIZE}-byte symbol check)"
            )
        stream = expand(data[:-CHECK_SIZE], codec)
        limit = MAX_SYMBOL_BYTES * symbols + STREAM_OVERHEAD
        if len(data) > limit:
            raise CodecError(
                f"codec {codec!r}: a {len(data)}-byte payload for {symbols} symbols is not an "
                f"rANS stream (at most {limit} bytes)"
            )
        (self._expected,) = _CHECK.unpack(data[-CHECK_SIZE:])
        guard = _GUARD_PER_WORD * (len(stream) // 4) + _GUARD_PER_SYMBOL * symbols + _GUARD_BASE
        self._decoder = RansDecoder()
        self._decoder.set_stream(bytes(stream) + _GUARD * guard)
        self._read, self._crc = 0, _CRC_INIT

    def read(self, indexes: Tensor, table: Tables) -> Tensor:
        """The next ``indexes.numel()`` symbols, shaped like ``indexes``."""
        if self._read + indexes.numel() > self.symbols:
            raise CodecError(
                f"codec {self.codec!r}: reading past the {self.symbols} symbols of the stream"
            )
        if table is not self._checked:
            check_tables(table, self.codec)
            self._checked = table
        flat = _flat(indexes)
        if flat and not 0 <= min(flat) <= max(flat) < len(table[0]):
            raise CodecError(
                f"codec {self.codec!r}: CDF indexes {min(flat)}..{max(flat)} outside its "
                f"{len(table[0])} tables"
            )
        # Hand the coder only the tables these symbols use: a raster scan reads a few symbols
        # per call, and converting every table to C++ on each call dominated its decoding.
        used = sorted(set(flat))
        local = {index: i for i, index in enumerate(used)}
        sub = [[t[i] for i in used] for t in table]
        values = self._decoder.decode_stream([local[i] for i in flat], *sub)
        self._read += len(values)
        self._crc = _crc(values, self._crc)
        return torch.tensor(values, dtype=torch.int32).reshape(indexes.shape)

    def finish(self) -> None:
        """Check that every symbol was read and that they are the ones the writer coded."""
        if self._read != self.symbols:
            raise CodecError(
                f"codec {self.codec!r}: {self._read} of the stream's {self.symbols} symbols read"
            )
        if self._crc != self._expected:
            raise SymbolMismatch(
                f"codec {self.codec!r}: decoded {self.symbols} symbols other than were coded "
                f"(symbol CRC {self._crc:04x}, the sender's {self._expected:04x})"
            )

    def __enter__(self) -> SymbolReader:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.finish()

    def read_bottleneck(self, model: EntropyBottleneck, shape: tuple[int, ...]) -> Tensor:
        """A factorized-prior latent of ``shape`` (B, C, H, W), dequantised."""
        symbols = self.read(model._build_indexes(torch.Size(shape)), tables(model))
        medians = bottleneck_medians(model, shape)
        return model.dequantize(symbols.to(medians.device), medians, medians.dtype)


def compact(stream: bytes) -> bytes:
    """CompressAI's flushed stream with its 64-bit final state cut to its low 5-8 bytes."""
    state = int.from_bytes(stream[:8], "little")
    size = max(STATE_SIZES[0], (state.bit_length() + 7) // 8)
    return state.to_bytes(size, "little") + stream[8:]


def expand(data: bytes, codec: str) -> bytes:
    """The stream CompressAI's decoder reads: :func:`compact` undone."""
    size = STATE_SIZES[(len(data) - STATE_SIZES[0]) % 4]
    state = int.from_bytes(data[:size], "little")
    if state < _STATE_LOW:
        raise CodecError(
            f"codec {codec!r}: not an rANS stream (final state {state:#x} below the coder's "
            f"bound {_STATE_LOW:#x})"
        )
    return state.to_bytes(8, "little") + data[size:]


def check_tables(table: Tables, codec: str) -> None:
    """Refuse CDF tables the rANS decoder could read past (it checks nothing itself).

    Each CDF must start at 0 and reach 1 << 16 within its row, at a length of at least 2:
    then every lookup stays inside the row. Tables can come from a peer (a codec sync, or a
    payload's own histogram), so they are checked before the first symbol is read with them.
    """
    cdfs, sizes, offsets = table
    if not cdfs or len(sizes) != len(cdfs) or len(offsets) != len(cdfs):
        raise CodecError(
            f"codec {codec!r}: malformed entropy tables ({len(cdfs)} CDFs, {len(sizes)} "
            f"lengths, {len(offsets)} offsets)"
        )
    for i, (cdf, size) in enumerate(zip(cdfs, sizes, strict=True)):
        if not 2 <= size <= len(cdf) or cdf[0] != 0 or cdf[size - 1] != 1 << 16:
            raise CodecError(f"codec {codec!r}: entropy table {i} is not a CDF the coder can use")


def bottleneck_medians(model: EntropyBottleneck, shape: tuple[int, ...]) -> Tensor:
    """The bottleneck's channel medians, broadcast to a [B, C, 1, 1] tensor."""
    medians = model._extend_ndims(model._get_medians().detach(), len(shape) - 2)
    return medians.expand(shape[0], *([-1] * (len(shape) - 1)))
