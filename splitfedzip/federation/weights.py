"""Coding of the weights exchanged for averaging: the update to a model the receiver holds,
quantised, then compressed with a stdlib lossless coder."""

from __future__ import annotations

import hashlib
import lzma
import math
import struct
from collections.abc import Mapping

import torch
from torch import Tensor

from ..wire import pack_state, tensor_from_bytes, tensor_to_bytes, unpack_state

#: federation.weights_codec -> the codec id its weights frames carry (0: raw float32 state).
WEIGHTS_CODECS = {"float32": 0, "float16": 1, "int8": 2, "int4": 3, "int2": 4}
#: The integer codecs' largest level: the update divided by max|update| / QMAX, rounded.
#: int2 is ternary: -1, 0, +1 times a row's scale, the one that minimises the row's squared
#: error (docs/protocol.md).
QMAX = {"int8": 127, "int4": 7, "int2": 1}
#: Codecs whose levels are too coarse for vectors: biases, norms and BatchNorm statistics
#: (under 1% of the values) cross as float16 differences instead. A ternary update to
#: running_var made variances negative and the model NaN (docs/protocol.md).
_COARSE = ("int4", "int2")
#: Scales cross as bfloat16: float32's range at half the bytes. The sender adopts the rounded
#: scale, as it adopts every level.
SCALE_DTYPE = torch.bfloat16
#: A weight tensor whose output channels hold fewer values than this gets one scale in all: a
#: scale per row of 9 values (the entropy bottleneck's density matrices) cost more bytes than
#: their levels (docs/protocol.md).
MIN_ROW = 64
#: xz preset: on real updates 7-9% smaller than zlib -9, and -9 gains nothing (docs/protocol.md).
PRESET = 6
#: Ahead of the xz stream: the size of the packed float32 state the payload stands for (what
#: the float32 exchange would send), for the ledger's uncoded bytes; the receiver checks it.
_UNCODED = struct.Struct("<Q")
_XZ_MAGIC = b"\xfd7zXZ\x00"


class UpdateError(ValueError):
    """A coded update cannot be applied to the reference model."""


def state_digest(state: Mapping[str, Tensor]) -> str:
    """SHA-256 of a state dict's packed bytes: equal digests mean bit-identical models."""
    return hashlib.sha256(pack_state(state)).hexdigest()


def uncoded_size(payload: bytes | memoryview) -> int | None:
    """The packed float32 size a coded payload declares; None for any other payload.

    A coded payload is the size, then an xz stream; a float32 state (``pack_state``) has
    UTF-8 JSON where the stream's magic would be, and UTF-8 never holds its byte 0xFD.
    """
    head = bytes(payload[: _UNCODED.size + len(_XZ_MAGIC)])
    if head[_UNCODED.size :] != _XZ_MAGIC:
        return None
    return _UNCODED.unpack_from(head)[0]


def _check_uncoded(payload: bytes, expected: int) -> None:
    declared = uncoded_size(payload)
    if declared != expected:
        raise UpdateError(
            f"the update stands for a {declared}-byte model, the receiver's is {expected} bytes"
        )


def _inflate(payload: bytes, limit: int, what: str, size: str) -> memoryview:
    """The xz stream after a coded payload's size header, inflated to at most ``limit`` bytes
    (a small hostile payload could expand to gigabytes); UpdateError names ``what``."""
    unpack = lzma.LZMADecompressor()
    try:
        data = memoryview(unpack.decompress(payload[_UNCODED.size :], max_length=limit + 1))
    except lzma.LZMAError as e:
        raise UpdateError(f"{what} does not decode: {e}") from None
    if not unpack.eof or unpack.unused_data:
        raise UpdateError(f"{what} is not one complete xz stream {size}")
    return data


def _coded_delta(name: str, delta: Tensor, codec: str, keep: float = 1.0) -> list[bytes]:
    """One float tensor's update as ``codec`` sends it: float16, or a scale and its levels."""
    if _halved(codec, delta.dim()):
        half = delta.to(torch.float16)
        if not bool(torch.isfinite(half).all()):
            raise UpdateError(f"{name!r}: the update overflows float16")
        return [tensor_to_bytes(half)]
    q, scale = _levels(delta, codec, keep)
    return [tensor_to_bytes(scale.to(SCALE_DTYPE)), tensor_to_bytes(q)]


def _scale_rows(shape: tuple[int, ...] | torch.Size) -> int:
    """How many scales a quantised tensor of ``shape`` has: one per output channel (dim 0)
    for weight tensors whose channels hold at least MIN_ROW values, else one."""
    if len(shape) < 2 or math.prod(shape[1:]) < MIN_ROW:
        return 1
    return shape[0]


def _levels(delta: Tensor, codec: str, keep: float = 1.0) -> tuple[Tensor, Tensor]:
    # Per output channel (dim 0) for weight tensors (_scale_rows), per tensor for vectors and
    # short channels: the rows of a convolution differ in range by orders of magnitude. Levels
    # are stored one per byte whatever their number: xz packs the few distinct values of int4
    # and int2 by itself.
    qmax = QMAX[codec]
    rows = delta.reshape(_scale_rows(delta.shape), -1)
    if qmax == 1:
        return _ternary(rows, delta.shape, keep)
    amax = rows.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    # The levels are those of the scale that crosses, rounded up so that none clips.
    scale = (scale * (1 + 2**-7)).to(SCALE_DTYPE).float()
    q = torch.round(rows / scale[:, None]).clamp_(-qmax, qmax).to(torch.int8)
    return q.reshape(delta.shape), scale


def _ternary(rows: Tensor, shape: torch.Size, keep: float = 1.0) -> tuple[Tensor, Tensor]:
    """Ternary levels and a scale per row, minimising the row's squared error with at most
    ``keep`` of the row's values nonzero.

    Keeping the k largest magnitudes at ±a leaves the error ||x||² - S_k²/k at the best a
    (their mean, S_k / k): the k that maximises S_k²/k is chosen exactly. Rounding to the
    largest magnitude instead zeroes everything under half of it: on real updates the
    decoded error was 0.31 of the update against 0.19 (docs/protocol.md). Capping k is
    sparse ternary compression (Sattler et al., 2019): fewer nonzero levels, fewer bytes.
    """
    mag = rows.abs().sort(dim=1, descending=True).values
    sums = mag.cumsum(dim=1)
    counts = torch.arange(1, mag.shape[1] + 1, dtype=mag.dtype)
    # The cap keeps at least one value per row; beyond it S_k²/k is never chosen.
    cap = max(1, math.ceil(keep * mag.shape[1]))
    kept = (sums[:, :cap].square() / counts[:cap]).argmax(dim=1, keepdim=True)
    scale = sums.gather(1, kept)[:, 0] / (kept[:, 0] + 1).to(mag.dtype)
    smallest = mag.gather(1, kept)
    # A row of zeros keeps nothing (its smallest kept magnitude is 0, and sign(0) is 0).
    q = (torch.sign(rows) * (rows.abs() >= smallest)).to(torch.int8)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return q.reshape(shape), scale


def _halved(codec: str, ndim: int) -> bool:
    """Whether the update of a floating-point tensor of ``ndim`` dimensions crosses as float16."""
    return codec == "float16" or (codec in _COARSE and ndim < 2)


def _coded_size(v: Tensor, codec: str) -> int:
    """Bytes of one tensor's update before compression."""
    if not v.is_floating_point():
        return v.numel() * v.dtype.itemsize
    if _halved(codec, v.dim()):
        return 2 * v.numel()
    return v.numel() + SCALE_DTYPE.itemsize * _scale_rows(v.shape)


def _dequantise(name: str, q: Tensor, scale: Tensor, codec: str) -> Tensor:
    """Levels times their row's scale; UpdateError names a tensor whose levels are out of range."""
    qmax = QMAX[codec]
    if q.numel() and int(q.abs().max()) > qmax:
        raise UpdateError(f"{name!r}: levels beyond ±{qmax}, which {codec} never sends")
    return (q.float().reshape(_scale_rows(q.shape), -1) * scale.float()[:, None]).reshape(q.shape)


def encode_update(
    state: Mapping[str, Tensor], reference: Mapping[str, Tensor], codec: str, keep: float = 1.0
) -> tuple[bytes, dict[str, Tensor]]:
    """The coded update from ``reference`` to ``state``, and the model a receiver holding
    ``reference`` reconstructs from it (the sender adopts that one, bit for bit); ``keep``:
    ``int2``'s largest fraction of nonzero levels per row."""
    if WEIGHTS_CODECS.get(codec, 0) == 0:
        raise ValueError(f"weights codec {codec!r} codes no update")
    # The receiver knows every name, shape and dtype from its reference, so only the values
    # cross, tensor after tensor in the reference's order.
    blobs = []
    for name, ref in reference.items():
        value = state[name]
        if not ref.is_floating_point():
            blobs.append(tensor_to_bytes(value - ref))  # integer counters: exact
            continue
        blobs += _coded_delta(name, value.float() - ref.float(), codec, keep)
    uncoded = _UNCODED.pack(len(pack_state(state)))
    payload = uncoded + lzma.compress(b"".join(blobs), preset=PRESET)
    return payload, decode_update(payload, reference, codec)


def encode_feedback(
    state: Mapping[str, Tensor],
    reference: Mapping[str, Tensor],
    codec: str,
    residual: Mapping[str, Tensor] | None,
    keep: float = 1.0,
) -> tuple[bytes, dict[str, Tensor], dict[str, Tensor]]:
    """:func:`encode_update` with error feedback: the update to ``state`` plus ``residual``
    (what the sender's earlier updates lost; None: nothing yet), the model the receiver
    reconstructs, and what this update lost in turn (the next one's residual)."""
    # What crosses over all rounds plus the residual held is exactly the sum of the true
    # updates: an update's quantisation error is sent later instead of being dropped.
    target = dict(state)
    for name, ref in reference.items():
        if not ref.is_floating_point():
            continue  # integer counters cross exactly: nothing to carry over
        if residual is not None:
            carried = residual.get(name)
            if carried is None or carried.shape != ref.shape:
                raise UpdateError(f"{name!r}: the error-feedback residual does not fit the model")
            target[name] = state[name].float() + carried
    payload, held = encode_update(target, reference, codec, keep)
    lost = {
        name: target[name].float() - held[name].float()
        for name, ref in reference.items()
        if ref.is_floating_point()
    }
    return payload, held, lost


def decode_update(payload: bytes, reference: Mapping[str, Tensor], codec: str) -> dict[str, Tensor]:
    """The model ``reference`` plus the decoded update; UpdateError names the bad tensor."""
    size = sum(_coded_size(v, codec) for v in reference.values())
    # Never inflate more than the reference implies. A model of other names, shapes or dtypes
    # packs to another size: refused before inflating.
    _check_uncoded(payload, len(pack_state(reference)))
    data = _inflate(payload, size, "the update", "of the expected size")
    pos, out = 0, {}

    def take(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        nonlocal pos
        n = math.prod(shape) * dtype.itemsize
        if pos + n > len(data):
            raise UpdateError(f"{name!r}: the update ends {pos + n - len(data)} bytes short")
        pos += n
        return tensor_from_bytes(data[pos - n : pos], shape, dtype)

    for name, ref in reference.items():
        if not ref.is_floating_point():
            out[name] = ref + take(name, tuple(ref.shape), ref.dtype)
            continue
        if _halved(codec, ref.dim()):
            delta = take(name, tuple(ref.shape), torch.float16).float()
        else:
            scale = take(name, (_scale_rows(ref.shape),), SCALE_DTYPE)
            q = take(name, tuple(ref.shape), torch.int8)
            delta = _dequantise(name, q, scale, codec)
        value = (ref.float() + delta).to(ref.dtype)
        if not bool(torch.isfinite(value).all()):
            raise UpdateError(f"{name!r}: the updated values are not finite")
        out[name] = value
    if pos != len(data):
        raise UpdateError(f"{len(data) - pos} bytes after the last tensor of the update")
    return out


_REFERENCE = "#reference"  # the version of the state an update was coded against (0: none)
_TABLES = struct.Struct("<I")  # length of the packed integer tables ahead of the values
#: The floating-point tensors' shapes, (ndim, dims...) after one another: a few have shapes
#: that depend on the weights (a Gaussian conditional's scale_table is empty until update()).
_SHAPES = "#shapes"


def encode_state(
    state: Mapping[str, Tensor],
    reference: tuple[int, Mapping[str, Tensor]] | None,
    codec: str,
    keep: float = 1.0,
) -> tuple[bytes, dict[str, Tensor]]:
    """A coded state (codec syncs): the version it updates and the integer tables whole, then
    the floating-point tensors' values only, as updates to the same-shaped tensor of
    ``reference`` (version, state) or to zero; and the state the receiver reconstructs (the
    sender adopts that one, bit for bit)."""
    if WEIGHTS_CODECS.get(codec, 0) == 0:
        raise ValueError(f"weights codec {codec!r} codes no update")
    version, held = reference if reference is not None else (0, {})
    tables: dict[str, Tensor] = {_REFERENCE: torch.tensor([version], dtype=torch.int64)}
    blobs, shapes = [], []
    # The receiver's own decoder has the same floating-point tensors in the same order, so
    # their names need not cross: their shapes (a few grow with the weights) and values do.
    for name, value in state.items():
        if not value.is_floating_point():
            if value.dtype in (torch.float16, torch.int8, torch.uint8):
                raise UpdateError(f"{name!r}: {value.dtype} tables cannot cross coded")
            tables[name] = value
            continue
        shapes += [value.dim(), *value.shape]
        base = held.get(name)
        delta = value.float() - (base.float() if _same(base, value) else 0.0)
        blobs += _coded_delta(name, delta, codec, keep)
    tables[_SHAPES] = torch.tensor(shapes, dtype=torch.int32)
    packed = pack_state(tables)
    data = _TABLES.pack(len(packed)) + packed + b"".join(blobs)
    payload = _UNCODED.pack(len(pack_state(state))) + lzma.compress(data, preset=PRESET)
    return payload, decode_state(payload, reference, codec, len(data), state)


def _same(base: Tensor | None, value: Tensor) -> bool:
    return base is not None and base.shape == value.shape and base.dtype == value.dtype


def decode_state(
    payload: bytes,
    reference: tuple[int, Mapping[str, Tensor]] | None,
    codec: str,
    limit: int,
    layout: Mapping[str, Tensor],
) -> dict[str, Tensor]:
    """Inverse of :func:`encode_state`, inflating at most ``limit`` bytes; ``layout`` (the
    receiver's own decoder state) gives the floating-point tensors' names, shapes and order."""
    data = _inflate(payload, limit, "the coded state", f"of at most {limit} bytes")
    if len(data) < _TABLES.size:
        raise UpdateError("the coded state ends before its tables")
    (n,) = _TABLES.unpack_from(data)
    pos = _TABLES.size + n
    if pos > len(data):
        raise UpdateError(f"the coded state's tables ({n} bytes) run past its end")
    try:
        tables = unpack_state(data[_TABLES.size : pos])
    except ValueError as e:
        raise UpdateError(f"the coded state's tables do not decode: {e}") from None
    version, held = reference if reference is not None else (0, {})
    tag = tables.pop(_REFERENCE, None)
    if tag is None or tag.shape != (1,) or int(tag[0]) != version:
        raise UpdateError(f"the coded state refers to version {tag}, the receiver holds {version}")
    if any(t.is_floating_point() for t in tables.values()):
        raise UpdateError("the coded state's tables hold floating-point tensors")
    dims = tables.pop(_SHAPES, torch.zeros(0, dtype=torch.int32)).tolist()
    if any(d < 0 for d in dims):
        raise UpdateError("the coded state gives a negative dimension")

    def shape_of(name: str) -> tuple[int, ...]:
        ndim = dims.pop(0) if dims else None
        if ndim is None or ndim > len(dims):
            raise UpdateError(f"{name!r}: the coded state gives no shape for it")
        shape = tuple(dims[:ndim])
        del dims[:ndim]
        return shape

    def take(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        nonlocal pos
        size = math.prod(shape) * dtype.itemsize
        if pos + size > len(data):
            short = pos + size - len(data)
            raise UpdateError(f"{name!r}: the coded state ends {short} bytes short")
        pos += size
        return tensor_from_bytes(data[pos - size : pos], shape, dtype)

    out = {}
    for name, like in layout.items():
        if not like.is_floating_point():
            if name not in tables:
                raise UpdateError(f"{name!r}: the coded state lacks this table")
            out[name] = tables.pop(name)
            continue
        shape = shape_of(name)
        if _halved(codec, len(shape)):
            delta = take(name, shape, torch.float16).float()
        else:
            scale = take(name, (_scale_rows(shape),), SCALE_DTYPE)
            delta = _dequantise(name, take(name, shape, torch.int8), scale, codec)
        base = held.get(name)
        value = delta + base if _same(base, delta) else delta
        if not bool(torch.isfinite(value).all()):
            raise UpdateError(f"{name!r}: the updated values are not finite")
        out[name] = value
    if tables or dims:
        extra = list(tables)[:5] or "shapes"
        raise UpdateError(f"the coded state has {extra} the receiver's decoder has not")
    if pos != len(data):
        raise UpdateError(f"{len(data) - pos} bytes after the last tensor of the coded state")
    _check_uncoded(payload, len(pack_state(out)))
    return out
