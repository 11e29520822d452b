"""Raw tensor bytes and pickle-free state-dict serialisation for frame payloads."""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from splitfedzip.wire.frame import (
    DTYPES_BY_NAME,
    Frame,
    FrameError,
    Header,
    Kind,
    dtype_name,
    encode_frame,
)

_INDEX_LEN = struct.Struct("<I")


class StateFormatError(ValueError):
    """A packed state dict is malformed."""


def _require_little_endian() -> None:
    # Raw bytes are defined as little-endian; a big-endian host would need byte swapping.
    if sys.byteorder != "little":
        raise RuntimeError("raw tensor bytes are little-endian; big-endian hosts are unsupported")


def tensor_to_bytes(t: torch.Tensor) -> bytes:
    """Contiguous little-endian raw bytes of a tensor's elements (row-major)."""
    _require_little_endian()
    dtype_name(t.dtype)  # only wire-representable dtypes
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    # Viewing as uint8 also handles bfloat16 and bool, which numpy cannot export directly.
    return flat.view(torch.uint8).numpy().tobytes()


def tensor_from_bytes(
    data: bytes | bytearray | memoryview, shape: Sequence[int], dtype: torch.dtype
) -> torch.Tensor:
    """Rebuild a writable CPU tensor from raw little-endian bytes."""
    _require_little_endian()
    dtype_name(dtype)
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise FrameError(f"tensor shape {shape} has a negative dimension")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise FrameError(
            f"tensor of shape {shape} and {dtype} needs {expected} bytes, got {len(data)}"
        )
    if expected == 0:
        return torch.empty(shape, dtype=dtype)  # torch.frombuffer rejects empty buffers
    # bytearray copies, so the result owns writable memory instead of aliasing immutable bytes.
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if dtype is torch.bool and bool((raw > 1).any()):
        raise FrameError("bool tensor bytes must be 0 or 1")
    return raw.view(dtype).reshape(shape)


def tensor_frame(t: torch.Tensor, kind: Kind, **fields: Any) -> bytes:
    """Encode a tensor as a raw (codec 0) frame; fields are the other Header fields."""
    header = Header(kind=kind, shape=tuple(t.shape), dtype=t.dtype, **fields)
    return encode_frame(header, tensor_to_bytes(t))


def frame_tensor(frame: Frame) -> torch.Tensor:
    """Decode the raw tensor carried by a codec-0 frame."""
    h = frame.header
    if h.codec != 0 or h.dtype is None:
        raise FrameError(f"frame is not a raw tensor (codec {h.codec}, dtype {h.dtype})")
    return tensor_from_bytes(frame.payload, h.shape, h.dtype)


def pack_state(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialise a state dict as u32 index length, JSON index, then raw tensor bytes."""
    index, blobs, offset = [], [], 0
    for name, value in state.items():
        if not isinstance(name, str):
            raise TypeError(f"state key {name!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state[{name!r}] is {type(value).__name__}, not a tensor")
        blob = tensor_to_bytes(value)
        index.append(
            {
                "name": name,
                "dtype": dtype_name(value.dtype),
                "shape": list(value.shape),
                "offset": offset,
                "nbytes": len(blob),
            }
        )
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(index, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return b"".join([_INDEX_LEN.pack(len(head)), head, *blobs])


def _load_index(mv: memoryview) -> tuple[list, int]:
    if len(mv) < _INDEX_LEN.size:
        raise StateFormatError("packed state shorter than its 4-byte index length")
    (n,) = _INDEX_LEN.unpack_from(mv)
    start = _INDEX_LEN.size + n
    if start > len(mv):
        raise StateFormatError(f"state index of {n} bytes overruns the {len(mv)}-byte buffer")
    try:
        index = json.loads(bytes(mv[_INDEX_LEN.size : start]).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, too deep, too many digits
        raise StateFormatError(f"state index is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(index, list):
        raise StateFormatError("state index is not a JSON list")
    return index, start


def unpack_state(data: bytes | bytearray | memoryview) -> dict[str, torch.Tensor]:
    """Inverse of pack_state; raises StateFormatError naming the offending key."""
    mv = memoryview(data).cast("B")
    index, start = _load_index(mv)
    blob = mv[start:]
    state: dict[str, torch.Tensor] = {}
    expected_offset = 0
    for i, entry in enumerate(index):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            raise StateFormatError(f"state index entry {i} has no string name")
        if name in state:
            raise StateFormatError(f"{name!r}: duplicate key")
        try:
            dtype = DTYPES_BY_NAME[entry["dtype"]]
            shape = [int(d) for d in entry["shape"]]
            offset, nbytes = int(entry["offset"]), int(entry["nbytes"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise StateFormatError(f"{name!r}: bad index entry ({exc!r})") from None
        # Tensors are stored back to back, so any gap or overlap means corruption.
        if offset != expected_offset or nbytes < 0 or offset + nbytes > len(blob):
            raise StateFormatError(
                f"{name!r}: bytes [{offset}, {offset + nbytes}) out of range "
                f"(expected offset {expected_offset}, {len(blob)} data bytes)"
            )
        try:
            state[name] = tensor_from_bytes(blob[offset : offset + nbytes], shape, dtype)
        except ValueError as exc:
            raise StateFormatError(f"{name!r}: {exc}") from None
        expected_offset = offset + nbytes
    if expected_offset != len(blob):
        raise StateFormatError(
            f"{len(blob) - expected_offset} unindexed bytes after the last tensor"
        )
    return state
