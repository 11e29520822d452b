"""Length-prefixed byte strings: how a codec lays out its entropy-coded streams in a payload."""

from __future__ import annotations

import struct

from .base import CodecError

_LEN = struct.Struct("<I")
#: Most bytes a stream can exceed its information content by: the u32 length prefix, the rANS
#: coder's 64-bit final state, and padding to its 32-bit output words.
STREAM_OVERHEAD = _LEN.size + 8 + 3


def pack_streams(streams: list[bytes]) -> bytes:
    """Concatenate streams, each preceded by its u32 length."""
    return b"".join(_LEN.pack(len(s)) + s for s in streams)


def unpack_streams(data: bytes, count: int, codec: str) -> list[bytes]:
    """Split ``data`` into exactly ``count`` length-prefixed streams."""
    out, pos = [], 0
    for i in range(count):
        if pos + _LEN.size > len(data):
            raise CodecError(f"codec {codec!r}: payload truncated before stream {i} of {count}")
        (n,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        if pos + n > len(data):
            raise CodecError(
                f"codec {codec!r}: stream {i} claims {n} bytes, only {len(data) - pos} remain"
            )
        out.append(bytes(data[pos : pos + n]))
        pos += n
    if pos != len(data):
        raise CodecError(f"codec {codec!r}: {len(data) - pos} unexpected trailing bytes in payload")
    return out
