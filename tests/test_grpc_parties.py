"""The real parties over gRPC, in this process, on 127.0.0.1: V2 with clients that overlap, and
clients that misbehave while the others' run goes on."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import pytest
import torch

from splitfedzip.config import Config, load_config
from splitfedzip.data import FederatedData, build_federated_data
from splitfedzip.federation.weights import state_digest
from splitfedzip.parties.client import Client, ClientResult
from splitfedzip.parties.crossing import CodecSender
from splitfedzip.parties.federation_server import FederationServer
from splitfedzip.parties.main_server import MainServer
from splitfedzip.parties.messages import Ids, control_frame, sync_frame, weights_frame
from splitfedzip.parties.models import ClientModel, crossing_codec, exchanged_state, split_shape
from splitfedzip.transport.base import TransportError
from splitfedzip.transport.grpc import (
    ClientSecurity,
    GrpcChannel,
    ServerSecurity,
    serve_handler,
)
from splitfedzip.wire import Kind, Split, encode_frame, pack_state, unpack_state

TINY = [
    "data.image_size=64", "data.num_samples=20", "data.test_samples=4", "model.base_width=4",
    "train.rounds=2", "train.local_epochs=1", "train.batch_size=2", "train.device=cpu",
    "scheme=f", "codec=ae", "codec_options.latent_channels=8", "lambda=10",
    "federation.round_timeout=30",
]  # fmt: skip
INSECURE = ClientSecurity(insecure=True)
LIMIT = 120  # seconds for a whole test's run


@dataclass
class Site:
    """Both servers of a run, serving on 127.0.0.1."""

    cfg: Config
    data: FederatedData
    main: MainServer
    federation: FederationServer
    targets: dict[str, str]

    async def channel(self, peer: str, cid: int, **kw) -> GrpcChannel:
        """Client ``cid``'s stream to ``peer`` ("main" or "federation")."""
        return await GrpcChannel.connect(
            self.targets[peer], cid, peer=peer, security=INSECURE, **kw
        )


async def run_site(
    cfg: Config, clients: Callable[[Site], list[Awaitable]], max_message: int = 1 << 20
) -> list:
    """Serve both parties, run ``clients(site)`` to completion, stop the servers."""
    data = build_federated_data(cfg.data, cfg.train.seed)
    device = torch.device("cpu")
    main = MainServer(cfg, data.num_classes, device)
    fed = FederationServer(cfg, data.num_classes, len(data.clients), poll_seconds=1.0)
    servers, targets = [], {}
    for peer, party in (("main", main), ("federation", fed)):
        server, _, port = await serve_handler(
            party, "127.0.0.1:0", peer=peer, security=ServerSecurity(insecure=True),
            max_message=max_message,
        )  # fmt: skip
        servers.append(server)
        targets[peer] = f"127.0.0.1:{port}"
    site = Site(cfg, data, main, fed, targets)
    try:
        return await asyncio.wait_for(asyncio.gather(*clients(site)), LIMIT)
    finally:
        for server in servers:
            await server.stop(None)


async def honest(site: Site, cid: int) -> ClientResult:
    """A client that follows the protocol: the whole run, as `splitfedzip client` runs it."""
    main, fed = await site.channel("main", cid), await site.channel("federation", cid)
    part, data = site.data.clients[cid], site.data
    client = Client(
        cid, site.cfg, data.num_classes, part.train, part.val, main, fed, torch.device("cpu"),
        test=data.test if cid == 0 else None,
    )  # fmt: skip
    try:
        return await client.run()
    finally:
        await main.close()
        await fed.close()


def test_v2_with_clients_that_overlap_trains_every_batch(caplog):
    cfg = load_config(None, [*TINY, "federation.variant=v2", "federation.select=last"])
    caplog.set_level(logging.DEBUG, logger="splitfedzip.parties.main_server")
    holder = {}

    def clients(site: Site) -> list[Awaitable]:
        holder["site"] = site
        return [honest(site, 0), honest(site, 1)]

    results = asyncio.run(run_site(cfg, clients))
    site = holder["site"]
    # The clients' batches did overlap: one waited while the other's held the shared model.
    assert "waits for client" in caplog.text
    # Every training batch of both clients stepped the one shared model (Adam counts steps).
    batches = sum(r.train_batches for r in results)
    opt = site.main._shared.opt
    steps = {int(state["step"]) for state in opt.state.values()}
    assert batches > 0 and steps == {batches}
    assert results[0].test["round"] == site.federation.best_round


async def refusal(site: Site, peer: str, *messages: bytes) -> str:
    """Send ``messages`` as client 2 on a fresh stream; the last must be refused. Its error."""
    channel = await site.channel(peer, 2, claim_timeout=10)
    try:
        for message in messages[:-1]:
            await channel.request(message)
        with pytest.raises(TransportError) as err:
            await channel.request(messages[-1])
        return str(err.value)
    finally:
        await channel.close()


async def hostile(site: Site) -> list[str]:
    """Client 2: a faulty model, then bytes and frames no honest client sends."""
    cfg, ids = site.cfg, Ids(client=2)
    join = control_frame(ids, {"type": "join", "train_samples": 5})
    submit = control_frame(ids, {"type": "submit", "train_samples": 5})
    model = exchanged_state(ClientModel(cfg, site.data.num_classes))
    nan = dict(model)
    first = next(iter(nan))
    nan[first] = torch.full_like(nan[first], float("nan"))
    other = {"front_end.extra": torch.zeros(3)}
    shape = split_shape(cfg, 2)
    feature = ids.header(
        Kind.FEATURE, Split.S1, shape=shape, dtype=torch.float32, codec=1, codec_version=1
    )
    decoder = CodecSender(crossing_codec(cfg, "feature"), 1.0, cfg.codec_options).publish()[1]
    sync = control_frame(ids, {"type": "sync"}) + sync_frame(ids, Split.S1, 1, 1, decoder)
    tables = unpack_state(decoder)
    tables["entropy_bottleneck._quantized_cdf"].random_(0, 1000)
    bad_sync = control_frame(ids, {"type": "sync"})
    bad_sync += sync_frame(ids, Split.S1, 1, 1, pack_state(tables))
    coded = encode_frame(feature, b"\xff" * 2048)  # not what any encoder writes
    return [
        await refusal(site, "federation", join, submit + weights_frame(ids, nan)),
        await refusal(site, "federation", submit + weights_frame(ids, other)),
        await refusal(site, "main", bytes(range(256)) * 4),
        await refusal(site, "main", b"\0" * (2 << 20)),
        await refusal(site, "main", join[:-1] + bytes([join[-1] ^ 1])),
        await refusal(site, "main", control_frame(Ids(client=0), {"type": "bye"})),
        await refusal(
            site, "main", join, encode_frame(replace(feature, shape=(2**20, *shape[1:])), b"")
        ),
        await refusal(site, "main", join, coded),
        await refusal(site, "main", join, bad_sync, coded),
        await refusal(site, "main", join, sync, coded),
    ]


def test_hostile_client_is_refused_and_the_others_run_completes():
    cfg = load_config(None, [*TINY, "data.num_samples=30", "data.partition.clients=3"])

    holder = {}

    def clients(site: Site) -> list[Awaitable]:
        holder["site"] = site
        return [honest(site, 0), honest(site, 1), hostile(site)]

    tester, _, errors = asyncio.run(run_site(cfg, clients))
    fed = holder["site"].federation
    expected = [
        r"federation at .*: FAILED_PRECONDITION: .*client 2: round 0 submission refused: "
        r"'front_end\.\S+' holds values that are not finite",
        r"FAILED_PRECONDITION: .*refused: keys differ .*unexpected \['front_end.extra'\]",
        r"main at .*: INVALID_ARGUMENT: .*not a SplitFedZip frame",
        r"RESOURCE_EXHAUSTED",
        r"INVALID_ARGUMENT: .*CRC32 mismatch",
        r"PERMISSION_DENIED: .*a frame names client 0, but this stream is client 2's",
        r"FAILED_PRECONDITION: .*S1 features: shape \(1048576, ",
        r"FAILED_PRECONDITION: .*SyncError: frame coded with codec version 1, receiver holds "
        r"none yet",
        r"FAILED_PRECONDITION: .*codec 'ae': entropy table 0 is not a CDF the coder can use",
        r"DATA_LOSS: .*S1 features of client 2, round 0 epoch 0 batch 0 \(train\), ae codec "
        r"version 1: codec 'ae': decoded 256 symbols other than were coded",
    ]
    for pattern, error in zip(expected, errors, strict=True):
        assert re.search(pattern, error), (pattern, error)
    assert [(e["client"], e["event"]) for e in tester.events] == [(2, "refused")]
    assert [r["participants"] for r in tester.rounds] == [[0, 1], [0, 1]]
    assert fed.val_clients == {1: [0, 1], 2: [0, 1]} and tester.test["round"] == fed.best_round


def test_coded_weights_and_lossy_snapshots_over_grpc_decode_exactly():
    # fg: lossy snapshots cross both ways; int2 (ternary, the lossiest): updates in every
    # weights frame but the test's.
    cfg = load_config(None, [*TINY, "scheme=fg", "federation.weights_codec=int2"])
    held = {}

    async def keeps(site: Site, cid: int) -> ClientResult:
        main, fed = await site.channel("main", cid), await site.channel("federation", cid)
        part, data = site.data.clients[cid], site.data
        client = Client(
            cid, site.cfg, data.num_classes, part.train, part.val, main, fed,
            torch.device("cpu"), test=data.test if cid == 0 else None,
        )  # fmt: skip
        try:
            return await client.run()
        finally:
            held[cid] = client.reference
            held["site"] = site
            held["client", cid] = client
            await main.close()
            await fed.close()

    results = asyncio.run(run_site(cfg, lambda site: [keeps(site, 0), keeps(site, 1)]))
    fed = held["site"].federation
    final = cfg.train.rounds
    assert results[0].test is not None and set(fed.updates) == {1, final}
    # Client 1 holds the last global model; client 0, the tester, the one it tested (the
    # best by validation loss, not always the last).
    for cid, expected in ((0, fed.best_round), (1, final)):
        r, state = held[cid]
        assert r == expected and state_digest(state) == fed.digest(expected)
    # Every tensor of the run decoded to the sender's symbols (the receivers check a CRC of
    # them), and at the end each receiver holds, bit for bit, the decoder state its sender's
    # last snapshot adopted (what the receiver reconstructs of a lossy sync; the snapshot
    # itself is released with the round): both ways, for both clients.
    main = held["site"].main
    for cid in (0, 1):
        client, peer = held["client", cid], main.peers[cid]
        pairs = (
            (client.s1f, 0, peer.rx_s1f), (client.s2g, 0, peer.rx_s2g),
            (peer.replica.s2f, cid, client.rx_s2f), (peer.replica.s1g, cid, client.rx_s1g),
        )  # fmt: skip
        for sender, receiver, rx in pairs:
            version, state = sender._sent[receiver]
            assert version == rx.version >= 3
            assert state_digest(state) == state_digest(rx.decoder_state())
