import io

import pytest
import torch

from splitfedzip.codecs import CodecError, make_codec
from splitfedzip.codecs.registry import CODEC_NAMES
from splitfedzip.codecs.streams import CHECK_SIZE, STREAM_OVERHEAD, SymbolMismatch


def count(m):
    return sum(p.numel() for p in m.parameters())


def test_paper_codec_parameter_counts():
    assert count(make_codec("ae", 64)) == 635_328
    assert count(make_codec("cheng2020-attn", 64)) == 3_486_289
    assert count(make_codec("none", 64)) == 0


def test_cheng_latent_shapes():
    codec = make_codec("cheng2020-attn", 64).net
    y = codec.g_a(torch.zeros(1, 64, 128, 128))
    assert tuple(y.shape) == (1, 64, 8, 8)
    assert tuple(codec.h_a(y).shape) == (1, 64, 2, 2)


def fit(codec, x, steps):
    """Train briefly on rate + distortion so the entropy model means something."""
    opt = torch.optim.Adam([p for n, p in codec.named_parameters() if "quantiles" not in n], 1e-3)
    aux = torch.optim.Adam([p for n, p in codec.named_parameters() if "quantiles" in n], 1e-2)
    codec.train()
    for _ in range(steps):
        out = codec(x + 0.05 * x.std() * torch.randn_like(x))
        loss = out.bits() / x.numel() + 10 * out.mse
        opt.zero_grad(), aux.zero_grad()
        loss.backward()
        codec.aux_loss().backward()
        opt.step(), aux.step()
    for _ in range(300):  # the quantiles depend on the weights alone: fit them fully
        aux.zero_grad()
        codec.aux_loss().backward()
        aux.step()
    codec.eval()
    codec.update()
    return codec


def smooth(shape, scale=1.0):
    x = torch.nn.functional.avg_pool2d(torch.randn(shape), 5, 1, 2)
    return scale * x


CASES = [
    ("ae", False, (1, 8, 64, 64), 1.0),
    ("ae", True, (2, 8, 32, 32), 1e-7),  # gradient-sized values
    ("cheng2020-attn", False, (1, 8, 64, 64), 1.0),
    ("cheng2020-attn", True, (1, 8, 64, 64), 1e-7),
]


@pytest.mark.parametrize("name, normalize, shape, scale", CASES)
def test_bitstream_round_trip_is_exact_and_sized_as_estimated(name, normalize, shape, scale):
    codec = make_codec(name, shape[1], latent_channels=16, normalize=normalize)
    x = smooth(shape, scale)
    fit(codec, x, 100)
    with torch.no_grad():
        ref = codec(x)
    data = codec.compress(x)
    decoded = codec.decompress(data, shape)
    assert torch.equal(decoded, ref.x_hat)
    # The decoded tensor resembles the input: normalisation keeps tiny gradients alive.
    assert torch.nn.functional.cosine_similarity(decoded.flatten(), x.flatten(), 0) > 0.5
    # One stream per message, whatever the batch size and the number of entropy models.
    header = STREAM_OVERHEAD + (4 * shape[0] if normalize else 0)
    est = ref.bits().item() / 8
    assert abs(len(data) - est) <= 0.01 * est + header, (len(data), est)


def test_none_codec_is_raw_float32():
    codec = make_codec("none", 4)
    x = torch.randn(2, 4, 3, 5)
    data = codec.compress(x)
    assert len(data) == x.numel() * 4
    assert torch.equal(codec.decompress(data, tuple(x.shape)), x)
    with pytest.raises(CodecError, match="expected 480"):
        codec.decompress(data[:-1], tuple(x.shape))


@pytest.mark.parametrize("name, minimum", [("ae", 8), ("cheng2020-attn", 64)])
def test_too_small_tensor_names_minimum(name, minimum):
    codec = make_codec(name, 4, latent_channels=8)
    with pytest.raises(CodecError, match=f"minimum size {minimum}x{minimum}"):
        codec(torch.zeros(1, 4, minimum // 2, minimum // 2))


def test_truncated_bitstream_is_an_error():
    codec = make_codec("ae", 4, latent_channels=8).eval()
    codec.update()
    data = codec.compress(torch.randn(2, 4, 16, 16))
    # Any length can hold a compacted final state: the symbol check catches the cut.
    with pytest.raises(CodecError, match="not an rANS stream|symbols other than were coded"):
        codec.decompress(data[:-3], (2, 4, 16, 16))
    with pytest.raises(CodecError, match="not an rANS stream"):
        codec.decompress(b"", (2, 4, 16, 16))


@pytest.mark.parametrize("name", ["ae", "cheng2020-attn"])
def test_decoder_state_transfers_to_a_fresh_codec(name):
    sender = make_codec(name, 4, latent_channels=8, normalize=True)
    receiver = make_codec(name, 4, latent_channels=8, normalize=True)
    sender.eval().update()
    state = sender.decoder_state()
    assert not any(".g_a." in k for k in state)
    receiver.load_decoder_state(state)
    receiver.eval()
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        assert torch.equal(receiver.decompress(sender.compress(x), (1, 4, 64, 64)), sender(x).x_hat)


@pytest.mark.parametrize("name", ["ae", "cheng2020-attn"])
@pytest.mark.parametrize("normalize", [False, True])
def test_latent_gain_codes_exactly_and_crosses_with_the_decoder(name, normalize):
    torch.manual_seed(0)
    shape = (2, 4, 64, 64)
    sender = make_codec(name, 4, latent_channels=8, latent_gain=16.0, normalize=normalize)
    receiver = make_codec(name, 4, latent_channels=8, latent_gain=1.0, normalize=normalize)
    x = smooth(shape)
    fit(sender, x, 5)
    prefix = "inner." if normalize else ""
    gain = dict(sender.named_parameters())[prefix + "latent_gain.log_gain"]
    with torch.no_grad():  # unequal gains per channel, as training leaves them
        gain.add_(torch.linspace(-1, 1, 8))
    sender.update()
    with torch.no_grad():
        ref = sender(x)
        data = sender.compress(x)
        assert torch.equal(sender.decompress(data, shape), ref.x_hat)
        state = sender.decoder_state()
        assert torch.equal(state[prefix + "latent_gain.log_gain"], gain)
        assert not any(".g_a." in k for k in state)
        receiver.load_decoder_state(state)
        receiver.eval()
        assert torch.equal(receiver.decompress(data, shape), ref.x_hat)


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_a_codec_survives_a_round_checkpoint(name):
    # Round checkpoints pickle whole parties, codecs included (parties/state.py).
    codec = make_codec(name, 4, latent_channels=8).eval()
    codec.update()
    x = torch.randn(1, 4, 64, 64)
    buffer = io.BytesIO()
    torch.save({"codec": codec}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)["codec"]
    with torch.no_grad():
        data = codec.compress(x)
        assert loaded.compress(x) == data
        assert torch.equal(loaded.decompress(data, (1, 4, 64, 64)), codec(x).x_hat)


@pytest.mark.parametrize("name", ["ae", "cheng2020-attn"])
def test_encode_estimate_matches_eval_forward(name):
    codec = make_codec(name, 4, latent_channels=8).eval()
    codec.update()
    x = torch.randn(2, 4, 64, 64)
    data, est = codec.encode(x)
    with torch.no_grad():
        assert est == pytest.approx(codec(x).bits().item(), rel=1e-5)
    assert data == codec.compress(x)


# --- decode integrity ---------------------------------------------------------------------


def _coded(name: str, shape=(2, 4, 64, 64)):
    """A codec ready to code (tables built), an input, and its bitstream."""
    torch.manual_seed(1)
    codec = make_codec(name, shape[1], latent_channels=8).eval()
    codec.update()
    x = torch.randn(shape) * 4
    return codec, x, codec.compress(x)


@pytest.mark.parametrize("name", ["ae", "cheng2020-attn"])
def test_decoding_is_identical_with_one_and_two_threads(name):
    codec, x, data = _coded(name)
    threads = torch.get_num_threads()
    try:
        decoded = []
        for n in (1, 2):
            torch.set_num_threads(n)
            # Each decode checks the symbols it read against the sender's CRC: the same
            # symbols, whatever the thread count (Cheng's entropy parameters included).
            decoded.append(codec.decompress(data, tuple(x.shape)))
            with torch.no_grad():
                assert torch.equal(decoded[-1], codec(x).x_hat)  # same set-up: bit-identical
    finally:
        torch.set_num_threads(threads)
    # The synthesis transform's float sums may split differently over threads: last bits only.
    assert torch.allclose(decoded[0], decoded[1], rtol=1e-5, atol=1e-6)


def _disagree(codec) -> None:
    """Make a receiver's entropy model differ from the sender's, as another machine's might."""
    if codec.name == "ae":
        # Another set of CDF tables per channel: the decoder indexes other tables.
        cdf = codec.entropy_bottleneck._quantized_cdf
        cdf.copy_(cdf.roll(1, dims=0))
    else:
        # Entropy parameters computed slightly differently: other scale indexes.
        with torch.no_grad():
            for p in codec.net.entropy_parameters.parameters():
                p.mul_(1.05)


@pytest.mark.parametrize("name", ["ae", "cheng2020-attn"])
def test_other_symbols_decoded_are_an_error_not_garbage(name):
    codec, x, data = _coded(name)
    # The symbols' CRC ends the stream, and counts in the payload like any other byte.
    assert len(data) >= STREAM_OVERHEAD and data[-CHECK_SIZE:] != b"\0" * CHECK_SIZE
    _disagree(codec)
    with pytest.raises(SymbolMismatch, match=f"codec '{name}': decoded .* symbols other than"):
        codec.decompress(data, tuple(x.shape))


def test_a_stream_cut_short_or_padded_is_refused():
    codec, x, data = _coded("ae")
    with pytest.raises(CodecError, match="not an rANS stream"):
        codec.decompress(data[:-4] + b"\0" * 4 + data[-4:], tuple(x.shape)[:1] + (4, 8, 8))


def test_hostile_bitstream_is_an_error_not_a_crash():
    # CompressAI's decoder reads without bounds checks: 300 kB of 0xFF used to make it read
    # far past its input and crash the process. The guard after the stream takes those reads.
    codec = make_codec("ae", 16, latent_channels=64).eval()
    codec.update()
    shape = (8, 16, 128, 128)  # 131,072 latent symbols
    for size in (300_000, 1_000_000):
        with pytest.raises(SymbolMismatch):
            codec.decompress(b"\xff" * size, shape)
    with pytest.raises(CodecError, match=f"at most {8 * 131_072 + STREAM_OVERHEAD} bytes"):
        codec.decompress(b"\xff" * 2_000_000, shape)


def test_the_final_state_is_cut_to_the_bytes_that_hold_it():
    from splitfedzip.codecs.streams import STATE_SIZES, compact, expand

    for state in (1 << 31, (1 << 32) + 5, (1 << 47) + 3, (1 << 62) + 1):
        words = bytes(range(8))
        stream = state.to_bytes(8, "little") + words
        cut = compact(stream)
        assert len(cut) - len(words) == max(5, (state.bit_length() + 7) // 8) in STATE_SIZES
        assert expand(cut, "ae") == stream
    with pytest.raises(CodecError, match="below the coder's bound"):
        expand(b"\0" * 5, "ae")
