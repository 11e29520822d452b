"""The federation server: averages the client-side models and codecs (FedAvg) every round,
keeps the global model with the lowest mean validation loss, and decides who took part."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import asdict

import torch
from torch import Tensor

from ..config import Config
from ..federation import SUBMIT, VALIDATE, Rounds, RunningAverage
from ..federation.freezing import FreezeRule
from ..federation.sampling import sample_clients
from ..federation.weights import (
    WEIGHTS_CODECS,
    UpdateError,
    decode_update,
    encode_feedback,
    state_digest,
)
from ..transport.base import Handler, Reply
from ..wire import Frame, Kind
from .messages import (
    Ids,
    ProtocolError,
    coded_weights_frame,
    control_frame,
    control_of,
    frames,
    integer_of,
    number_of,
    state_of,
    weights_frame,
)
from .models import ClientModel, exchanged_state

log = logging.getLogger(__name__)


class SubmissionRefused(ProtocolError):
    """A client's model cannot be averaged: other keys, shapes or dtypes, or values not finite."""


class FederationServer(Handler):
    """Answers join, get_global, submit, val_report and best_global.

    A round closes when every expected client has submitted; a client whose connection is lost,
    or that is still missing ``federation.round_timeout`` seconds after the round's first
    submission, is dropped and the round is averaged over the others (weights renormalised).
    A submission is checked on arrival against the global model (keys, shapes, dtypes, finite
    values): a bad one is refused with an error to its sender, which is dropped from the round,
    so averaging never meets it.
    Requests that wait for a round answer ``wait`` after ``poll_seconds``, and the client asks
    again, so no single request outlives the transport's timeout.

    ``deadlines=False`` arms no round deadline. That is for clients that take turns in this
    server's event loop (the embedded runtime): there a client waiting for its turn could not
    have answered yet, and one that fails ends the whole run rather than going silent.
    """

    def __init__(
        self,
        cfg: Config,
        num_classes: int,
        num_clients: int,
        *,
        poll_seconds: float = 20.0,
        deadlines: bool = True,
    ) -> None:
        self.cfg, self.poll_seconds, self.deadlines = cfg, poll_seconds, deadlines
        init = ClientModel(cfg, num_classes, cfg.train.seed)
        self.globals: dict[int, dict[str, Tensor]] = {0: exchanged_state(init)}
        self.rounds = Rounds(num_clients)
        #: round -> the clients whose models were averaged into global round + 1
        self.participants: dict[int, list[int]] = {}
        self.val_loss: dict[int, float] = {}
        self.val_clients: dict[int, list[int]] = {}
        self._cond = asyncio.Condition()
        self._timers: dict[tuple[str, int], asyncio.Task] = {}
        self.weights_codec = cfg.federation.weights_codec
        #: round -> the coded update from global round - 1 (sent to clients that hold it)
        self.updates: dict[int, bytes] = {}
        self._digests: dict[int, str] = {}
        #: What the coded global updates lost so far (federation.weights_error_feedback;
        #: None: nothing yet, or no feedback): added to the next global update.
        self.weights_residual: dict[str, Tensor] | None = None
        #: When the codecs freeze; round -> client -> (its training BPP-T, samples) for it.
        self.freezing = FreezeRule(cfg.codec_training)
        self._rates: dict[int, dict[int, tuple[float, int]]] = {}
        #: round -> the running FedAvg sum of the submissions accepted so far
        self._sums: dict[int, RunningAverage] = {}
        self._sample(0)

    @property
    def best_round(self) -> int | None:
        """The global model (by round) with the lowest mean validation loss so far."""
        if not self.val_loss:
            return None
        return min(self.val_loss, key=lambda r: (self.val_loss[r], r))

    @property
    def in_progress(self) -> int:
        """The round being trained now (its global model exists, its average not yet)."""
        return max(self.globals)

    async def handle(self, request: bytes, client: int) -> Reply:
        """Answer one message from ``client``."""
        msgs = frames(request)
        msg = control_of(msgs[0])
        h = msgs[0].header
        for f in msgs:
            if f.header.client != client:
                raise ProtocolError(f"frame names client {f.header.client}, sender is {client}")
        ids = Ids(h.round, h.epoch, 0, client, h.phase)
        kind = msg["type"]
        if kind == "join":
            async with self._cond:
                start = self.rounds.join(client, self.in_progress)
                self._settle()  # a rejoin stops the open round waiting for the old connection
            return Reply(control_frame(ids, {"type": "joined", "round": start}))
        if kind == "get_global":
            if not await self._wait(lambda: h.round in self.globals):
                return Reply(control_frame(ids, {"type": "wait"}))
            head = {"type": "global", "participants": self.participants.get(h.round - 1, [])}
            if self.freezing.active:
                head["frozen"] = self.freezing.frozen(h.round)
            if h.round in self.rounds.sampled:  # federation.clients_per_round: who trains
                head["train"] = sorted(self.rounds.sampled[h.round])
            return self._with_global(ids, head, msg, h.round)
        if kind == "submit":
            value = await self._submission(client, h.round, msg, msgs[1:])
            if self.freezing.needs_rates:
                self._rates.setdefault(h.round, {})[client] = (number_of(msg, "bpp"), value[1])
            accepted = await self._arrive(SUBMIT, h.round, client, value)
            return Reply(control_frame(ids, {"type": "ack", "accepted": accepted}))
        if kind == "val_report":
            self._check_round(client, h.round, "val_report", first=1)
            accepted = await self._arrive(VALIDATE, h.round, client, number_of(msg, "loss"))
            return Reply(control_frame(ids, {"type": "ack", "accepted": accepted}))
        if kind == "best_global":
            final = self.cfg.train.rounds
            if not await self._wait(lambda: final in self.val_loss):
                return Reply(control_frame(ids, {"type": "wait"}))
            return self._with_global(ids, self._record(), msg, self.best_round)
        if kind != "bye":
            raise ProtocolError(f"federation server: unknown control message {kind!r}")
        return Reply(control_frame(ids, {"type": "ack"}))

    def digest(self, r: int) -> str:
        """The digest of global model ``r`` (clients check what they reconstruct against it)."""
        if r not in self._digests:
            self._digests[r] = state_digest(self.globals[r])
        return self._digests[r]

    def _with_global(self, ids: Ids, head: dict, msg: dict, r: int) -> Reply:
        """``head`` and global model ``r``: whole with the float32 exchange; else with its
        digest, in the frame :meth:`_global_frame` chooses for what the client holds."""
        if self.weights_codec == "float32":
            return Reply(control_frame(ids, head) + weights_frame(ids, self.globals[r]))
        head["digest"] = self.digest(r)
        return Reply(control_frame(ids, head) + self._global_frame(ids.at(round=r), msg))

    def _global_frame(self, ids: Ids, msg: dict) -> bytes:
        """Global model ``ids.round`` for a client that holds model ``have`` (with ``digest``):
        nothing when it holds this one, the coded update when it holds the one before, else
        the whole model in float32. Every way gives the same model, bit for bit."""
        r, have = ids.round, msg.get("have")
        if (
            isinstance(have, int)
            and have in self.globals
            and msg.get("digest") == self.digest(have)
        ):
            if have == r:
                return b""
            if have == r - 1 and r in self.updates:
                codec = WEIGHTS_CODECS[self.cfg.weights_codec_of(r - 1)]
                return coded_weights_frame(ids, codec, have, self.updates[r])
        return weights_frame(ids, self.globals[r])

    async def disconnected(self, client: int) -> None:
        """The transport lost ``client``: stop waiting for it."""
        async with self._cond:
            r = self.in_progress
            self.rounds.drop(client, r, "dropped", "connection lost")
            self._settle()

    def _check_round(self, client: int, r: int, what: str, first: int = 0) -> None:
        if not first <= r <= self.in_progress:
            raise ProtocolError(
                f"client {client}: {what} for round {r}, but round {self.in_progress} is the "
                "latest in progress"
            )

    async def _submission(
        self, client: int, r: int, msg: dict, rest: list
    ) -> tuple[dict[str, Tensor], int]:
        """The submitted (state, samples), in the global model's key order; refused when it
        cannot be averaged with the global model."""
        self._check_round(client, r, "submit")
        samples = integer_of(msg, "train_samples", minimum=1)
        if len(rest) != 1:
            raise ProtocolError(f"client {client}: submit must carry one weights frame")
        try:
            state = self._submitted_state(r, rest[0])
            problem = _mismatch(state, self.globals[0])
        except ValueError as e:
            problem = str(e)
        if problem is None:
            return {k: state[k] for k in self.globals[0]}, samples
        async with self._cond:
            self.rounds.drop(client, r, "refused", problem)
            self._settle()  # the others need not wait for it
        log.warning("client %d: round %d submission refused: %s", client, r, problem)
        raise SubmissionRefused(f"client {client}: round {r} submission refused: {problem}")

    def _submitted_state(self, r: int, frame: Frame) -> dict[str, Tensor]:
        """A submission's model: whole, or a coded update to global model ``r``."""
        h = frame.header
        if h.kind != Kind.WEIGHTS or h.codec == 0:
            return state_of(frame)
        codec = self.cfg.weights_codec_of(r)
        if h.codec != WEIGHTS_CODECS[codec] or h.codec_version != r:
            raise UpdateError(
                f"an update with weights codec {h.codec} to global model {h.codec_version}; "
                f"this server decodes {codec} updates to global model {r}"
            )
        return decode_update(frame.payload, self.globals[r], codec)

    def _record(self) -> dict:
        """The best_global answer: the round chosen, each round's participants and validation,
        and the membership events."""
        r = self.best_round
        rounds = [
            {
                "round": k, "participants": self.participants.get(k),
                "val_loss": self.val_loss.get(k + 1), "val_clients": self.val_clients.get(k + 1),
            } | ({"sampled": sorted(self.rounds.sampled[k])} if k in self.rounds.sampled else {})
            | ({"codecs_frozen": self.freezing.frozen(k)} if self.freezing.active else {})
            for k in range(self.cfg.train.rounds)
        ]  # fmt: skip
        events = [asdict(e) for e in self.rounds.events]
        return {
            "type": "best_global", "round": r, "val_loss": self.val_loss[r],
            "rounds": rounds, "events": events,
        }  # fmt: skip

    async def _wait(self, ready: Callable[[], bool]) -> bool:
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(ready), self.poll_seconds)
            except TimeoutError:
                return ready()
        return True

    async def _arrive(self, kind: str, r: int, client: int, value: object) -> bool:
        async with self._cond:
            state = None
            if kind == SUBMIT:  # only the sample count waits at the barrier; the state is summed
                state, value = value
                if client in self._sums.get(r, RunningAverage()).clients:
                    raise ProtocolError(f"client {client}: a second submission for round {r}")
            if not self.rounds.arrive(kind, r, client, value):
                log.warning("client %d: %s for round %d arrived after it closed", client, kind, r)
                return False
            if state is not None:
                self._sums.setdefault(r, RunningAverage()).add(client, state, value)
            if self.deadlines and (kind, r) not in self._timers:
                self._timers[kind, r] = asyncio.create_task(self._deadline(kind, r))
            self._settle()
            return True

    async def _deadline(self, kind: str, r: int) -> None:
        timeout = self.cfg.federation.round_timeout
        await asyncio.sleep(timeout)
        async with self._cond:
            for c in sorted(self.rounds.missing(kind, r)):
                log.warning("client %d: no %s for round %d in %g s; dropped", c, kind, r, timeout)
                self.rounds.drop(c, r, "timeout", f"no {kind} within {timeout:g} s of the first")
            self._settle()

    def _settle(self) -> None:
        """Close every barrier that has all it waits for (the caller holds the condition)."""
        closed = False
        for kind, r in self.rounds.ready():
            values = self.rounds.close(kind, r)
            timer = self._timers.pop((kind, r), None)
            if timer is not None and timer is not asyncio.current_task():
                timer.cancel()
            order = sorted(values)
            if kind == SUBMIT:
                # FedAvg over whoever took part: weights renormalise over their sample counts.
                average = self._sums.pop(r).result()
                if self.weights_codec == "float32":
                    self.globals[r + 1] = average
                else:
                    # The global model is what the clients reconstruct from the coded update.
                    coded, self.globals[r + 1], lost = encode_feedback(
                        average,
                        self.globals[r],
                        self.cfg.weights_codec_of(r),
                        self.weights_residual,
                        self.cfg.federation.weights_keep,
                    )
                    self.updates[r + 1] = coded
                    if self.cfg.federation.weights_error_feedback:
                        self.weights_residual = lost
                self.participants[r] = order
                rates = self._rates.pop(r, {})
                self.freezing.observe(r, [rates[c] for c in order if c in rates])
                self._sample(r + 1)
            else:
                self.val_loss[r] = math.fsum(values.values()) / len(values)
                self.val_clients[r] = order
            closed = True
        if closed:
            self._prune()
            self._cond.notify_all()

    def _sample(self, r: int) -> None:
        """Draw who trains in round ``r`` (``federation.clients_per_round``; seeded)."""
        spec = self.cfg.federation.clients_per_round
        if spec is not None and r < self.cfg.train.rounds:
            members = self.rounds.expected(r)
            self.rounds.sampled[r] = set(sample_clients(members, spec, self.cfg.train.seed, r))

    def _prune(self) -> None:
        """Forget global models that can no longer be sent or chosen: all but round 0 (the
        layout submissions are checked against), the two latest (a client holding the one
        before gets the update), the best validated so far, and those not validated yet."""
        latest, best = self.in_progress, self.best_round
        for k in list(self.globals):
            if 0 < k < latest - 1 and k != best and k in self.val_loss:
                del self.globals[k]
                self._digests.pop(k, None)
                self.updates.pop(k, None)


def _mismatch(state: dict[str, Tensor], reference: dict[str, Tensor]) -> str | None:
    """Why ``state`` cannot be averaged with ``reference``; None when it can."""
    missing = [k for k in reference if k not in state]
    extra = [k for k in state if k not in reference]
    if missing or extra:
        return f"keys differ from the global model's: missing {missing[:3]}, unexpected {extra[:3]}"
    for key, ref in reference.items():
        value = state[key]
        if value.shape != ref.shape or value.dtype != ref.dtype:
            return (
                f"{key!r} is {value.dtype} {tuple(value.shape)}, the global model's "
                f"{ref.dtype} {tuple(ref.shape)}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return f"{key!r} holds values that are not finite"
    return None
