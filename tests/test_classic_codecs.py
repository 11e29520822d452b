"""The classic codecs: exact round trips, what top-k keeps, error feedback, payload sizes."""

from __future__ import annotations

import math
import struct
from functools import partial

import pytest
import torch

from splitfedzip.codecs import CodecError, make_codec
from splitfedzip.codecs.histogram import PRECISION, Histogram
from splitfedzip.codecs.quantized import channel_groups, pack, per_symbol, quantize
from splitfedzip.codecs.streams import STREAM_OVERHEAD
from splitfedzip.codecs.topk import GAP_SLOTS, kept
from splitfedzip.config import CodecConfig, load_config
from splitfedzip.experiments.train import run_embedded
from splitfedzip.parties.crossing import CodecReceiver, CodecSender
from splitfedzip.parties.messages import Ids, frames, receive, tensor_message
from splitfedzip.wire import Kind, Split

SHAPE = (2, 4, 8, 8)
CASES = [
    ("fp16", {}),
    ("bf16", {}),
    *(("int", {"bits": b}) for b in (1, 2, 3, 5, 8)),
    ("int", {"bits": 4, "scale": "channel"}),
    ("topk", {"topk_fraction": 0.1}),
    ("topk", {"topk_fraction": 1.0}),
    ("topk", {"topk_fraction": 0.3, "topk_value_bits": 3, "scale": "channel"}),
    ("randtopk", {"topk_fraction": 0.2, "randtopk_alpha": 0.5}),
]


def features(shape=SHAPE, seed=0) -> torch.Tensor:
    """ReLU-like features: half zeros."""
    return torch.relu(torch.randn(shape, generator=torch.Generator().manual_seed(seed)))


def gradients(shape=SHAPE, seed=1) -> torch.Tensor:
    """Gradient-sized values, far below float16's smallest normal number."""
    return 1e-7 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def round_trip(codec, x: torch.Tensor) -> torch.Tensor:
    """``x`` coded and decoded."""
    return codec.decompress(codec.compress(x), tuple(x.shape))


@pytest.mark.parametrize("name, options", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("make", [features, gradients])
def test_round_trip_is_exact(name, options, dtype, make):
    codec = make_codec(name, SHAPE[1], **options)
    x = make().to(dtype)
    with torch.no_grad():
        ref = codec.eval()(x)
    data = codec.compress(x)
    assert data == ref.payload
    decoded = codec.decompress(data, SHAPE)
    assert decoded.dtype == torch.float32 and torch.equal(decoded, ref.x_hat)
    # In training too: the payload is the one the forward drew, and it decodes to its x_hat.
    out = codec.train()(x)
    assert torch.equal(codec.decompress(out.payload, SHAPE), out.x_hat)
    # A receiver built alone decodes it: nothing is synced.
    assert torch.equal(make_codec(name, SHAPE[1]).decompress(data, SHAPE), decoded)


def test_fp16_scales_by_a_power_of_two_so_gradients_keep_their_precision():
    g = gradients()
    decoded = round_trip(make_codec("fp16", 4), g)
    assert torch.allclose(decoded, g, rtol=2**-11, atol=0)  # float16's mantissa, every value
    assert (g.half().float() - g).abs().max() > 1e-2 * g.abs().max()  # plain float16 loses them
    x = torch.tensor([1.0, -0.5, 3.0, 0.0]).view(1, 1, 2, 2)  # exact in float16: unchanged
    assert torch.equal(round_trip(make_codec("fp16", 1), x), x)


def test_bf16_is_torch_bfloat16():
    x = features()
    decoded = round_trip(make_codec("bf16", 4), x)
    assert torch.equal(decoded, x.bfloat16().float())


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_int_uses_at_most_2_to_the_bits_levels_within_half_a_step(bits):
    x = gradients()
    decoded = round_trip(make_codec("int", 4, bits=bits), x)
    assert decoded.unique().numel() <= 2**bits
    step = (x.max() - x.min()) / (2**bits - 1)
    assert (decoded - x).abs().max() <= step / 2 * (1 + 1e-5)


def test_int_per_channel_ranges_follow_each_channel():
    x = features()
    x[:, 0] *= 1e-3  # one channel far smaller than the others
    err = {}
    for scale in ("tensor", "channel"):
        codec = make_codec("int", 4, bits=4, scale=scale)
        err[scale] = (round_trip(codec, x) - x)[:, 0].abs().max()
    assert err["channel"] < 0.1 * err["tensor"]


@pytest.mark.parametrize("name", ["topk", "randtopk"])
@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_topk_keeps_exactly_k_values_per_element(name, fraction):
    x = torch.randn(3, 4, 8, 8) + 10.0  # no zeros, so every kept position is nonzero
    codec = make_codec(name, 4, topk_fraction=fraction, randtopk_alpha=0.5)
    k = kept(fraction, 4 * 8 * 8)
    assert k == max(1, round(fraction * 256))
    for out in (codec.eval()(x), codec.train()(x)):
        decoded = codec.decompress(out.payload, tuple(x.shape)).flatten(1)
        assert ((decoded != 0).sum(dim=1) == k).all()
        kept_values = decoded[decoded != 0]
        assert torch.equal(kept_values, x.flatten(1)[decoded != 0].half().float())
    # Evaluation keeps the largest magnitudes.
    decoded = codec.decompress(codec.compress(x), tuple(x.shape)).flatten(1)
    threshold = x.flatten(1).abs().topk(k, dim=1).values[:, -1:]
    assert torch.equal(decoded != 0, x.flatten(1).abs() >= threshold)


def test_randtopk_draws_outside_the_top_k_in_training_only():
    x = torch.randn(4, 4, 16, 16)
    codec = make_codec("randtopk", 4, topk_fraction=0.1, randtopk_alpha=0.5)
    top = make_codec("topk", 4, topk_fraction=0.1)
    assert codec.compress(x) == top.compress(x)  # evaluation: plain top-k
    torch.manual_seed(0)
    drawn = codec.train()(x).x_hat != 0
    best = top.decompress(top.compress(x), tuple(x.shape)) != 0
    outside = (drawn & ~best).sum().item() / drawn.sum().item()
    assert 0.2 < outside < 0.8  # alpha = 0.5 of the mass lies outside the top k


def test_the_gradient_passes_straight_through_and_only_where_topk_kept():
    x = features().requires_grad_(True)
    out = make_codec("int", 4, bits=2)(x)
    out.x_hat.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    x.grad = None
    out = make_codec("topk", 4, topk_fraction=0.1)(x)
    out.x_hat.sum().backward()
    assert torch.equal(x.grad, (out.x_hat != 0).float())


# --- payload sizes, as docs/codecs.md describes them --------------------------------------


def stream_bounds(symbols: list[list[int]], tables: list[Histogram]) -> tuple[float, float]:
    """Bytes of an rANS stream of in-table symbols: their code length, and that plus overhead."""
    bits = 0.0
    for run, table in zip(symbols, tables, strict=True):
        assert max(run) - table.offset < len(table.freqs) - 1  # no escapes
        bits += sum(PRECISION - math.log2(table.freqs[s - table.offset]) for s in run)
    return bits / 8, bits / 8 + STREAM_OVERHEAD


@pytest.mark.parametrize("name, size", [("fp16", lambda n: 1 + 2 * n), ("bf16", lambda n: 2 * n)])
def test_half_precision_payloads_are_exactly_their_values(name, size):
    for shape in (SHAPE, (1, 3, 5, 7)):
        assert len(make_codec(name, shape[1]).compress(features(shape))) == size(math.prod(shape))


@pytest.mark.parametrize("bits, scale", [(2, "tensor"), (3, "channel"), (8, "tensor")])
def test_int_payload_is_header_ranges_table_and_stream(bits, scale):
    x = features((2, 4, 16, 16))
    data = make_codec("int", 4, bits=bits, scale=scale).compress(x)
    assert struct.unpack_from("<BB", data) == (bits, scale == "channel")
    groups = 4 if scale == "channel" else 1
    table, at = Histogram.from_bytes(data, 2 + 8 * groups, "int")
    assert at == 2 + 8 * groups + 6 + 2 * len(table.freqs)
    # The stream codes the levels packed 8 // bits to a byte: ceil(n / (8 // bits)) symbols.
    groups_of = channel_groups(tuple(x.shape), scale, x.device)
    q, _ = quantize(x.reshape(-1), groups_of, groups, bits)
    packed = pack(q, bits).tolist()
    assert len(packed) == -(-x.numel() // per_symbol(bits))
    low, high = stream_bounds([packed], [table])
    assert low <= len(data) - at <= high + 0.01 * low


def test_topk_payload_is_header_gap_table_values_and_stream():
    x = torch.randn(2, 4, 8, 8)
    k = kept(0.25, 256)
    data = make_codec("topk", 4, topk_fraction=0.25).compress(x)
    assert struct.unpack_from("<IB", data) == (k, 0)
    table, at = Histogram.from_bytes(data, 5, "topk")
    assert len(table.freqs) <= GAP_SLOTS + 1
    values = at + 1 + 2 * 2 * k  # exponent, then float16 values
    idx = x.flatten(1).abs().topk(k, dim=1).indices.sort(dim=1).values
    gaps = (torch.diff(idx, dim=1, prepend=torch.full((2, 1), -1)) - 1).reshape(-1).tolist()
    low, high = stream_bounds([gaps], [table])
    assert low <= len(data) - values <= high + 0.01 * low


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, options", CASES)
def test_bad_payloads_and_tensors_are_clear_errors(name, options):
    codec = make_codec(name, SHAPE[1], **options)
    data = codec.compress(features())
    for bad in (b"", data[:5], data[:-3]):
        with pytest.raises(CodecError, match=name):
            codec.decompress(bad, SHAPE)
    with pytest.raises(CodecError, match="NaN or infinite"):
        codec.compress(torch.full(SHAPE, math.nan))
    with pytest.raises(CodecError, match="4-d"):
        codec.compress(torch.zeros(4, 8))


@pytest.mark.parametrize(
    "name, options, message",
    [("int", {"bits": 9}, "bits must be 1-8"), ("topk", {"topk_fraction": 0.0}, "fraction"),
     ("topk", {"topk_value_bits": 0}, "bits must be 1-8"),
     ("randtopk", {"randtopk_alpha": 1.0}, "alpha"), ("int", {"scale": "row"}, "scale")],
)  # fmt: skip
def test_bad_options_name_the_option(name, options, message):
    with pytest.raises(CodecError, match=message):
        make_codec(name, 4, **options)


# --- on a crossing: the sender's error feedback, nothing to sync ---------------------------


def crossing(name: str, **options) -> tuple[CodecSender, CodecReceiver]:
    opts = CodecConfig(**options)
    codec = make_codec(name, 4, topk_fraction=opts.topk_fraction, bits=opts.bits)
    sender = CodecSender(codec.train(), 1.0, opts)
    return sender, CodecReceiver(partial(make_codec, name, 4), torch.device("cpu"))


def send(sender: CodecSender, rx: CodecReceiver, x: torch.Tensor, training: bool = True):
    """One training (or eval) crossing: forward, encode, frame, decode."""
    out = sender.forward(x) if training else None
    enc = sender.encode(x, training=training)
    message, _ = tensor_message(Ids(), Kind.FEATURE, Split.S1, x.shape, enc)
    received = frames(message)
    assert len(received) == 1 and enc.version == 0 and enc.sync is None
    return receive(rx, received, Kind.FEATURE, "S1 features"), out


def test_classic_senders_publish_nothing_and_send_what_the_forward_drew():
    sender, rx = crossing("randtopk", topk_fraction=0.1)
    assert sender.publish() is None and sender.loss(sender.forward(features()), 64) is None
    for seed in range(3):
        x = features(seed=seed)
        decoded, out = send(sender, rx, x)
        assert torch.equal(decoded, out.x_hat)
    decoded, _ = send(sender, rx, x, training=False)
    assert torch.equal(decoded, sender.live.eval()(x).x_hat)


def test_error_feedback_carries_the_residual_into_the_next_tensor():
    sender, rx = crossing("topk", topk_fraction=0.05, error_feedback=True)
    x = features()
    total = torch.zeros_like(x)
    for step in range(1, 6):
        decoded, _ = send(sender, rx, x)
        total += decoded
        residual = sender._feedback.residual
        # What crossed plus what is still owed is every tensor the sender was given.
        assert torch.allclose(total + residual, step * x, atol=1e-5)
    # Without feedback the same top 5 % crosses every time; with it, the rest catches up.
    plain, rx2 = crossing("topk", topk_fraction=0.05)
    assert torch.equal(send(plain, rx2, x)[0], send(plain, rx2, x)[0])
    assert (total != 0).sum() > 2 * (send(plain, rx2, x)[0] != 0).sum()
    # Evaluation neither adds nor changes the residual; a new round drops it.
    before = sender._feedback.residual.clone()
    assert torch.equal(send(sender, rx, x, training=False)[0], send(plain, rx2, x, False)[0])
    assert torch.equal(sender._feedback.residual, before)
    sender.reset_optimizers()
    assert sender._feedback.residual is None
    # A tensor of another shape (an epoch's last batch) starts afresh.
    send(sender, rx, x)
    y = features((1, 4, 8, 8))
    assert torch.equal(send(sender, rx, y)[0], send(plain, rx2, y)[0])


def test_error_feedback_with_a_v2_server_is_refused():
    with pytest.raises(ValueError, match="codec_options.error_feedback"):
        load_config(None, ["codec=topk", "scheme=f", "codec_options.error_feedback=true",
                           "federation.variant=v2", "federation.select=last"])  # fmt: skip


# --- a real run: nothing of theirs crosses at round boundaries ------------------------------

TINY = [
    "data.image_size=64", "data.num_samples=10", "data.test_samples=4", "model.base_width=4",
    "train.rounds=2", "train.local_epochs=1", "train.batch_size=4", "train.device=cpu",
    "train.lr=1e-3",
]  # fmt: skip


def test_a_tiny_run_with_classic_codecs_syncs_nothing():
    runs = {}
    variants = {
        "nc": ["scheme=nc"],
        "int": ["scheme=fg", "codec=int", "codec_options.bits=4"],
        "topk": ["scheme=fg", "codec=randtopk", "codec_options.error_feedback=true",
                 "codec_options.topk_fraction=0.05"],
    }  # fmt: skip
    for name, extra in variants.items():
        result = run_embedded(load_config(None, [*TINY, *extra]))
        kinds: dict[str, int] = {}
        for row in result.ledger.rows:
            kinds[row.kind] = kinds.get(row.kind, 0) + row.bytes
        runs[name] = (result.summary, kinds)
    nc_summary, nc_kinds = runs["nc"]
    for name in ("int", "topk"):
        summary, kinds = runs[name]
        assert "codec_sync" not in kinds  # no snapshots, at round starts or ahead of tensors
        assert kinds["weights"] == nc_kinds["weights"]  # no codec weights averaged either
        assert summary["bytes_split"] < nc_summary["bytes_split"] / 4
        assert 0 < summary["bpp_s1"] < 32 and math.isfinite(summary["test_mji"])
