"""The main server: the large middle of the U-Net, one replica per client (SplitFed V1) or one
shared model trained client after client (V2), and the codecs it sends with."""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from ..codecs import codec_id
from ..config import Config
from ..federation import RunningAverage
from ..transport.base import Handler, Reply
from ..wire import Frame, Kind, Phase, Split
from .crossing import CodecReceiver, CodecSender
from .messages import (
    Ids,
    ProtocolError,
    clients_of,
    control_frame,
    control_of,
    expect,
    frames,
    integer_of,
    number_of,
    receive,
    sync_frame,
    tensor_message,
)
from .models import ServerModel, crossing_codec, exchanged_state, resynced, split_shape
from .rng import RngScope

log = logging.getLogger(__name__)


@dataclass
class Replica:
    """A server model with its optimiser and sending codecs. Under V1 the model and optimiser
    exist only from a client's round start to its selection (None in between): the senders
    stay, with what they published."""

    model: ServerModel | None
    s2f: CodecSender
    s1g: CodecSender
    opt: torch.optim.Optimizer | None


@dataclass
class Peer:
    """What the main server keeps for one client."""

    replica: Replica
    rx_s1f: CodecReceiver
    rx_s2g: CodecReceiver
    rng: RngScope
    train_samples: int = 0
    #: The training batch awaiting its gradient: (S1 leaf, S2, S2 codec output, input pixels).
    pending: tuple[Tensor, Tensor, object, int] | None = None
    best: tuple[int, float, dict[str, Tensor]] | None = None


class MainServer(Handler):
    """Answers the clients' per-batch exchanges and averages the server replicas each round.

    The federation server decides who took part in a round; each client relays that list when
    it starts the next round, and the replicas those clients selected are averaged (V1). Every
    client must relay the same list. In V1 nothing here waits for another client, so a client
    that drops out cannot hold the main server up.

    V2 trains one shared model. A client's training batch holds it from the forward pass until
    its gradient has been applied (another client's optimiser step in between would change, in
    place, weights the first client's graph saved): the others' training batches wait their
    turn, in arrival order. A client that holds the turn longer than ``federation.round_timeout``
    loses that batch; one that disconnects gives the turn up.
    """

    def __init__(self, cfg: Config, num_classes: int, device: torch.device):
        self.cfg, self.num_classes, self.device = cfg, num_classes, device
        self.peers: dict[int, Peer] = {}
        seed = cfg.train.seed
        self._template = ServerModel(cfg, num_classes, seed).to(device)
        self.globals: dict[int, dict[str, Tensor]] = {0: exchanged_state(self._template)}
        #: round -> the clients whose replicas were averaged into global round + 1
        self.participants: dict[int, list[int]] = {}
        self._shared = self._make_replica() if cfg.federation.variant == "v2" else None
        #: V2: whose training batch holds the shared model between forward pass and gradient.
        self._turn = asyncio.Lock() if self._shared is not None else None
        self._holder: int | None = None
        #: round -> the running FedAvg sum of the replicas selected in that round (V1)
        self._sums: dict[int, RunningAverage] = {}

    def _make_replica(self) -> Replica:
        cfg, opts = self.cfg, self.cfg.codec_options
        model = copy.deepcopy(self._template)
        sync = (cfg.federation.weights_codec, cfg.federation.weights_keep)
        replica = Replica(
            model,
            CodecSender(model.s2_feature, cfg.lmbda, opts, *sync),
            CodecSender(model.s1_gradient, cfg.lmbda, opts, *sync),
            torch.optim.Adam(model.server.parameters(), lr=cfg.train.lr),
        )
        flags = cfg.codec_training.trainable
        for sender, trains in ((replica.s2f, flags.s2_feature), (replica.s1g, flags.s1_gradient)):
            if not trains:
                sender.freeze()
        return replica

    def _peer(self, client: int) -> Peer:
        if client not in self.peers:
            raise ProtocolError(f"client {client} has not joined the main server")
        return self.peers[client]

    async def handle(self, request: bytes, client: int) -> Reply:
        """Answer one message from ``client``."""
        msgs = frames(request)
        head = msgs[0]
        for f in msgs:
            if f.header.client != client:
                raise ProtocolError(f"frame names client {f.header.client}, sender is {client}")
        if head.header.kind == Kind.CONTROL:
            return self._control(control_of(head), head, msgs[1:], client)
        # A tensor message: the tensor frame last, a codec sync ahead of it when one was due.
        tensor = msgs[-1].header
        if tensor.kind == Kind.FEATURE and tensor.phase == Phase.TRAIN:
            peer = self._peer(client)
            await self._take_turn(client)
            try:
                return self._forward_train(peer, msgs)
            except BaseException:
                self._end_turn(client)
                raise
        if tensor.kind == Kind.FEATURE:
            return self._forward_eval(self._peer(client), msgs)
        if tensor.kind == Kind.GRADIENT:
            try:
                return self._backward(self._peer(client), msgs)
            finally:
                self._forget_batch(client)
        raise ProtocolError(f"main server does not accept {tensor.kind.label} frames here")

    async def disconnected(self, client: int) -> None:
        """Forget the lost client's half-done batch; its selected replicas stay for averaging."""
        self._forget_batch(client)

    def _forget_batch(self, client: int) -> None:
        if client in self.peers:
            self.peers[client].pending = None
        self._end_turn(client)

    # --- V2: one training batch at a time on the shared model ------------------------------

    async def _take_turn(self, client: int) -> None:
        """Wait until no other client's training batch holds the shared model (V2 only)."""
        if self._turn is None or self._holder == client:
            return
        limit = self.cfg.federation.round_timeout
        while True:
            holder = self._holder
            if holder is not None:
                log.debug("client %d waits for client %d's batch", client, holder)
            try:
                await asyncio.wait_for(self._turn.acquire(), limit)
                break
            except TimeoutError:
                if holder is not None and self._holder == holder:
                    log.warning(
                        "client %d held the shared model for %g s; its batch is dropped",
                        holder, limit,
                    )  # fmt: skip
                    self._forget_batch(holder)
        self._holder = client

    def _end_turn(self, client: int) -> None:
        if self._turn is not None and self._holder == client:
            self._holder = None
            self._turn.release()

    # --- control -------------------------------------------------------------------------

    def _control(self, msg: dict, head: Frame, rest: list[Frame], client: int) -> Reply:
        ids = Ids(head.header.round, head.header.epoch, 0, client, head.header.phase)
        kind = msg["type"]
        if kind == "join":
            samples = integer_of(msg, "train_samples", minimum=1)
            # A rejoining client starts afresh: a new replica, new codec receivers.
            self._forget_batch(client)
            replica = self._shared or self._released(self._make_replica())
            wc = self.cfg.federation.weights_codec
            for sender in (replica.s2f, replica.s1g):
                sender.forget(client)  # the new receivers hold no snapshot to update
            self.peers[client] = Peer(
                replica,
                CodecReceiver(partial(crossing_codec, self.cfg, "feature"), self.device, wc),
                CodecReceiver(partial(crossing_codec, self.cfg, "gradient"), self.device, wc),
                RngScope(self.cfg.train.seed * 1000 + 500 + client),
                samples,
            )
            self._release_receivers(self.peers[client])  # until the client's round starts
        elif kind == "round_start":
            peer = self._peer(client)
            self._forget_batch(client)
            self._round_start(peer, ids.round, clients_of(msg, "participants"))
            frozen = msg.get("frozen", False)
            if not isinstance(frozen, bool):
                raise ProtocolError(f"round_start: 'frozen' must be true or false, got {frozen!r}")
            if frozen:  # the federation server's freezing rule, relayed by the client
                peer.replica.s2f.freeze()
                peer.replica.s1g.freeze()
        elif kind == "sync":
            return self._sync(self._peer(client), ids, rest)
        elif kind == "epoch_end":
            self._in_round(client)
            self._epoch_end(self._peer(client), ids.epoch, number_of(msg, "val_loss"))
        elif kind == "select":
            self._in_round(client)
            self._select(client, ids.round, integer_of(msg, "epoch"))
        elif kind == "test_start":
            self._test_start(self._peer(client), ids.round)
        elif kind == "no_gradient":
            # Ayad et al.'s threshold: the pending batch is dropped, so the server part and its
            # codecs never see a gradient of it, now or later.
            peer = self._peer(client)
            number_of(msg, "loss")
            if peer.pending is None:
                raise ProtocolError(f"client {client}: no_gradient without a pending forward pass")
            self._forget_batch(client)
        elif kind in ("bye", "idle"):  # idle: not drawn to train this round
            self._forget_batch(client)
            if client in self.peers:
                self._release_receivers(self.peers[client])
                if self._shared is None:
                    self._released(self.peers[client].replica)
        else:
            raise ProtocolError(f"main server: unknown control message {kind!r}")
        return Reply(control_frame(ids, {"type": "ack"}))

    def _global(self, r: int, participants: list[int]) -> dict[str, Tensor]:
        """Global round ``r``: averaged on first request from round r-1's participants."""
        if r in self.globals:
            if r > 0 and participants != self.participants[r - 1]:
                raise ProtocolError(
                    f"round {r - 1}: participants {participants} disagree with "
                    f"{self.participants[r - 1]} relayed before"
                )
            return self.globals[r]
        if r - 1 not in self.globals:
            raise ProtocolError(f"round {r} started before round {r - 1}")
        if self._shared is not None:
            self.globals[r] = exchanged_state(self._shared.model)
        else:
            summed = self._sums.get(r - 1)
            chosen = summed.clients if summed is not None else []
            absent = [c for c in participants if c not in chosen]
            if not participants or absent:
                raise ProtocolError(
                    f"round {r - 1}: participants {participants}, but no selected replica for "
                    f"{absent or 'anyone'}"
                )
            extra = sorted(set(chosen) - set(participants))
            if extra:
                # The sum cannot give back a replica folded in (memory stays bounded): it counts.
                log.warning("round %d: replicas of %s averaged, not in participants", r - 1, extra)
            self.globals[r] = summed.result()
            for old in [k for k in self._sums if k < r]:
                del self._sums[old]
        self.participants[r - 1] = list(participants)
        return self.globals[r]

    def _round_start(self, peer: Peer, r: int, participants: list[int]) -> None:
        state = self._global(r, participants)
        peer.best, peer.pending = None, None
        if self._shared is None:  # V2 keeps training its one model across rounds
            self._materialized(peer.replica, state)

    def _test_start(self, peer: Peer, r: int) -> None:
        if r not in self.globals:
            raise ProtocolError(f"test of global round {r}, which the main server never built")
        if self._shared is not None:
            # The others may still be validating with the shared model: test on a copy.
            peer.replica = copy.deepcopy(self._shared)
            peer.replica.model.load_state_dict(self.globals[r], strict=False)
        else:
            self._materialized(peer.replica, self.globals[r])

    def _sync(self, peer: Peer, ids: Ids, rest: list[Frame]) -> Reply:
        for f in rest:
            h = expect(f, Kind.CODEC_SYNC, "codec sync").header
            (peer.rx_s1f if h.split == Split.S1 else peer.rx_s2g).sync(h.codec_version, f.payload)
        out = b""
        for split, sender in ((Split.S2, peer.replica.s2f), (Split.S1, peer.replica.s1g)):
            if sender.live is None:  # a V1 replica outside its round: nothing to publish
                continue
            published = sender.publish(receiver=ids.client)
            if published is not None:
                out += sync_frame(ids, split, codec_id(sender.live), *published)
        return Reply(out)

    def _epoch_end(self, peer: Peer, epoch: int, val_loss: float) -> None:
        # The client picks its best epoch by the same rule; keep the matching replica state.
        if self._shared is None and self.cfg.federation.select == "best":
            if peer.best is None or val_loss < peer.best[1]:
                peer.best = (epoch, val_loss, copy.deepcopy(peer.replica.model.state_dict()))

    def _select(self, client: int, r: int, epoch: int) -> None:
        peer = self._peer(client)
        self._release_receivers(peer)  # the client's round is over: nothing more to decode
        if self._shared is not None:
            return
        if peer.best is not None:
            if peer.best[0] != epoch:
                raise ProtocolError(
                    f"client {client} selected epoch {epoch}, server kept {peer.best[0]}"
                )
            peer.replica.model.load_state_dict(peer.best[2])
        state = exchanged_state(peer.replica.model)
        try:
            self._sums.setdefault(r, RunningAverage()).add(client, state, peer.train_samples)
        except ValueError as e:
            raise ProtocolError(f"client {client}: round {r} select: {e}") from None
        peer.best = None
        self._released(peer.replica)

    def _in_round(self, client: int) -> None:
        """A V1 replica has a model only within its client's round (round_start to select)."""
        if self._peer(client).replica.model is None:
            raise ProtocolError(f"client {client}: training or evaluation outside its round")

    def _materialized(self, rep: Replica, state: dict[str, Tensor]) -> Replica:
        """Give a V1 replica a model holding ``state``, fresh optimisers, its senders rebound."""
        rep.model = copy.deepcopy(self._template)
        rep.model.load_state_dict(state, strict=False)
        rep.opt = torch.optim.Adam(rep.model.server.parameters(), lr=self.cfg.train.lr)
        rep.s2f.rebind(rep.model.s2_feature)
        rep.s1g.rebind(rep.model.s1_gradient)
        return rep

    def _release_receivers(self, peer: Peer) -> None:
        """Free the peer's receivers between its rounds; each round start syncs them again."""
        keep = not resynced(self.cfg)
        peer.rx_s1f.release(keep)
        peer.rx_s2g.release(keep)

    def _released(self, rep: Replica) -> Replica:
        """Drop a V1 replica's model and optimisers until its client's next round start."""
        rep.model, rep.opt = None, None
        rep.s2f.release()
        rep.s1g.release()
        return rep

    # --- per batch -----------------------------------------------------------------------

    def _s1_shape(self, msgs: list[Frame]) -> tuple[int, ...]:
        """The shape S1 features must have: a batch of 1 to ``train.batch_size`` images."""
        dims, most = msgs[-1].header.shape, self.cfg.train.batch_size
        if not dims or not 1 <= dims[0] <= most:
            raise ProtocolError(f"S1 features: shape {dims}, expected a batch of 1 to {most}")
        return split_shape(self.cfg, dims[0])

    def _forward_train(self, peer: Peer, msgs: list[Frame]) -> Reply:
        h = msgs[-1].header
        s1 = receive(peer.rx_s1f, msgs, Kind.FEATURE, "S1 features", self._s1_shape(msgs))
        self._in_round(h.client)
        pixels = s1.shape[0] * 4 * s1.shape[2] * s1.shape[3]  # S1 is half the input size
        rep = peer.replica
        with peer.rng.active(), torch.enable_grad():
            s1.requires_grad_(True)
            rep.model.train()
            s2 = rep.model.server(s1)
            rep.s2f.warm_up(s2, pixels)
            out = rep.s2f.forward(s2)
            enc = rep.s2f.encode(s2, receiver=h.client)
        peer.pending = (s1, s2, out, pixels)
        ids = Ids(h.round, h.epoch, h.batch, h.client, h.phase)
        return Reply(*tensor_message(ids, Kind.FEATURE, Split.S2, s2.shape, enc))

    def _forward_eval(self, peer: Peer, msgs: list[Frame]) -> Reply:
        h = msgs[-1].header
        s1 = receive(peer.rx_s1f, msgs, Kind.FEATURE, "S1 features", self._s1_shape(msgs))
        self._in_round(h.client)
        rep = peer.replica
        with torch.no_grad():
            rep.model.eval()
            s2 = rep.model.server(s1)
            enc = rep.s2f.encode(s2, receiver=h.client, training=False)
            rep.model.train()
        ids = Ids(h.round, h.epoch, h.batch, h.client, h.phase)
        return Reply(*tensor_message(ids, Kind.FEATURE, Split.S2, s2.shape, enc))

    def _backward(self, peer: Peer, msgs: list[Frame]) -> Reply:
        h = msgs[-1].header
        if peer.pending is None:
            raise ProtocolError(f"client {h.client}: S2 gradient without a pending forward pass")
        s1, s2, out, pixels = peer.pending
        g2 = receive(peer.rx_s2g, msgs, Kind.GRADIENT, "S2 gradient", tuple(s2.shape))
        peer.pending = None
        rep = peer.replica
        with peer.rng.active(), torch.enable_grad():
            tensors, grads = [out.x_hat], [g2]
            loss = rep.s2f.loss(out, pixels)
            if loss is not None:
                tensors.append(loss)
                grads.append(None)
            torch.autograd.backward(tensors, grads)
            g1 = s1.grad.detach()
            rep.s1g.warm_up(g1, pixels)
            out_g1 = rep.s1g.forward(g1)
            loss_g = rep.s1g.loss(out_g1, pixels)
            if loss_g is not None:
                loss_g.backward()
            enc = rep.s1g.encode(g1, receiver=h.client)
            rep.opt.step()
            rep.opt.zero_grad(set_to_none=True)
            rep.s2f.step(s2, pixels)
            rep.s1g.step(g1, pixels)
        ids = Ids(h.round, h.epoch, h.batch, h.client, h.phase)
        return Reply(*tensor_message(ids, Kind.GRADIENT, Split.S1, g1.shape, enc))
