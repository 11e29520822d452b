"""Hostile bytes against the frame parser and the payload parsers behind it.

Every input either parses or raises the documented error (FrameError, StateFormatError,
ControlError); nothing else escapes, nothing hangs, and no header field sizes an allocation
before it is checked against the bytes actually there.
"""

from __future__ import annotations

import json
import math
import random
import struct
import time
import tracemalloc
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitfedzip.wire import (
    DTYPE_IDS,
    HEADER_SIZE,
    MAX_NDIM,
    ControlError,
    FrameError,
    Header,
    Kind,
    Phase,
    Split,
    StateFormatError,
    decode_frame,
    encode_frame,
    frame_size,
    pack_control,
    pack_state,
    read_frames,
    unpack_control,
    unpack_state,
)

LIMIT = 1 << 20  # the payload limit the parser is given, as a server gives its own
U32 = st.integers(0, 2**32 - 1)
# Field offsets in the fixed header (docs/wire-format.md).
FIELDS = {"kind": (5, "B"), "split": (6, "B"), "phase": (7, "B"), "dtype": (8, "B"),
          "ndim": (9, "B"), "codec": (10, "H"), "batch": (20, "I"),
          "payload_length": (32, "Q")}  # fmt: skip


@st.composite
def frames(draw) -> bytes:
    """A valid frame: a raw tensor of a small shape, or an opaque payload (codec, state, JSON)."""
    ids = {name: draw(U32) for name in ("round", "epoch", "batch", "client", "codec_version")}
    common = dict(
        kind=draw(st.sampled_from(Kind)), split=draw(st.sampled_from(Split)),
        phase=draw(st.sampled_from(Phase)), **ids,
    )  # fmt: skip
    if draw(st.booleans()):
        dtype = draw(st.sampled_from(list(DTYPE_IDS)))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
        size = math.prod(shape) * dtype.itemsize
        payload = draw(st.binary(min_size=size, max_size=size))
        return encode_frame(Header(shape=shape, dtype=dtype, **common), payload)
    shape = tuple(draw(st.lists(U32, max_size=MAX_NDIM)))
    header = Header(shape=shape, codec=draw(st.integers(0, 0xFFFF)), **common)
    return encode_frame(header, draw(st.binary(max_size=300)))


def _reseal(body: bytes) -> bytes:
    """Recompute the CRC32 trailer, so that the checks after it are reached too."""
    return body[:-4] + struct.pack("<I", zlib.crc32(body[:-4]))


_OPS = ("flip", "cut", "extend", "splice", "field", "field", "redivide", "redivide", "random")


def mutations(frame: bytes, rng: random.Random, count: int = 15) -> list[bytes]:
    """Mutants of ``frame``: bytes flipped, cut, extended or spliced in, a header field
    rewritten (the CRC resealed or not), dims and payload redivided so that the lengths still
    add up, or random bytes. Drawn from ``rng``, which hypothesis seeds: cheap, so that the
    budget goes to inputs rather than to drawing them."""
    out = []
    for _ in range(count):
        data = bytearray(frame)
        ops = [
            "flip",
            "cut",
            "extend",
            "splice",
            "field",
            "field",
            "redivide",
            "redivide",
            "random",
        ]
        op = rng.choice(ops)
        if op == "flip":
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= rng.randint(1, 255)
        elif op == "cut":
            del data[rng.randrange(len(data)) :]
        elif op == "extend":
            data += rng.randbytes(rng.randint(1, 64))
        elif op == "splice":
            at = rng.randint(0, len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        elif op == "field" and len(data) >= HEADER_SIZE + 4:
            offset, fmt = FIELDS[rng.choice(sorted(FIELDS))]
            bits = 8 * struct.calcsize(fmt)
            # Small values hit the id and ndim checks; any value hits the length ones.
            value = rng.choice([rng.randint(0, 12), rng.getrandbits(bits)])
            struct.pack_into("<" + fmt, data, offset, value)
            if rng.random() < 0.7:
                data = bytearray(_reseal(bytes(data)))
        elif op == "redivide" and len(data) >= HEADER_SIZE + 4:
            # Another ndim, the payload length to match: the frame stays whole and intact, so
            # the checks after the length and CRC ones see it.
            data += rng.randbytes(rng.choice([0, 0, 4, 8, 32]))
            ndim = rng.choice([rng.randint(0, 12), rng.randint(0, 255)])
            payload = len(data) - HEADER_SIZE - 4 * ndim - 4
            if payload >= 0:
                struct.pack_into("<B", data, 9, ndim)
                struct.pack_into("<Q", data, 32, payload)
                data = bytearray(_reseal(bytes(data)))
        else:
            data = bytearray(rng.randbytes(rng.randint(0, 2 * HEADER_SIZE)))
        out.append(bytes(data))
    return out


def check_frame(data: bytes) -> None:
    """The parser's contract on one input."""
    try:
        frame = decode_frame(data, max_payload=LIMIT)
    except FrameError:
        frame = None
    try:
        size = frame_size(data, max_payload=LIMIT)
        assert size <= HEADER_SIZE + 4 * MAX_NDIM + LIMIT + 4
    except FrameError:
        assert frame is None
    try:
        assert read_frames(data, max_payload=LIMIT) == ([frame] if frame else [])
    except FrameError:
        assert frame is None
    if frame is None:
        return
    assert encode_frame(frame.header, frame.payload) == data  # one encoding per frame
    try:  # what a party does next with the payload
        if frame.header.kind == Kind.CONTROL:
            unpack_control(frame.payload)
        elif frame.header.kind in (Kind.WEIGHTS, Kind.CODEC_SYNC):
            unpack_state(frame.payload)
    except (ControlError, StateFormatError):
        pass


def test_ten_thousand_generated_and_mutated_frames():
    checked = []

    @settings(
        max_examples=650, derandomize=True, database=None, deadline=2000,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )  # fmt: skip
    @given(frame=frames(), seed=st.integers(0, 2**32 - 1))
    def fuzz(frame: bytes, seed: int) -> None:
        for mutant in [frame, *mutations(frame, random.Random(seed))]:
            check_frame(mutant)
            checked.append(len(mutant))

    start = time.perf_counter()
    fuzz()
    assert len(checked) >= 10_000
    assert time.perf_counter() - start < 60  # no input makes the parser slow


def _state(rng: random.Random) -> bytes:
    """A packed state dict of a few small tensors."""
    dtypes = list(DTYPE_IDS)
    return pack_state({
        f"m{i}.{rng.choice(['weight', 'bias', 'é'])}": torch.zeros(
            [rng.randint(0, 3) for _ in range(rng.randint(0, 3))], dtype=rng.choice(dtypes)
        )
        for i in range(rng.randint(0, 3))
    })  # fmt: skip


def _index(rng: random.Random) -> bytes:
    """A state whose index entries have one or two fields of the wrong kind or absurd size."""
    values = [-(2**70), -1, 7, 2**40, 2**70, 1.5, 1e999, "x", None, [2**20, 2**20], [-1], {}]
    index = []
    for i in range(rng.randint(1, 3)):
        entry = {"name": f"w{i}", "dtype": "float32", "shape": [1], "offset": 4 * i, "nbytes": 4}
        for key in rng.sample(sorted(entry), rng.randint(1, 2)):
            if rng.random() < 0.9:
                entry[key] = rng.choice(values)
            else:
                del entry[key]
        index.append(entry)
    text = json.dumps(index).encode()
    return struct.pack("<I", len(text)) + text + bytes(4 * len(index))


def _control(rng: random.Random, depth: int = 0) -> object:
    """A JSON value, nested a little."""
    kind = rng.randrange(6 if depth < 3 else 4)
    if kind == 0:
        return rng.randint(-(2**70), 2**70)
    if kind == 1:
        return rng.choice([None, True, 1.5, "type", "é"])
    if kind == 2:
        return "".join(rng.choice('ab\\"{}[]') for _ in range(rng.randint(0, 5)))
    if kind == 3:
        return rng.random()
    if kind == 4:
        return [_control(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {str(i): _control(rng, depth + 1) for i in range(rng.randint(0, 3))}


def test_payload_parsers_under_hostile_bytes():
    checked = []

    @settings(max_examples=300, derandomize=True, database=None, deadline=2000)
    @given(seed=st.integers(0, 2**32 - 1))
    def fuzz(seed: int) -> None:
        rng = random.Random(seed)
        packed = _state(rng)
        for mutant in [packed, _index(rng), *mutations(packed + bytes(40), rng, 8)]:
            try:
                unpack_state(mutant)
            except StateFormatError:
                pass
            checked.append(mutant)
        text = json.dumps({"type": "x", "v": _control(rng)}).encode()
        for mutant in [text, *mutations(text + b" " * 40, rng, 8)]:
            try:
                unpack_control(mutant)
            except ControlError:
                pass
            checked.append(mutant)

    fuzz()
    assert len(checked) >= 5000


@pytest.mark.parametrize(
    "data",
    [
        # 2**64 - 1 payload bytes declared, 40 present
        b"SFZ\0\1\1\0\0\0\0\0\0" + bytes(20) + struct.pack("<Q", 2**64 - 1),
        # a raw float64 tensor of 8 dims of 2**32 - 1, with its CRC intact
        _reseal(
            b"SFZ\0\1\1\0\0\4\x08\0\0"
            + bytes(20)
            + struct.pack("<Q", 16)
            + struct.pack("<8I", *[2**32 - 1] * 8)
            + bytes(16)
            + bytes(4)
        ),
        # a state whose index claims a tensor of 2**40 elements
        pack_control({"type": "x"}),
        struct.pack("<I", 60)
        + json.dumps(
            [{"name": "w", "dtype": "float64", "shape": [2**20, 2**20], "offset": 0, "nbytes": 8}]
        )
        .encode()
        .ljust(60)
        + bytes(8),
        # JSON nested far deeper than the parser's recursion limit
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["payload-length", "raw-dims", "control", "state-shape", "deep-json"],
)
def test_no_header_field_sizes_an_allocation(data):
    tracemalloc.start()
    try:
        for parse in (decode_frame, unpack_state, unpack_control):
            try:
                parse(data)
            except (FrameError, StateFormatError, ControlError):
                pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(data) + (1 << 20)
