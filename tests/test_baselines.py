"""Ayad et al.'s gradient threshold, frozen codecs, freezing rules and pretrained codecs."""

import asyncio

import pytest
import torch
from test_runtime import tiny

from splitfedzip.config import CodecTrainingConfig, ConfigError
from splitfedzip.experiments.train import embedded_parties, run_embedded, write_outputs
from splitfedzip.federation.freezing import FreezeRule
from splitfedzip.parties.messages import Ids
from splitfedzip.parties.models import ClientModel, ServerModel
from splitfedzip.parties.pretrained import HeadReinitialised, PretrainedError


def params(state: dict, prefix: str) -> dict:
    """The entries of ``state`` under ``prefix`` that are weights (BatchNorm's running
    statistics move with every training forward pass, sent gradient or not)."""
    return {k: v for k, v in state.items() if k.startswith(prefix) and "running" not in k
            and "num_batches" not in k}  # fmt: skip


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_all(p) -> None:
    """Run every client of ``p`` (embedded parties) to the end."""

    async def clients():
        await asyncio.gather(*(c.run() for c in p.clients))

    asyncio.run(clients())


def train_frames(ledger, kind: str, split: str | None = None) -> int:
    return sum(
        1 for r in ledger.rows
        if r.phase == "train" and r.kind == kind and (split is None or r.split == split)
    )  # fmt: skip


@pytest.mark.parametrize("threshold", [".inf", "0"])
def test_gradient_threshold_counts_in_the_ledger(threshold):
    res = run_embedded(tiny("scheme=nc", f"train.gradient_threshold={threshold}"))
    batches = sum(c.train_batches for c in res.clients)
    assert batches > 0
    sent = train_frames(res.ledger, "gradient")
    skipped = sum(
        1 for r in res.ledger.rows
        if r.phase == "train" and r.kind == "control" and r.split == "s2"
        and r.direction == "client->main"
    )  # fmt: skip
    if threshold == "0":  # a Dice loss is never 0: every gradient crosses, both ways
        assert (sent, skipped) == (2 * batches, 0)
    else:
        assert (sent, skipped) == (0, batches)


def test_no_gradient_leaves_server_and_front_end_unchanged():
    res_cfg = tiny("scheme=nc", "train.gradient_threshold=.inf")
    p = embedded_parties(res_cfg, torch.device("cpu"))
    run_all(p)
    fed, main = p.federation.globals, p.main.globals
    assert same(params(fed[1], "front_end."), params(fed[0], "front_end."))
    assert same(params(main[1], "server."), params(main[0], "server."))
    assert not same(params(fed[1], "back_end."), params(fed[0], "back_end."))  # it trains


def test_an_unsent_gradient_is_not_applied_later():
    cfg = tiny("scheme=nc", "train.gradient_threshold=.inf")
    p = embedded_parties(cfg, torch.device("cpu"))
    client = p.clients[0]
    x, y = next(iter(client._loader(client.train_set, shuffle=False)))

    async def two_batches():
        ids = Ids(round=await client.join())
        await client.begin_round(ids)
        fe = {k: v.clone() for k, v in client.model.front_end.named_parameters()}
        await client.train_batch(ids, x, y)  # not sent
        replica = p.main.peers[0].replica
        # Nothing of the skipped batch is left anywhere a later step could pick it up.
        assert p.main.peers[0].pending is None
        for module, opt in ((client.model.front_end, client.opt), (replica.model.server,
                                                                    replica.opt)):  # fmt: skip
            assert all(q.grad is None and q not in opt.state for q in module.parameters())
        assert same(dict(client.model.front_end.named_parameters()), fe)
        cfg.train.gradient_threshold = 0.0
        await client.train_batch(ids.at(batch=1), x, y)  # sent: one step, of this batch only
        for module, opt in ((client.model.front_end, client.opt), (replica.model.server,
                                                                    replica.opt)):  # fmt: skip
            assert {int(opt.state[q]["step"]) for q in module.parameters()} == {1}
        back = {int(client.opt.state[q]["step"]) for q in client.model.back_end.parameters()}
        assert back == {2}  # the back end learns from every batch

    asyncio.run(two_batches())


def test_frozen_codecs_do_not_change_and_sync_once():
    flags = "codec_training.trainable={s1_feature: false, s2_feature: false}"
    res_p = embedded_parties(tiny("scheme=f", "train.rounds=2", flags), torch.device("cpu"))
    run_all(res_p)
    fed, main = res_p.federation.globals, res_p.main.globals
    for r in (1, 2):
        assert same(params(fed[r], "s1_feature."), params(fed[0], "s1_feature."))
        assert same(params(main[r], "s2_feature."), params(main[0], "s2_feature."))
        assert not same(params(fed[r], "front_end."), params(fed[r - 1], "front_end."))
    # Each sender published its one frozen snapshot to each receiver once, in round 0.
    senders = [c.s1f for c in res_p.clients] + [p.replica.s2f for p in res_p.main.peers.values()]
    assert all(s.version == 1 for s in senders)


@pytest.mark.parametrize(
    "rule", ["codec_training.freeze_round=1", "codec_training.freeze_rate_change=100"]
)
def test_freezing_rules_stop_the_codecs(rule):
    rounds = 2 if "round" in rule else 3  # the rate rule compares two rounds' rates
    p = embedded_parties(tiny("scheme=f", f"train.rounds={rounds}", rule), torch.device("cpu"))
    p.federation._prune = lambda: None  # keep every round's global model, to compare them
    run_all(p)
    fed, main = p.federation.globals, p.main.globals
    first = rounds - 1  # the first frozen round
    assert not same(params(fed[first], "s1_feature."), params(fed[first - 1], "s1_feature."))
    assert same(params(fed[first + 1], "s1_feature."), params(fed[first], "s1_feature."))
    assert same(params(main[first + 1], "s2_feature."), params(main[first], "s2_feature."))
    assert not same(params(fed[first + 1], "front_end."), params(fed[first], "front_end."))
    # summary.json's rounds say which rounds trained with frozen codecs.
    frozen = [k["codecs_frozen"] for k in p.federation._record()["rounds"]]
    assert frozen == [k >= first for k in range(rounds)]


def test_the_rate_rule():
    rule = FreezeRule(CodecTrainingConfig(freeze_rate_change=0.1))
    rule.observe(0, [(2.0, 10), (4.0, 30)])  # weighted: 3.5
    assert rule.rates[0] == 3.5 and not rule.frozen(1)
    rule.observe(1, [(3.0, 1)])  # 14% less
    assert not rule.frozen(2)
    rule.observe(2, [(2.9, 1)])  # 3% less: frozen from round 3 on
    assert not rule.frozen(2) and rule.frozen(3) and rule.frozen(9)
    assert FreezeRule(CodecTrainingConfig(freeze_round=4)).frozen(4)
    assert not FreezeRule(CodecTrainingConfig()).active


def test_pretrained_codecs_and_unet_from_another_run(tmp_path):
    cfg = tiny("scheme=f")
    write_outputs(cfg, run_embedded(cfg), tmp_path / "pre")
    saved = torch.load(tmp_path / "pre/checkpoints/client_global.pt", weights_only=True)
    served = torch.load(tmp_path / "pre/checkpoints/server_global.pt", weights_only=True)
    # The other data set, with five classes: the codecs and the U-Net load, the head does not.
    other = tiny(
        "scheme=f", "data.dataset=synthetic-blastocyst",
        f"codec_training.pretrained={tmp_path}/pre", "codec_training.pretrained_unet=true",
    )  # fmt: skip
    with pytest.warns(HeadReinitialised, match="trained for 2 classes, this run has 5: it is re-"):
        client, server = ClientModel(other, 5), ServerModel(other, 5)
    state, sstate = client.state_dict(), server.state_dict()
    for key in [k for k in saved if not k.startswith("back_end.head.")]:
        assert torch.equal(state[key], saved[key]), key
    for key in served:
        assert torch.equal(sstate[key], served[key]), key
    assert state["back_end.head.weight"].shape[0] == 5
    # Codecs only: the U-Net keeps its own initialisation.
    codecs_only = tiny("scheme=f", f"codec_training.pretrained={tmp_path}/pre")
    fresh = ClientModel(codecs_only, 2).state_dict()
    assert torch.equal(fresh["s1_feature.g_a.0.weight"], saved["s1_feature.g_a.0.weight"])
    assert not torch.equal(fresh["front_end.enc1.0.0.weight"], saved["front_end.enc1.0.0.weight"])
    # A run whose codec differs is a clear error naming the file and the tensor.
    wider = tiny("scheme=f", "codec_options.latent_channels=16",
                 f"codec_training.pretrained={tmp_path}/pre")  # fmt: skip
    with pytest.raises(PretrainedError, match=r"client_global.pt: 's1_feature\..*this run's is"):
        ClientModel(wider, 2)
    with pytest.raises(PretrainedError, match="nowhere/checkpoints/client_global.pt not found"):
        ClientModel(tiny("scheme=f", f"codec_training.pretrained={tmp_path}/nowhere"), 2)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.gradient_threshold=-1", "train.gradient_threshold"),
        ("codec_training.freeze_rate_change=0", "codec_training.freeze_rate_change"),
        ("codec_training.pretrained_unet=true", "needs codec_training.pretrained"),
        ("codec_training.trainable.s3_feature=false", "codec_training.trainable.s3_feature"),
    ],
)
def test_bad_baseline_config_is_a_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        tiny(override)


def test_a_frozen_sender_publishes_again_only_when_its_weights_were_replaced():
    from splitfedzip.codecs import make_codec
    from splitfedzip.config import CodecConfig
    from splitfedzip.parties.crossing import CodecSender

    sender = CodecSender(make_codec("ae", 4, latent_channels=8), 1.0, CodecConfig())
    sender.freeze()
    assert sender.publish(0)[0] == 1 and sender.publish(0) is None
    assert sender.publish(1)[0] == 2  # another receiver gets its own
    other = make_codec("ae", 4, latent_channels=8).state_dict()  # e.g. an earlier round's
    sender.live.load_state_dict(other)
    assert sender.publish(0)[0] == 3 and sender.publish(0) is None
