"""Binary frame: the only envelope in which bytes cross between parties."""

from __future__ import annotations

import enum
import math
import operator
import struct
import zlib
from dataclasses import dataclass
from types import MappingProxyType

import torch

MAGIC = b"SFZ\x00"
VERSION = 1
MAX_NDIM = 8
DEFAULT_MAX_PAYLOAD = 1 << 30  # 1 GiB

# magic, version, kind, split, phase, dtype, ndim, codec, round, epoch, batch, client,
# codec_version, payload_length. "<" means little-endian with no padding.
_HEADER = struct.Struct("<4sBBBBBBHIIIIIQ")
HEADER_SIZE = _HEADER.size  # 40
_DIM = struct.Struct("<I")
_CRC = struct.Struct("<I")
CRC_SIZE = _CRC.size
_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF


class FrameError(ValueError):
    """A byte string is not a valid, intact SplitFedZip frame."""


class Kind(enum.IntEnum):
    """What a frame carries."""

    FEATURE = 1
    GRADIENT = 2
    WEIGHTS = 3
    CODEC_SYNC = 4
    CONTROL = 5

    @property
    def label(self) -> str:
        """Lower-case name, as printed in the ledger."""
        return self.name.lower()


class Split(enum.IntEnum):
    """Which split point of the model a frame belongs to."""

    NONE = 0
    S1 = 1
    S2 = 2

    @property
    def label(self) -> str:
        """Lower-case name; empty for NONE."""
        return "" if self is Split.NONE else self.name.lower()


class Phase(enum.IntEnum):
    """Training, validation or test traffic."""

    TRAIN = 0
    VAL = 1
    TEST = 2

    @property
    def label(self) -> str:
        """Lower-case name."""
        return self.name.lower()


# Ids are part of the wire format: never renumber, only append.
DTYPE_IDS: MappingProxyType[torch.dtype, int] = MappingProxyType(
    {
        torch.float32: 1,
        torch.float16: 2,
        torch.bfloat16: 3,
        torch.float64: 4,
        torch.uint8: 5,
        torch.int8: 6,
        torch.int32: 7,
        torch.int64: 8,
        torch.bool: 9,
    }
)
_DTYPES_BY_ID = MappingProxyType({i: d for d, i in DTYPE_IDS.items()})
DTYPES_BY_NAME: MappingProxyType[str, torch.dtype] = MappingProxyType(
    {str(d).removeprefix("torch."): d for d in DTYPE_IDS}
)


def dtype_to_id(dtype: torch.dtype | None) -> int:
    """Wire id of a dtype; 0 for None (payload is not a raw tensor)."""
    if dtype is None:
        return 0
    try:
        return DTYPE_IDS[dtype]
    except KeyError:
        raise ValueError(f"dtype: {dtype} has no wire id") from None


def dtype_from_id(dtype_id: int) -> torch.dtype | None:
    """Dtype for a wire id; None for 0."""
    if dtype_id == 0:
        return None
    try:
        return _DTYPES_BY_ID[dtype_id]
    except KeyError:
        raise FrameError(f"unknown dtype id {dtype_id}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """Short name of a supported dtype, e.g. "float32"."""
    dtype_to_id(dtype)  # reject unsupported dtypes with the same message
    return str(dtype).removeprefix("torch.")


def _check_uint(field: str, value: object, limit: int) -> int:
    # operator.index accepts numpy/torch integers but rejects floats; bools are a likely bug.
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{field}: expected an int, got {type(value).__name__}") from None
    if not 0 <= number <= limit:
        raise ValueError(f"{field}: {number} does not fit in [0, {limit}]")
    return number


@dataclass(frozen=True)
class Header:
    """Routing and typing metadata of one frame."""

    kind: Kind
    round: int = 0
    epoch: int = 0
    batch: int = 0
    client: int = 0
    split: Split = Split.NONE
    phase: Phase = Phase.TRAIN
    shape: tuple[int, ...] = ()
    dtype: torch.dtype | None = None
    codec: int = 0
    codec_version: int = 0

    def __post_init__(self) -> None:
        # Validate at construction so a bad header fails where it is built, not on the peer.
        for name, enum_type in (("kind", Kind), ("split", Split), ("phase", Phase)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum_type(value))
            except ValueError:
                raise ValueError(f"{name}: {value!r} is not a valid {enum_type.__name__}") from None
        for name in ("round", "epoch", "batch", "client", "codec_version"):
            object.__setattr__(self, name, _check_uint(name, getattr(self, name), _U32_MAX))
        object.__setattr__(self, "codec", _check_uint("codec", self.codec, _U16_MAX))
        shape = tuple(self.shape)
        if len(shape) > MAX_NDIM:
            raise ValueError(f"shape: {len(shape)} dims, at most {MAX_NDIM} allowed")
        shape = tuple(_check_uint(f"shape[{i}]", d, _U32_MAX) for i, d in enumerate(shape))
        object.__setattr__(self, "shape", shape)
        dtype_to_id(self.dtype)

    def raw_nbytes(self) -> int | None:
        """Payload size implied by shape and dtype for a raw tensor, else None."""
        if self.dtype is None or self.codec != 0:
            return None
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class Frame:
    """A decoded frame: header plus payload bytes."""

    header: Header
    payload: bytes


def encode_frame(header: Header, payload: bytes) -> bytes:
    """Serialise a header and payload into one frame with a CRC32 trailer."""
    if not isinstance(header, Header):
        raise TypeError(f"header: expected Header, got {type(header).__name__}")
    payload = bytes(payload)
    expected = header.raw_nbytes()
    if expected is not None and expected != len(payload):
        raise ValueError(
            f"payload: {len(payload)} bytes, but shape {header.shape} of {header.dtype} "
            f"needs {expected}"
        )
    fixed = _HEADER.pack(
        MAGIC,
        VERSION,
        header.kind,
        header.split,
        header.phase,
        dtype_to_id(header.dtype),
        len(header.shape),
        header.codec,
        header.round,
        header.epoch,
        header.batch,
        header.client,
        header.codec_version,
        len(payload),
    )
    body = b"".join([fixed, *(_DIM.pack(d) for d in header.shape), payload])
    return body + _CRC.pack(zlib.crc32(body))


def _parse_fixed(mv: memoryview, max_payload: int) -> tuple:
    """Unpack and sanity-check the fixed header; returns the struct fields."""
    if len(mv) < HEADER_SIZE:
        raise FrameError(
            f"frame truncated: need {HEADER_SIZE} header bytes, only {len(mv)} present"
        )
    fields = _HEADER.unpack_from(mv)
    if fields[0] != MAGIC:
        raise FrameError(f"not a SplitFedZip frame (magic {bytes(fields[0])!r})")
    if fields[1] != VERSION:
        raise FrameError(
            f"unsupported frame format version {fields[1]} (this reader supports {VERSION})"
        )
    if fields[6] > MAX_NDIM:
        raise FrameError(f"ndim {fields[6]} exceeds the maximum of {MAX_NDIM}")
    if fields[13] > max_payload:
        raise FrameError(f"payload of {fields[13]} bytes exceeds the limit of {max_payload}")
    return fields


def frame_size(
    data: bytes | bytearray | memoryview, *, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> int:
    """Total byte size of the frame starting at data[0]; needs HEADER_SIZE bytes."""
    fields = _parse_fixed(memoryview(data).cast("B"), max_payload)
    return HEADER_SIZE + _DIM.size * fields[6] + fields[13] + CRC_SIZE


def decode_frame(
    data: bytes | bytearray | memoryview, *, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> Frame:
    """Parse exactly one frame, verifying magic, version, limits, length and CRC32."""
    mv = memoryview(data).cast("B")
    fields = _parse_fixed(mv, max_payload)  # size limit checked before any payload copy
    ndim, payload_len = fields[6], fields[13]
    dims_end = HEADER_SIZE + _DIM.size * ndim
    payload_end = dims_end + payload_len
    total = payload_end + CRC_SIZE
    if len(mv) < total:
        if len(mv) < dims_end:
            raise FrameError(
                f"frame truncated: header says {ndim} dims ({dims_end - HEADER_SIZE} bytes), "
                f"only {len(mv) - HEADER_SIZE} present"
            )
        present = min(len(mv), payload_end) - dims_end
        if present == payload_len:
            raise FrameError(f"frame truncated: CRC32 trailer missing ({len(mv)}/{total} bytes)")
        raise FrameError(
            f"frame truncated: header says {payload_len} payload bytes, only {present} present"
        )
    if len(mv) > total:
        raise FrameError(f"{len(mv) - total} trailing bytes after a {total}-byte frame")
    (crc,) = _CRC.unpack_from(mv, payload_end)
    if zlib.crc32(mv[:payload_end]) != crc:
        raise FrameError("CRC32 mismatch: frame corrupted")
    # The CRC is intact, so unknown ids come from a newer or buggy sender, not line noise.
    try:
        kind = Kind(fields[2])
    except ValueError:
        raise FrameError(f"unknown kind id {fields[2]}") from None
    try:
        split = Split(fields[3])
    except ValueError:
        raise FrameError(f"unknown split id {fields[3]}") from None
    try:
        phase = Phase(fields[4])
    except ValueError:
        raise FrameError(f"unknown phase id {fields[4]}") from None
    dtype = dtype_from_id(fields[5])
    shape = tuple(d for (d,) in _DIM.iter_unpack(mv[HEADER_SIZE:dims_end]))
    header = Header(
        kind=kind,
        round=fields[8],
        epoch=fields[9],
        batch=fields[10],
        client=fields[11],
        split=split,
        phase=phase,
        shape=shape,
        dtype=dtype,
        codec=fields[7],
        codec_version=fields[12],
    )
    expected = header.raw_nbytes()
    if expected is not None and expected != payload_len:
        raise FrameError(
            f"raw payload of {payload_len} bytes does not match shape {shape} of {dtype} "
            f"({expected} bytes)"
        )
    return Frame(header, bytes(mv[dims_end:payload_end]))


def read_frames(
    data: bytes | bytearray | memoryview, *, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> list[Frame]:
    """Decode a buffer holding zero or more frames back to back."""
    mv = memoryview(data).cast("B")
    frames, offset = [], 0
    while offset < len(mv):
        size = frame_size(mv[offset:], max_payload=max_payload)
        frames.append(decode_frame(mv[offset : offset + size], max_payload=max_payload))
        offset += size
    return frames
