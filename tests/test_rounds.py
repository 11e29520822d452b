"""Round membership and client dropout: the bookkeeping alone, then whole parties in-process."""

from __future__ import annotations

import asyncio

import pytest
import torch

from splitfedzip.config import load_config
from splitfedzip.data import build_federated_data
from splitfedzip.federation import SUBMIT, VALIDATE, Rounds
from splitfedzip.metrics.ledger import Ledger
from splitfedzip.parties.client import Client
from splitfedzip.parties.federation_server import FederationServer
from splitfedzip.parties.main_server import MainServer
from splitfedzip.transport.embedded import EmbeddedChannel

TINY = [
    "data.image_size=64", "data.num_samples=18", "data.test_samples=4", "model.base_width=4",
    "data.partition={kind: iid, clients: 3}", "train.rounds=2", "train.local_epochs=1",
    "train.batch_size=2", "train.device=cpu", "scheme=f", "codec=ae",
    "codec_options.latent_channels=8", "lambda=10",
]  # fmt: skip


def test_barrier_waits_for_expected_members_only() -> None:
    rounds = Rounds(3)
    assert [rounds.join(c, in_progress=0) for c in range(3)] == [0, 0, 0]
    assert rounds.arrive(SUBMIT, 0, 0, "a") and rounds.arrive(SUBMIT, 0, 1, "b")
    assert rounds.ready() == [] and rounds.missing(SUBMIT, 0) == {2}
    rounds.drop(2, 0, "dropped", "connection lost")
    assert rounds.ready() == [(SUBMIT, 0)]
    assert rounds.close(SUBMIT, 0) == {0: "a", 1: "b"}
    # Client 2 comes back while round 1 trains: it is waited for from round 2 on.
    assert rounds.join(2, in_progress=1) == 2
    assert rounds.expected(1) == {0, 1} and rounds.expected(2) == {0, 1, 2}
    assert [(e.round, e.client, e.event) for e in rounds.events] == [
        (0, 2, "dropped"), (2, 2, "rejoined"),
    ]  # fmt: skip


def test_late_arrival_is_refused_and_readmitted_next_round() -> None:
    rounds = Rounds(2)
    rounds.arrive(VALIDATE, 1, 0, 0.5)
    rounds.drop(1, 1, "timeout", "no validate within 1 s")
    rounds.close(*rounds.ready()[0])
    assert not rounds.arrive(VALIDATE, 1, 1, 0.7)
    assert rounds.first[1] == 2 and rounds.events[-1].event == "late"


def test_first_join_after_round_0_closed_waits_for_the_next_round() -> None:
    rounds = Rounds(2)
    assert rounds.join(1, in_progress=3) == 4 and rounds.events[-1].event == "joined"
    with pytest.raises(ValueError, match="clients 0..1"):
        rounds.join(5, 0)


def _parties(cfg):
    data = build_federated_data(cfg.data, cfg.train.seed)
    ledger, device = Ledger(), torch.device("cpu")
    main = MainServer(cfg, data.num_classes, device)
    fed = FederationServer(cfg, data.num_classes, len(data.clients), poll_seconds=0.5)

    def client(cid: int) -> Client:
        cd = data.clients[cid]
        return Client(
            cid, cfg, data.num_classes, cd.train, cd.val,
            EmbeddedChannel(main, cid, "main", ledger),
            EmbeddedChannel(fed, cid, "federation", ledger),
            device, test=data.test if cid == 0 else None,
        )  # fmt: skip

    return main, fed, client


class Died(RuntimeError):
    """The simulated crash."""


def _crash_in_round0(client: Client) -> Client:
    real = client.train_batch

    async def train_batch(ids, x, y):
        if ids.batch == 1:
            raise Died(f"client {client.cid} died")
        return await real(ids, x, y)

    client.train_batch = train_batch
    return client


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["federation.weights_codec=int8"],
        ["federation.weights_codec=int8", "federation.variant=v2", "federation.select=last"],
    ],
)
def test_client_dies_mid_round_and_rejoins_next_round(extra) -> None:
    # A restarted client holds no global model and no codec snapshot: coded updates fall back
    # to the whole model, and the (shared, under V2) server codecs sync it afresh.
    cfg = load_config(None, [*TINY, "train.rounds=3", *extra])
    main, fed, client = _parties(cfg)

    async def dies_then_rejoins() -> None:
        try:
            await _crash_in_round0(client(1)).run()
        except Died:
            # What the network transport does when a client's connection ends abruptly.
            await fed.disconnected(1)
            await main.disconnected(1)
        await client(1).run()  # the restarted client, same id

    async def go():
        return await asyncio.wait_for(
            asyncio.gather(client(0).run(), dies_then_rejoins(), client(2).run()), 120
        )

    tester = asyncio.run(go())[0]
    events = [(e["round"], e["client"], e["event"]) for e in tester.events]
    # The restarted client waits for the round after the one in progress when it came back.
    (_, _, dropped), (back, _, rejoined) = events
    assert (dropped, rejoined) == ("dropped", "rejoined") and 1 <= back < cfg.train.rounds
    expected = {r: [0, 2] if r < back else [0, 1, 2] for r in range(cfg.train.rounds)}
    assert fed.participants == expected == main.participants
    assert [r["participants"] for r in tester.rounds] == list(expected.values())
    # The tester tested the global model the federation chose: the lowest mean validation loss.
    assert tester.test["round"] == min(fed.val_loss, key=fed.val_loss.get)
    assert set(fed.val_loss) == {1, 2, 3} and fed.val_clients[1] == expected[1]


def test_silent_client_is_dropped_after_the_round_timeout() -> None:
    cfg = load_config(None, [*TINY, "federation.round_timeout=1.0", "train.rounds=1"])
    main, fed, client = _parties(cfg)
    hung = client(2)

    async def never(ids, x, y):
        await asyncio.Event().wait()  # alive and connected, but silent

    hung.train_batch = never

    async def go():
        stuck = asyncio.create_task(hung.run())
        results = await asyncio.wait_for(asyncio.gather(client(0).run(), client(1).run()), 120)
        stuck.cancel()
        return results

    tester = asyncio.run(go())[0]
    assert fed.participants == {0: [0, 1]}
    assert [(e["client"], e["event"]) for e in tester.events] == [(2, "timeout")]
    assert fed.val_clients == {1: [0, 1]}
