import itertools
import json
import struct
import zlib

import pytest
import torch

from splitfedzip.wire import (
    HEADER_SIZE,
    ControlError,
    Frame,
    FrameError,
    Header,
    Kind,
    Phase,
    Split,
    StateFormatError,
    control_frame,
    decode_frame,
    encode_frame,
    frame_size,
    frame_tensor,
    pack_control,
    pack_state,
    read_frames,
    tensor_frame,
    tensor_from_bytes,
    tensor_to_bytes,
    unpack_control,
    unpack_state,
)

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.uint8,
    torch.int8,
    torch.int32,
    torch.int64,
    torch.bool,
]


def _sample(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype is torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 100).to(dtype)
    return torch.randint(0, 100, shape, generator=g).to(dtype)


def _reseal(frame: bytes, offset: int, value: bytes) -> bytes:
    """Overwrite bytes and recompute the CRC, to reach checks that run after the CRC."""
    body = bytearray(frame[:-4])
    body[offset : offset + len(value)] = value
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


@pytest.fixture
def frame_bytes() -> bytes:
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    return tensor_frame(t, Kind.FEATURE, round=3, epoch=1, batch=7, client=2, split=Split.S1)


def test_labels():
    assert Kind.FEATURE.label == "feature"
    assert Kind.CODEC_SYNC.label == "codec_sync"
    assert [s.label for s in Split] == ["", "s1", "s2"]
    assert [p.label for p in Phase] == ["train", "val", "test"]


@pytest.mark.parametrize(("kind", "phase", "split"), list(itertools.product(Kind, Phase, Split)))
def test_header_round_trip(kind, phase, split):
    header = Header(
        kind,
        round=4_000_000_000,
        epoch=5,
        batch=6,
        client=7,
        split=split,
        phase=phase,
        codec=0xFFFF,
        codec_version=9,
        shape=(4, 1),
    )
    data = encode_frame(header, b"opaque bitstream")
    assert len(data) == HEADER_SIZE + 2 * 4 + 16 + 4 == frame_size(data)
    assert decode_frame(data) == Frame(header, b"opaque bitstream")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3, 4), (1, 0, 3), (1,) * 8])
def test_tensor_frame_round_trip(dtype, shape):
    t = _sample(shape, dtype)
    frame = decode_frame(tensor_frame(t, Kind.GRADIENT, split=Split.S2, phase=Phase.VAL))
    assert frame.header.shape == shape and frame.header.dtype == dtype
    out = frame_tensor(frame)
    assert out.dtype == dtype and torch.equal(out, t)
    out.zero_()  # must be writable, not a view on immutable bytes


def test_empty_payload_and_memoryview():
    data = encode_frame(Header(Kind.CONTROL), b"")
    assert decode_frame(memoryview(data)).payload == b""
    assert decode_frame(bytearray(data)).header == Header(Kind.CONTROL)


def test_read_frames_concatenated(frame_bytes):
    others = [encode_frame(Header(Kind.WEIGHTS, round=i), bytes([i]) * i) for i in range(4)]
    frames = read_frames(frame_bytes + b"".join(others))
    assert [f.header.kind for f in frames] == [Kind.FEATURE] + [Kind.WEIGHTS] * 4
    assert [f.payload for f in frames[1:]] == [bytes([i]) * i for i in range(4)]
    assert read_frames(b"") == []
    with pytest.raises(FrameError, match="truncated"):
        read_frames(frame_bytes + others[0][:-1])


def test_frame_size_needs_only_fixed_header(frame_bytes):
    assert frame_size(frame_bytes[:HEADER_SIZE]) == len(frame_bytes)
    with pytest.raises(FrameError, match="truncated"):
        frame_size(frame_bytes[: HEADER_SIZE - 1])


@pytest.mark.parametrize(
    "pos", [0, 3, 4, 5, 8, 9, 10, 12, 30, 32, 39, HEADER_SIZE, HEADER_SIZE + 5, 50, -5, -4, -1]
)
def test_any_flipped_byte_is_rejected(frame_bytes, pos):
    corrupted = bytearray(frame_bytes)
    corrupted[pos] ^= 0x20
    with pytest.raises(FrameError):
        decode_frame(bytes(corrupted))


def test_payload_flip_reports_crc(frame_bytes):
    corrupted = bytearray(frame_bytes)
    corrupted[-6] ^= 1
    with pytest.raises(FrameError, match="CRC32 mismatch: frame corrupted"):
        decode_frame(bytes(corrupted))


@pytest.mark.parametrize(
    "cut", [0, 1, 3, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 5, -9, -4, -1]
)
def test_truncation(frame_bytes, cut):
    with pytest.raises(FrameError, match="frame truncated"):
        decode_frame(frame_bytes[:cut])


def test_truncated_payload_message(frame_bytes):
    with pytest.raises(FrameError, match="header says 24 payload bytes, only 10 present"):
        decode_frame(frame_bytes[: HEADER_SIZE + 8 + 10])


def test_trailing_bytes(frame_bytes):
    with pytest.raises(FrameError, match="trailing"):
        decode_frame(frame_bytes + b"\x00")


def test_wrong_magic(frame_bytes):
    with pytest.raises(FrameError, match="not a SplitFedZip frame"):
        decode_frame(b"PNG\x00" + frame_bytes[4:])


def test_wrong_version(frame_bytes):
    with pytest.raises(FrameError, match="version 2 .*supports 1"):
        decode_frame(_reseal(frame_bytes, 4, b"\x02"))


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (5, b"\x09", "unknown kind id 9"),
        (6, b"\x07", "unknown split id 7"),
        (7, b"\x05", "unknown phase id 5"),
        (8, b"\xee", "unknown dtype id 238"),
        (9, b"\x09", "ndim 9 exceeds"),
        (8, b"\x02", "does not match shape"),  # float16 header on float32 bytes
    ],
)
def test_bad_ids_with_valid_crc(frame_bytes, offset, value, message):
    with pytest.raises(FrameError, match=message):
        decode_frame(_reseal(frame_bytes, offset, value))


def test_oversized_refused_before_reading_payload(frame_bytes):
    with pytest.raises(FrameError, match="payload of 24 bytes exceeds the limit of 16"):
        decode_frame(frame_bytes, max_payload=16)
    # A header claiming 1 TiB is refused from the header alone, without waiting for data.
    huge = frame_bytes[:32] + struct.pack("<Q", 1 << 40)
    with pytest.raises(FrameError, match="exceeds the limit"):
        decode_frame(huge)
    with pytest.raises(FrameError, match="exceeds the limit"):
        frame_size(huge)


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"round": -1}, "round"),
        ({"epoch": 1 << 32}, "epoch"),
        ({"client": 1.5}, "client"),
        ({"codec": 1 << 16}, "codec"),
        ({"codec_version": -3}, "codec_version"),
        ({"shape": (1,) * 9}, "shape"),
        ({"shape": (2, -1)}, "shape"),
        ({"split": 9}, "split"),
        ({"phase": -1}, "phase"),
        ({"dtype": torch.complex64}, "dtype"),
    ],
)
def test_header_validation(fields, name):
    with pytest.raises(ValueError, match=name):
        encode_frame(Header(Kind.FEATURE, **fields), b"")


def test_encode_validation():
    with pytest.raises(ValueError, match="kind"):
        Header(0)
    assert Header(Kind.WEIGHTS, round=torch.tensor(3), shape=torch.Size([2])).shape == (2,)
    with pytest.raises(ValueError, match="payload"):
        encode_frame(Header(Kind.FEATURE, shape=(2,), dtype=torch.float32), b"\x00" * 4)


def test_tensor_from_bytes_checks_size():
    with pytest.raises(ValueError, match="needs 24 bytes, got 20"):
        tensor_from_bytes(b"\x00" * 20, (2, 3), torch.float32)
    with pytest.raises(ValueError, match="0 or 1"):
        tensor_from_bytes(b"\x02", (1,), torch.bool)


def test_state_round_trip_bit_exact():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model(torch.randn(2, 3, 8, 8))  # update running stats and num_batches_tracked
    state = dict(model.state_dict())
    state.update({f"extra.{d}": _sample((3, 2), d, seed=i) for i, d in enumerate(DTYPES)})
    state["scalar.int32"] = torch.tensor(-7, dtype=torch.int32)
    state["empty"] = torch.empty(0, 5, dtype=torch.float16)
    state["nan"] = torch.tensor([float("nan"), -0.0, float("inf")])
    out = unpack_state(pack_state(state))
    assert list(out) == list(state)
    for name, t in state.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape, name
        assert tensor_to_bytes(out[name]) == tensor_to_bytes(t), name
        if name != "nan":
            assert torch.equal(out[name], t), name
    model.load_state_dict({k: out[k] for k in model.state_dict()})


def _packed(index, blob: bytes = b"", raw_index: bytes | None = None) -> bytes:
    head = raw_index if raw_index is not None else json.dumps(index).encode()
    return struct.pack("<I", len(head)) + head + blob


def _entry(**over):
    return {"name": "w", "dtype": "float32", "shape": [2], "offset": 0, "nbytes": 8, **over}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01", "shorter"),
        (_packed(None, raw_index=b"{not json"), "JSON"),
        (_packed(None, raw_index=b"\xff\xfe"), "JSON"),
        (_packed({"a": 1}), "not a JSON list"),
        (struct.pack("<I", 100) + b"[]", "overruns"),
        (_packed([{"dtype": "float32"}]), "no string name"),
        (_packed([_entry(dtype="complex64")], bytes(8)), "'w'.*bad index entry"),
        (_packed([_entry(shape="x")], bytes(8)), "'w'.*bad index entry"),
        (_packed([_entry(offset=4)], bytes(8)), "'w'.*out of range"),
        (_packed([_entry(nbytes=16)], bytes(8)), "'w'.*out of range"),
        (_packed([_entry(shape=[3])], bytes(8)), "'w'.*needs 12 bytes, got 8"),
        (_packed([_entry(), _entry(offset=8)], bytes(16)), "'w'.*duplicate"),
        (_packed([_entry()], bytes(9)), "unindexed"),
    ],
)
def test_malformed_state(data, message):
    with pytest.raises(StateFormatError, match=message):
        unpack_state(data)


def test_pack_state_rejects_non_tensors():
    with pytest.raises(TypeError, match="'a'"):
        pack_state({"a": [1, 2]})


def test_control_round_trip():
    msg = {"type": "round_start", "round": 3, "clients": [0, 1], "note": "µ"}
    data = pack_control(msg)
    assert data == json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()
    assert unpack_control(data) == msg
    frame = decode_frame(control_frame(msg, round=3))
    assert frame.header.kind is Kind.CONTROL and unpack_control(frame.payload) == msg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"{type", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"round": 1}', '"type"'),
        (b'{"type": 5}', '"type"'),
        (b'{"type": "x", "v": NaN}', "NaN"),
    ],
)
def test_control_errors(data, message):
    with pytest.raises(ControlError, match=message):
        unpack_control(data)


@pytest.mark.parametrize("msg", [{"round": 1}, {"type": ""}, {"type": "x", "v": object()}])
def test_pack_control_errors(msg):
    with pytest.raises(ControlError):
        pack_control(msg)
