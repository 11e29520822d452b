import asyncio
import json
from functools import partial

import pytest
import torch

from splitfedzip.cli.main import main as cli
from splitfedzip.config import CodecConfig, ConfigError, load_config
from splitfedzip.experiments.train import (
    covered_seconds,
    embedded_parties,
    metrics_rows,
    run_embedded,
)
from splitfedzip.metrics.summary import payload_bytes
from splitfedzip.parties.client import Diverged
from splitfedzip.parties.crossing import SyncError
from splitfedzip.parties.main_server import MainServer
from splitfedzip.transport.embedded import EmbeddedChannel
from splitfedzip.wire import Kind

TINY = [
    "data.image_size=64", "data.num_samples=12", "data.test_samples=4", "model.base_width=4",
    "train.rounds=1", "train.local_epochs=1", "train.batch_size=2", "train.device=cpu",
    "codec_options.latent_channels=8", "codec=ae", "lambda=10",
]  # fmt: skip


def tiny(*extra: str):
    return load_config(None, [*TINY, *extra])


@pytest.fixture(scope="module")
def fg_run():
    return run_embedded(tiny("scheme=fg"))


def storages(obj) -> set[int]:
    """Data pointers of every tensor reachable from a party's modules and codecs."""
    ptrs = set()
    for v in vars(obj).values():
        if isinstance(v, torch.nn.Module):
            ptrs |= {t.untyped_storage().data_ptr() for t in v.state_dict(keep_vars=True).values()}
    return ptrs - {0}


def test_parties_share_nothing_and_exchange_bytes(monkeypatch):
    seen = []
    original = EmbeddedChannel.request

    async def checking(self, message, estimates=None):
        assert type(message) is bytes
        answer = await original(self, message, estimates)
        assert type(answer) is bytes
        seen.append(len(message) + len(answer))
        return answer

    monkeypatch.setattr(EmbeddedChannel, "request", checking)
    captured = {}
    import splitfedzip.experiments.train as train

    real_client = train.Client

    def spy(*a, **k):
        c = real_client(*a, **k)
        captured.setdefault("clients", []).append(c)
        return c

    monkeypatch.setattr(train, "Client", spy)
    # Within each client's round (at its selection, before either side frees anything), the
    # client's model and receivers share no tensor with its replica and receivers on the
    # main server.
    held = []
    real_select = MainServer._select

    def selecting(self, client, r, epoch):
        c, peer = captured["clients"][client], self.peers[client]
        mine = storages(c) | storages(c.rx_s2f) | storages(c.rx_s1g) | storages(c.s1f)
        theirs = storages(peer.replica) | storages(peer.rx_s1f) | storages(peer.rx_s2g)
        held.append((len(mine), len(theirs), mine & theirs))
        return real_select(self, client, r, epoch)

    monkeypatch.setattr(MainServer, "_select", selecting)
    run_embedded(tiny("scheme=fg"))
    assert seen
    assert len(held) == len(captured["clients"])  # one round each
    assert all(mine and theirs and not both for mine, theirs, both in held)
    clients = captured["clients"]
    # Between rounds neither side holds a model or codec of a client; after the run only
    # the tester still holds what it tested with.
    assert clients[0].model is not None and clients[1].model is None
    assert clients[1].rx_s2f.codec is None and clients[1].s1f.live is None
    for peer in clients[0].main._handler.peers.values():
        assert peer.replica.model is None and peer.rx_s1f.codec is None


def test_ledger_adds_up_to_summary(fg_run):
    s, ledger = fg_run.summary, fg_run.ledger
    split_rows = [r for r in ledger.rows if r.kind in ("feature", "gradient") and r.phase != "test"]
    assert sum(r.bytes for r in split_rows) == s["bytes_split"]
    assert s["bytes_split"] == s["bytes_split_features"] + s["bytes_split_gradients"]
    assert s["bytes_federation"] == ledger.total((Kind.WEIGHTS, Kind.CODEC_SYNC), ("train", "val"))
    assert s["bytes_total"] == ledger.total(None, ("train", "val"))
    kinds = {r.kind for r in ledger.rows}
    assert {"feature", "gradient", "weights", "codec_sync", "control"} <= kinds


def test_metrics_rows_add_up_to_summary(fg_run):
    # One definition of every figure: the per-round columns sum to the summary's counts.
    s, rows = fg_run.summary, metrics_rows(fg_run)
    for column, key in (
        ("bytes_features", "bytes_split_features"), ("bytes_gradients", "bytes_split_gradients"),
        ("bytes_weights", "bytes_weights"), ("bytes_codec_sync", "bytes_codec_sync"),
        ("bytes_control", "bytes_control"), ("bytes_federation", "bytes_federation"),
        ("bytes_total", "bytes_total"),
    ):  # fmt: skip
        assert sum(r[column] for r in rows) == s[key], column
    assert s["bytes_federation"] == s["bytes_weights"] + s["bytes_codec_sync"]
    assert s["bytes_weights"] > 0 and s["bytes_codec_sync"] > 0 and s["bytes_control"] > 0
    # The float32 exchange codes nothing: its bytes before coding are its bytes.
    for kind in ("weights", "codec_sync", "federation", "total"):
        assert s[f"bytes_{kind}_uncoded"] == s[f"bytes_{kind}"], kind
    for kind in ("weights", "codec_sync"):
        assert sum(r[f"bytes_{kind}_uncoded"] for r in rows) == s[f"bytes_{kind}"], kind
    for r in rows:
        parts = ("bytes_features", "bytes_gradients", "bytes_weights", "bytes_codec_sync",
                 "bytes_control")  # fmt: skip
        assert r["bytes_total"] == sum(r[k] for k in parts)


def test_summary_is_strict_json(fg_run):
    # A class never seen is null, not a NaN token.
    text = json.dumps(fg_run.summary, allow_nan=False)
    assert "NaN" not in text


def test_real_bytes_match_estimates(fg_run):
    # Every coded tensor: payload within 1% of the likelihood estimate plus the stream headers.
    coded = [r for r in fg_run.ledger.rows if r.kind in ("feature", "gradient")]
    assert coded and all(r.est_bits is not None for r in coded)
    for r in coded:
        est = r.est_bits / 8
        overhead = 15 * 2 + (8 if r.kind == "gradient" else 0)  # 2 streams (batch 2), scales
        assert abs(payload_bytes(r) - est) <= 0.01 * est + overhead, r


def test_nc_sends_raw_float32_and_no_codec_syncs():
    res = run_embedded(tiny("scheme=nc"))
    rows = [r for r in res.ledger.rows if r.kind == "feature" and r.phase == "train"]
    # S1 of a 64x64 image at width 4: 8 x 32 x 32 float32 per image, batch 2.
    assert rows and all(payload_bytes(r) % (8 * 32 * 32 * 4) == 0 for r in rows)
    assert not [r for r in res.ledger.rows if r.kind == "codec_sync"]
    assert res.summary["bpp_s1_est"] is None


@pytest.mark.parametrize("scheme", ["f", "g"])
def test_partial_schemes_compress_only_their_crossings(scheme):
    res = run_embedded(tiny(f"scheme={scheme}"))
    est = {
        (r.kind, r.est_bits is None) for r in res.ledger.rows if r.kind in ("feature", "gradient")
    }
    compressed = "feature" if scheme == "f" else "gradient"
    raw = "gradient" if scheme == "f" else "feature"
    assert est == {(compressed, False), (raw, True)}


def test_codec_syncs_within_an_epoch_are_counted():
    res = run_embedded(tiny("scheme=fg", "codec_options.sync_every=1"))
    mid = {
        (r.split, r.direction)
        for r in res.ledger.rows
        if r.kind == "codec_sync" and r.phase == "train" and r.batch > 0
    }
    # All four crossings publish ahead of their tensors, both ways, and every tensor decoded.
    assert mid == {
        ("s1", "client->main"), ("s2", "client->main"), ("s1", "main->client"),
        ("s2", "main->client"),
    }  # fmt: skip
    base = run_embedded(tiny("scheme=fg"))
    assert not [
        r for r in base.ledger.rows if r.kind == "codec_sync" and r.phase == "train" and r.batch
    ]


def test_stale_codec_version_is_refused(fg_run):
    from splitfedzip.codecs import make_codec
    from splitfedzip.parties.crossing import CodecReceiver, CodecSender
    from splitfedzip.parties.messages import Ids, tensor_frame
    from splitfedzip.wire import Split, decode_frame

    sender = CodecSender(make_codec("ae", 4, latent_channels=8), 1.0, CodecConfig())
    rx = CodecReceiver(partial(make_codec, "ae", 4, latent_channels=8), torch.device("cpu"))
    version, state = sender.publish()
    rx.sync(version, state)
    sender.publish()  # a newer snapshot that never reached the receiver
    x = torch.randn(1, 4, 16, 16)
    frame = tensor_frame(Ids(), Kind.FEATURE, Split.S1, x.shape, sender.encode(x))
    with pytest.raises(SyncError, match="codec version 2, receiver holds 1"):
        rx.decode(decode_frame(frame))


def test_v2_trains_one_server_model_on_every_clients_batches():
    cfg = tiny("scheme=f", "federation.variant=v2", "federation.select=last", "train.rounds=2")
    p = embedded_parties(cfg, torch.device("cpu"))

    async def run_all():
        return await asyncio.gather(*(c.run() for c in p.clients))

    results = asyncio.run(run_all())
    shared = p.main._shared
    assert p.main.peers[1].replica is shared  # (the tester tests on a copy of it)
    # One model, one optimiser, never reset: one step per training batch of every client.
    batches = sum(r.train_batches for r in results)
    assert batches > 0 and {int(s["step"]) for s in shared.opt.state.values()} == {batches}
    # Each round's server global is the shared model as the round started.
    assert not torch.equal(p.main.globals[1]["server.enc2b.0.weight"], p.main.globals[0][
        "server.enc2b.0.weight"])  # fmt: skip
    with pytest.raises(ConfigError, match="select: 'best' needs variant v1"):
        tiny("federation.variant=v2")  # select defaults to best


@pytest.mark.parametrize(
    "override, message",
    [
        ("trian.rounds=2", "unknown config key 'trian'"),
        ("scheme=xyz", "scheme"),
        ("lambda=-1", "lambda"),
        ("data.partition={kind: counts, counts: [1]}", "counts"),
    ],
)
def test_bad_config_is_a_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        tiny(override)


def test_train_command_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli(
        ["train", "--no-progress", "--out", str(out), *sum((["--set", s] for s in TINY), [])]
    )
    assert code == 0
    for name in ("config.yaml", "metrics.csv", "ledger.csv", "summary.json", "checkpoints"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    for key in ("scheme", "codec", "lambda", "test_mji", "test_dice", "bpp_s1", "bpp_s2", "bpp_t",
                "bpp_s1_est", "bpp_s2_est", "cr_s1", "cr_s2", "bytes_split_features",
                "bytes_split_gradients", "bytes_split", "bytes_federation", "bytes_total",
                "wall_seconds"):  # fmt: skip
        assert key in summary, key
    # TINY: 2 clients of 5 training images (batch 2: 3 batches), 1 round of 1 epoch, no faults.
    assert summary["train_batches"] == 6 and summary["train_batches_per_second"] > 0
    assert summary["events"] == []
    assert [r["participants"] for r in summary["rounds"]] == [[0, 1]]
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert metrics[0].split(",")[:2] == ["round", "participants"] and ",0 1," in metrics[1]
    header = (out / "ledger.csv").read_text().splitlines()[0].split(",")
    assert header[:9] == ["round", "epoch", "batch", "client", "split", "direction", "kind",
                          "bytes", "est_bits"]  # fmt: skip


def test_unknown_key_on_the_command_line_exits_2(capsys):
    assert cli(["train", "--set", "nope=1"]) == 2
    assert "unknown config key 'nope'" in capsys.readouterr().err


def test_a_second_run_in_this_process_gives_the_same_figures(fg_run):
    # Nothing a run sets up (random streams, codecs, event loop) leaks into the next one.
    again = run_embedded(tiny("scheme=fg"))
    for key in ("test_mji", "test_dice", "bytes_total", "bpp_s1", "bpp_s2", "train_batches"):
        assert again.summary[key] == fg_run.summary[key], key
    assert [(r.kind, r.bytes) for r in again.ledger.rows] == [
        (r.kind, r.bytes) for r in fg_run.ledger.rows
    ]


def test_a_diverged_run_stops_saying_so(capsys):
    with pytest.raises(Diverged, match=r"client 0: training diverged in round 0 epoch 1 "
                       r"\(training loss nan, validation loss nan\)"):  # fmt: skip
        run_embedded(tiny("scheme=nc", "train.lr=1e30"))
    # On the command line: one line and status 1, not a traceback.
    assert cli(["train", "--no-progress", *sum((["--set", s] for s in TINY), []),
                "--set", "scheme=nc", "--set", "train.lr=1e30"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "splitfedzip train: error: client 0: training diverged" in err
    assert "Traceback" not in err


def test_throughput_counts_time_when_any_client_trains():
    assert covered_seconds([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)]) == 4.0
    assert covered_seconds([(0.0, 1.0), (0.2, 0.5)]) == 1.0 and covered_seconds([]) == 0.0
