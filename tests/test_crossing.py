"""The sender's training levers and sync policy, on one crossing, with real bitstreams."""

import copy
import re
from functools import partial

import pytest
import torch

from splitfedzip.codecs import make_codec
from splitfedzip.config import CodecConfig
from splitfedzip.parties.crossing import CodecReceiver, CodecSender, IntegrityError, SyncError
from splitfedzip.parties.messages import Ids, ProtocolError, frames, receive, tensor_message
from splitfedzip.wire import Kind, Split

SHAPE = (2, 4, 16, 16)


def pair(**options) -> tuple[CodecSender, CodecReceiver]:
    """A sender and a receiver of an ``ae`` crossing, the receiver synced to version 1."""
    torch.manual_seed(0)
    sender = CodecSender(make_codec("ae", 4, latent_channels=8), 1.0, CodecConfig(**options))
    rx = CodecReceiver(partial(make_codec, "ae", 4, latent_channels=8), torch.device("cpu"))
    rx.sync(*sender.publish())
    return sender, rx


def send(sender: CodecSender, rx: CodecReceiver, x: torch.Tensor, training: bool = True):
    """Code ``x`` into a message, decode it; returns (decoded tensor, number of frames)."""
    enc = sender.encode(x, training=training)
    message, est = tensor_message(Ids(), Kind.FEATURE, Split.S1, x.shape, enc)
    received = frames(message)
    assert est == {len(received) - 1: enc.est_bits}  # the estimate is the tensor frame's
    return receive(rx, received, Kind.FEATURE, "S1 features"), len(received)


def test_warm_up_trains_and_the_next_tensor_carries_the_warmed_codec():
    sender, rx = pair(warmup_steps=5, lr=1e-2)
    x = torch.randn(SHAPE)
    before = [p.detach().clone() for p in sender.live.parameters()]
    sender.warm_up(x, pixels=64 * 64)
    assert any(not torch.equal(a, b) for a, b in zip(before, sender.live.parameters(), strict=True))
    decoded, count = send(sender, rx, x)
    assert count == 2 and rx.version == 2
    with torch.no_grad():
        assert torch.equal(decoded, sender.live.eval()(x).x_hat)
    sender.warm_up(x, pixels=64 * 64)  # once per sender: a no-op now
    assert send(sender, rx, x)[1] == 1


def test_sync_every_publishes_ahead_of_every_nth_training_tensor():
    sender, rx = pair(sync_every=2)
    x = torch.randn(SHAPE)
    counts = []
    for _ in range(4):
        counts.append(send(sender, rx, x)[1])
        sender.live.train()
        sender.loss(sender.forward(x), 64 * 64).backward()
        sender.step()
    assert counts == [1, 1, 2, 1]


def test_evaluation_codes_with_the_live_codec():
    sender, rx = pair()
    x = torch.randn(SHAPE)
    sender.loss(sender.forward(x), 64 * 64).backward()
    sender.step()
    decoded, count = send(sender, rx, x, training=False)
    assert count == 2  # the trained codec was published ahead of the evaluation tensor
    with torch.no_grad():
        assert torch.equal(decoded, sender.live.eval()(x).x_hat)
    assert send(sender, rx, x, training=False)[1] == 1  # nothing moved since


def test_local_steps_lower_the_rate_and_entropy_lr_is_its_own_group():
    x = torch.randn(SHAPE)
    rates = []
    for steps in (0, 20):
        sender, _ = pair(local_steps=steps, entropy_lr=1e-2, lr=1e-3)
        assert [g["lr"] for g in sender.opt.param_groups] == [1e-3, 1e-2]
        sender.loss(sender.forward(x), 64 * 64).backward()
        sender.step(x, pixels=64 * 64)
        with torch.no_grad():
            rates.append(float(sender.live.eval()(x).bits()))
    assert rates[1] < 0.8 * rates[0]


@pytest.mark.parametrize("name", ["ae", "cheng2020-attn"])
def test_the_latent_gain_trains_at_entropy_lr(name):
    codec = make_codec(name, 4, latent_channels=8, latent_gain=4.0)
    sender = CodecSender(codec, 1.0, CodecConfig(entropy_lr=1e-2, lr=1e-3, latent_gain=4.0))
    slow, fast = sender.opt.param_groups
    assert (slow["lr"], fast["lr"]) == (1e-3, 1e-2)
    assert any(p is codec.latent_gain.log_gain for p in fast["params"])
    assert not any(p is codec.latent_gain.log_gain for p in slow["params"])
    codec = make_codec(name, 4, latent_channels=8, latent_gain=4.0)
    opts = CodecConfig(entropy_lr=1e-2, lr=1e-3, latent_gain=4.0, latent_gain_lr=0.1)
    groups = CodecSender(codec, 1.0, opts).opt.param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-2, 0.1]
    assert groups[2]["params"] == [codec.latent_gain.log_gain]


def test_clip_norm_bounds_the_gradient_each_step_applies():
    sender, _ = pair(clip_norm=1e-3)
    seen = []
    step = sender.opt.step

    def recording_step():
        grads = [p.grad for p in sender.live.parameters() if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        step()

    sender.opt.step = recording_step
    x = torch.randn(SHAPE) * 100
    sender.loss(sender.forward(x), 1).backward()
    sender.step()
    assert seen and seen[0] <= 1e-3 * 1.0001


def test_a_receiver_that_decodes_other_symbols_names_crossing_batch_and_version():
    sender, rx = pair()
    rx.sync(*sender.publish())  # version 2 on both sides
    cdf = rx.codec.entropy_bottleneck._quantized_cdf  # the receiver's tables drift
    cdf.copy_(cdf.roll(1, dims=0))
    ids = Ids(round=3, epoch=2, batch=5, client=1)
    message, _ = tensor_message(
        ids, Kind.FEATURE, Split.S1, SHAPE, sender.encode(torch.randn(SHAPE))
    )
    with pytest.raises(IntegrityError) as err:
        receive(rx, frames(message), Kind.FEATURE, "S1 features", SHAPE)
    assert re.search(
        r"S1 features of client 1, round 3 epoch 2 batch 5 \(train\), ae codec version 2: "
        r"codec 'ae': decoded 64 symbols other than were coded",
        str(err.value),
    ), err.value


def test_a_tensor_of_another_shape_is_refused_before_decoding():
    sender, rx = pair()
    enc = sender.encode(torch.randn(SHAPE))
    big = (2**20, 4, 16, 16)  # a header may claim anything: the receiver never sizes by it
    message, _ = tensor_message(Ids(), Kind.FEATURE, Split.S1, big, enc)
    with pytest.raises(ProtocolError, match=r"S1 features: shape \(1048576, 4, 16, 16\), expected"):
        receive(rx, frames(message), Kind.FEATURE, "S1 features", SHAPE)


@pytest.mark.parametrize("name, size", [("ae", 16), ("cheng2020-attn", 64)])
def test_a_republished_snapshot_equals_a_fresh_copy_of_the_live_codec(name, size):
    torch.manual_seed(0)
    sender = CodecSender(make_codec(name, 4, latent_channels=8), 1e3, CodecConfig(lr=1e-2))
    sender.publish()
    x = torch.randn(1, 4, size, size)
    for _ in range(2):
        sender.loss(sender.forward(x), size * size).backward()
        sender.step()
    sender.publish()
    fresh = copy.deepcopy(sender.live).eval()
    fresh.update()
    held = sender._snapshots[0][1].state_dict()
    assert held.keys() == fresh.state_dict().keys()
    assert all(torch.equal(held[k], v) for k, v in fresh.state_dict().items())


def test_a_released_receiver_decodes_as_before_with_what_it_keeps():
    sender, rx = pair()
    x = torch.randn(SHAPE)
    expected, _ = send(sender, rx, x, training=False)
    # Kept (a peer that may send no sync): built again with the same decoder, no sync needed.
    rx.release(keep=True)
    assert rx.codec is None and rx.version == 1
    decoded, count = send(sender, rx, x, training=False)
    assert count == 1 and torch.equal(decoded, expected)
    # Not kept (every round start syncs): a tensor without a sync ahead of it is refused.
    rx.release(keep=False)
    assert rx.codec is None and rx.decoder_state() is None and rx.version == 0
    with pytest.raises(SyncError, match="a codec sync is missing"):
        send(sender, rx, x, training=False)
    rx.sync(*sender.publish())
    assert torch.equal(send(sender, rx, x, training=False)[0], expected)
