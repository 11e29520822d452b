"""Coded weights exchange: updates quantised and compressed, reconstructed bit for bit."""

from __future__ import annotations

import asyncio
import lzma
from functools import partial

import pytest
import torch

from splitfedzip.codecs import make_codec
from splitfedzip.config import CodecConfig, ConfigError, load_config
from splitfedzip.experiments import train
from splitfedzip.experiments.train import metrics_rows, run_embedded
from splitfedzip.federation.weights import (
    WEIGHTS_CODECS,
    UpdateError,
    _levels,
    decode_update,
    encode_feedback,
    encode_update,
    state_digest,
    uncoded_size,
)
from splitfedzip.parties.crossing import CodecReceiver, CodecSender, SyncError
from splitfedzip.parties.federation_server import FederationServer, SubmissionRefused
from splitfedzip.parties.messages import (
    Ids,
    coded_weights_frame,
    control_frame,
    control_of,
    frames,
    receive,
    tensor_message,
    weights_frame,
)
from splitfedzip.parties.models import ClientModel, exchanged_state
from splitfedzip.wire import Kind, Phase, Split, pack_state

TINY = [
    "data.image_size=64", "data.num_samples=12", "data.test_samples=4", "model.base_width=4",
    "train.rounds=2", "train.local_epochs=1", "train.batch_size=2", "train.device=cpu",
    "codec_options.latent_channels=8", "codec=ae", "lambda=10", "scheme=fg",
]  # fmt: skip

#: The small learned codec of these tests, as a receiver builds it.
AE = partial(make_codec, "ae", 4, latent_channels=8)


def _models(seed: int = 0):
    cfg = load_config(None, TINY)
    ref = exchanged_state(ClientModel(cfg, 2, 0))
    gen = torch.Generator().manual_seed(seed)
    new = {
        k: v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v + 3
        for k, v in ref.items()
    }
    return ref, new


def _run_watched(cfg):
    """``run_embedded(cfg)`` and the clients it built (their servers are reachable from them)."""
    clients = []
    real = train.Client

    def spy(*a, **k):
        clients.append(real(*a, **k))
        return clients[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "Client", spy)
        return run_embedded(cfg), clients


@pytest.fixture(scope="module")
def coded_run():
    """``_run_watched`` of TINY with each weights codec, run once for the tests that read it."""
    runs = {}

    def run(codec: str):
        if codec not in runs:
            runs[codec] = _run_watched(
                load_config(None, [*TINY, f"federation.weights_codec={codec}"])
            )
        return runs[codec]

    return run


@pytest.mark.parametrize(
    "codec, tolerance", [("float16", 1e-3), ("int8", 1 / 127), ("int4", 1 / 7), ("int2", 2 / 1)]
)
def test_update_round_trip_is_bit_identical_and_within_the_quantisation_step(codec, tolerance):
    ref, new = _models()
    payload, adopted = encode_update(new, ref, codec)
    decoded = decode_update(payload, ref, codec)
    # The receiver reconstructs exactly the model the sender adopted.
    assert state_digest(decoded) == state_digest(adopted)
    assert len(payload) < len(pack_state(new)) / 2  # random updates: the worst case
    assert uncoded_size(payload) == len(pack_state(new))  # what float32 would have sent
    for k, v in new.items():
        if not v.is_floating_point():
            assert torch.equal(decoded[k], v), k  # integer counters cross exactly
            continue
        # At most half a level of the row's scale (max |update| / levels) off; int2's scale
        # is at most the largest update, so it is off by less than that.
        step = (v - ref[k]).abs().max()
        # Vectors (BatchNorm's running_var among them) cross as float16 under int4 and int2.
        bound = 1e-3 if codec in ("int4", "int2") and v.dim() < 2 else tolerance
        # (The scale crosses as bfloat16, rounded up by at most 1.2%.)
        assert (decoded[k] - v).abs().max() <= 1.012 * bound * step / 2 + 1e-7, k


def test_ternary_levels_minimise_each_rows_squared_error():
    gen = torch.Generator().manual_seed(2)
    # Rows of 64 values: shorter ones share one scale (MIN_ROW).
    delta = torch.randn(6, 4, 4, 4, generator=gen) * torch.logspace(-3, 0, 6)[:, None, None, None]
    delta[2] = 0  # a row of zeros keeps nothing
    q, scale = _levels(delta, "int2")
    assert set(q.unique().tolist()) <= {-1, 0, 1} and not q[2].any()
    rows, levels = delta.reshape(6, -1), q.reshape(6, -1).float()
    error = (rows - scale[:, None] * levels).square().sum(dim=1)
    # No other number of kept values, each with its best scale, does better; rounding to the
    # largest update (TernGrad's scale) does worse.
    energy = rows.square().sum(1)
    for k in range(1, rows.shape[1] + 1):
        top = rows.abs().topk(k, dim=1).values
        assert bool((error <= energy - top.sum(1) ** 2 / k + 1e-6 * energy).all()), k
    amax = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-30)
    rounded = (rows - amax * torch.round(rows / amax)).square().sum(dim=1)
    assert bool((error <= rounded + 1e-9).all()) and float(error.sum()) < 0.8 * float(rounded.sum())


def test_sparse_ternary_levels_keep_at_most_the_fraction_asked_and_code_smaller():
    ref, new = _models()
    name = next(k for k, v in ref.items() if v.dim() == 4 and v[0].numel() >= 64)
    delta = new[name] - ref[name]
    rows = delta.reshape(delta.shape[0], -1)
    cap = -(-rows.shape[1] // 4)
    q, scale = _levels(delta, "int2", keep=0.25)
    nonzero = q.reshape(rows.shape[0], -1).ne(0).sum(dim=1)
    assert bool((nonzero <= cap).all()) and bool((nonzero >= 1).all())
    # Each row's scale is the mean of what it keeps: the best ±a for those positions, and no
    # smaller k does better.
    error = (rows - scale[:, None] * q.reshape(rows.shape).float()).square().sum(dim=1)
    for k in range(1, cap + 1):
        top = rows.abs().topk(k, dim=1).values
        assert bool((error <= rows.square().sum(1) - top.sum(1) ** 2 / k + 1e-6).all()), k
    dense, _ = encode_update(new, ref, "int2")
    sparse, adopted = encode_update(new, ref, "int2", keep=0.25)
    assert len(sparse) < 0.85 * len(dense)
    # The receiver needs no knob: the levels decode as any int2 update's.
    assert state_digest(decode_update(sparse, ref, "int2")) == state_digest(adopted)
    for bad in (
        ["federation.weights_keep=0"],
        ["federation.weights_codec=int8", "federation.weights_keep=0.5"],
    ):
        with pytest.raises(ConfigError, match="federation.weights_keep"):
            load_config(None, [*TINY, *bad])


def test_error_feedback_sends_late_what_each_update_lost():
    ref, _ = _models()
    gen = torch.Generator().manual_seed(1)
    floats = [k for k, v in ref.items() if v.is_floating_point()]
    true = {k: torch.zeros_like(ref[k]) for k in floats}
    crossed = {k: torch.zeros_like(ref[k]) for k in floats}
    held, residual = ref, None
    for _ in range(3):  # three rounds: each update trains from the model the receiver holds
        new = {
            k: v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
            for k, v in held.items()
        }
        payload, adopted, residual = encode_feedback(new, held, "int2", residual)
        assert state_digest(decode_update(payload, held, "int2")) == state_digest(adopted)
        for k in floats:
            true[k] += new[k] - held[k]
            crossed[k] += adopted[k] - held[k]
        held = adopted
    # Nothing is dropped: what crossed plus what is still owed is the sum of the true updates,
    # though each ternary update loses much of itself.
    for k in floats:
        assert torch.allclose(crossed[k] + residual[k], true[k], atol=1e-5), k
    lost = sum(float(residual[k].norm() ** 2) for k in floats)
    assert lost > 0.01 * sum(float(true[k].norm() ** 2) for k in floats)
    first = floats[0]
    bad = dict(residual) | {first: torch.zeros(1)}
    with pytest.raises(UpdateError, match=f"{first!r}: the error-feedback residual"):
        encode_feedback(new, held, "int2", bad)


def test_error_feedback_runs_and_needs_a_lossy_exchange():
    on = [
        "federation.weights_codec=int2",
        "federation.weights_error_feedback=true",
        "federation.weights_keep=0.25",
    ]
    _, clients = _run_watched(load_config(None, [*TINY, *on]))
    server = clients[0].federation._handler
    # Every party carries a residual to the next round, and every client still reconstructs
    # the server's global model bit for bit.
    assert server.weights_residual is not None
    for c in clients:
        assert c.weights_residual is not None
        assert state_digest(c.reference[1]) == server.digest(len(server.globals) - 1)
    with pytest.raises(ConfigError, match="federation.weights_error_feedback"):
        load_config(None, [*TINY, "federation.weights_error_feedback=true"])


def test_the_first_round_crosses_with_its_own_codec():
    sets = ["federation.weights_codec=int2", "federation.weights_codec_first=int8"]
    cfg = load_config(None, [*TINY, *sets, "federation.weights_error_feedback=true"])
    assert [cfg.weights_codec_of(r) for r in range(3)] == ["int8", "int2", "int2"]
    _, clients = _run_watched(cfg)
    server = clients[0].federation._handler
    # Round 0's update to global 1 is int8, round 1's to global 2 ternary; round 0's
    # submissions decoded as int8 too, or the server would have refused them.
    for r, codec, other in ((1, "int8", "int2"), (2, "int2", "int8")):
        held = decode_update(server.updates[r], server.globals[r - 1], codec)
        assert state_digest(held) == server.digest(r)
        with pytest.raises(UpdateError):
            decode_update(server.updates[r], server.globals[r - 1], other)
    for c in clients:
        assert state_digest(c.reference[1]) == server.digest(2)
    with pytest.raises(ConfigError, match="federation.weights_codec_first"):
        load_config(None, [*TINY, "federation.weights_codec_first=int8"])


def _recoded(payload: bytes, values: bytes) -> bytes:
    """``payload``'s declared size ahead of an xz stream of other ``values``."""
    return payload[:8] + lzma.compress(values)


def _values(payload: bytes) -> bytes:
    return lzma.decompress(payload[8:])


def test_a_corrupted_or_mismatched_update_names_what_is_wrong():
    ref, new = _models()
    payload, _ = encode_update(new, ref, "int8")
    with pytest.raises(UpdateError, match="does not decode"):
        decode_update(payload[:-9] + bytes(9), ref, "int8")
    first = next(iter(ref))
    short = _recoded(payload, _values(payload)[:10])
    with pytest.raises(UpdateError, match=f"{first!r}: the update ends"):
        decode_update(short, ref, "int8")
    with pytest.raises(UpdateError, match="bytes after the last tensor"):
        decode_update(_recoded(payload, _values(payload) + b"x"), ref, "int8")
    with pytest.raises(UpdateError, match="expected size"):  # inflates no further than that
        decode_update(_recoded(payload, bytes(10**7)), ref, "int8")
    # An update to a model of other shapes, and levels no int2 sender writes.
    other = dict(ref) | {first: torch.zeros(3, *ref[first].shape[1:])}
    with pytest.raises(UpdateError, match="stands for a .*-byte model, the receiver's is"):
        decode_update(payload, other, "int8")
    ternary, _ = encode_update(new, ref, "int2")
    values = bytearray(_values(ternary))
    values[4 * ref[first].shape[0]] = 5  # the first level, after the first tensor's scales
    with pytest.raises(UpdateError, match=f"{first!r}: levels beyond ±1"):
        decode_update(_recoded(ternary, bytes(values)), ref, "int2")


def test_the_tested_model_crosses_only_when_the_client_lacks_it(coded_run, monkeypatch):
    _, clients = coded_run("int8")
    server = clients[0].federation._handler
    monkeypatch.setattr(server, "val_loss", {0: 0.9, 1: 0.8, 2: 0.7})  # the last is the best
    ids = Ids(client=0, phase=Phase.TEST)

    def ask(**held) -> list:
        message = control_frame(ids, {"type": "best_global"} | held)
        return frames(asyncio.run(server.handle(message, 0)).message)

    digest = server.digest
    nothing = ask(have=2, digest=digest(2))  # what every client holds after the last round
    coded = ask(have=1, digest=digest(1))
    whole = ask()
    stale = ask(have=2, digest=digest(1))  # a digest that is not global 2's: sent whole
    assert len(nothing) == 1
    assert [f.header.codec for f in coded[1:]] == [WEIGHTS_CODECS["int8"]]
    assert coded[1].header.codec_version == 1 and coded[1].header.round == 2
    assert [f.header.codec for f in whole[1:]] == [f.header.codec for f in stale[1:]] == [0]
    assert all(control_of(r[0], "best_global")["digest"] == digest(2) for r in (nothing, whole))
    decoded = decode_update(coded[1].payload, server.globals[1], "int8")
    assert state_digest(decoded) == digest(2)


def test_a_bad_submission_is_refused_naming_round_client_and_tensor():
    cfg = load_config(None, [*TINY, "federation.weights_codec=int8"])
    server = FederationServer(cfg, 2, 2, deadlines=False)
    ref = server.globals[0]
    payload, _ = encode_update(ref, ref, "int8")
    short = _recoded(payload, _values(payload)[:10])
    ids = Ids(round=0, client=1)

    async def go():
        await server.handle(control_frame(ids, {"type": "join", "train_samples": 5}), 1)
        submit = control_frame(ids, {"type": "submit", "train_samples": 5})
        await server.handle(submit + coded_weights_frame(ids, 2, 0, short), 1)

    first = next(iter(ref))
    with pytest.raises(SubmissionRefused, match=rf"client 1: round 0 .*{first!r}: the update"):
        asyncio.run(go())


@pytest.mark.parametrize("codec", ["float16", "int8", "int2"])
def test_every_client_holds_the_servers_global_model_bit_for_bit(codec, coded_run):
    res, clients = coded_run(codec)
    server = clients[0].federation._handler
    final = len(server.globals) - 1
    assert final == 2 and set(server.updates) == {1, 2}
    for c in clients:
        held, state = c.reference
        assert held == final and state_digest(state) == server.digest(final)
    # Coded updates replace whole float32 models in every weights frame but the test's.
    weights = [r for r in res.ledger.rows if r.kind == "weights" and r.phase != "test"]
    whole = len(pack_state(server.globals[0]))
    assert weights and all(r.bytes < whole / 3 for r in weights)
    # The test's model is the last one validated, which every client holds: nothing crosses.
    assert not [r for r in res.ledger.rows if r.kind == "weights" and r.phase == "test"]
    # Before and after coding: each coded frame stands for the float32 frame of its model.
    float32 = len(weights_frame(Ids(), server.globals[final]))
    assert all(r.uncoded_bytes == float32 for r in weights)
    s = res.summary
    assert s["bytes_weights_uncoded"] == len(weights) * float32 > s["bytes_weights"]
    assert s["bytes_codec_sync_uncoded"] > s["bytes_codec_sync"]
    uncoded = s["bytes_weights_uncoded"] + s["bytes_codec_sync_uncoded"]
    assert s["bytes_federation_uncoded"] == uncoded
    assert s["bytes_total_uncoded"] - s["bytes_total"] == (
        s["bytes_federation_uncoded"] - s["bytes_federation"]
    )
    rows = metrics_rows(res)
    for column in ("bytes_weights_uncoded", "bytes_codec_sync_uncoded"):
        assert sum(r[column] for r in rows) == s[column], column


@pytest.mark.parametrize("codec", ["float16", "int8", "int2"])
def test_lossy_codec_snapshots_decode_bit_identically_over_many_batches(codec):
    torch.manual_seed(0)
    opts = CodecConfig(sync_every=1, lr=1e-2)
    sender = CodecSender(make_codec("ae", 4, latent_channels=8), 1.0, opts, codec)
    rx = CodecReceiver(AE, torch.device("cpu"), codec)
    raw = len(pack_state(sender.live.decoder_state()))
    version, sync = sender.publish()
    assert len(sync) < raw / 2
    rx.sync(version, sync)
    x = torch.randn(2, 4, 16, 16)
    for _ in range(12):  # a fresh lossy snapshot ahead of every tensor, each an update
        enc = sender.encode(x)
        message, _ = tensor_message(Ids(), Kind.FEATURE, Split.S1, x.shape, enc)
        decoded = receive(rx, frames(message), Kind.FEATURE, "S1 features")
        _, snap = sender._snapshots[0]
        with torch.no_grad():
            assert torch.equal(decoded, snap.decompress(enc.payload, x.shape))
        sender.live.train()
        sender.loss(sender.forward(x), 64 * 64).backward()
        sender.step()
    assert rx.version == sender.version == 12
    # A receiver that missed a sync refuses the next one rather than decode with other weights.
    version, sync = sender.publish()
    with pytest.raises(SyncError, match="refers to version"):
        CodecReceiver(AE, torch.device("cpu"), codec).sync(version, sync)


def test_a_corrupted_coded_sync_names_the_tensor():
    torch.manual_seed(0)
    sender = CodecSender(make_codec("ae", 4, latent_channels=8), 1.0, CodecConfig(), "int2")
    rx = CodecReceiver(AE, torch.device("cpu"), "int2")
    version, sync = sender.publish()
    data = _values(sync)
    # Values only cross: the receiver takes names and shapes from its own decoder.
    floats = [k for k, v in rx.codec.decoder_state().items() if v.is_floating_point()]
    assert not any(k.encode() in data for k in floats)
    with pytest.raises(SyncError, match=f"version 1: {floats[-1]!r}: the coded state ends 1 bytes"):
        rx.sync(version, _recoded(sync, data[:-1]))
    with pytest.raises(SyncError, match="1 bytes after the last tensor"):
        rx.sync(version, _recoded(sync, data + b"x"))
    rx.sync(version, sync)
    assert state_digest(rx.codec.decoder_state()) == state_digest(
        sender._snapshots[0][1].decoder_state()
    )
