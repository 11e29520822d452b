"""The federation server: averages the client-side models and codecs (FedAvg) every round and
keeps the global model with the lowest mean validation loss."""

from __future__ import annotations

import asyncio
import math

from torch import Tensor

from ..config import Config
from ..federation import fedavg
from ..transport.base import Reply
from .messages import Ids, ProtocolError, control_frame, control_of, frames, state_of, weights_frame
from .models import ClientModel, exchanged_state


class FederationServer:
    """Holds the global client model; answers join, get_global, submit, val_report, best_global."""

    def __init__(self, cfg: Config, num_classes: int, num_clients: int) -> None:
        self.cfg, self.num_clients = cfg, num_clients
        init = ClientModel(cfg, num_classes, cfg.train.seed)
        self.globals: dict[int, dict[str, Tensor]] = {0: exchanged_state(init)}
        self.samples: dict[int, int] = {}
        self._submitted: dict[int, dict[int, dict[str, Tensor]]] = {}
        self._val: dict[int, dict[int, float]] = {}
        self.val_loss: dict[int, float] = {}
        self._cond = asyncio.Condition()

    @property
    def best_round(self) -> int | None:
        """The global model (by round) with the lowest mean validation loss so far."""
        if not self.val_loss:
            return None
        return min(self.val_loss, key=lambda r: (self.val_loss[r], r))

    async def handle(self, request: bytes, client: int) -> Reply:
        """Answer one message from ``client``."""
        msgs = frames(request)
        msg = control_of(msgs[0])
        h = msgs[0].header
        ids = Ids(h.round, h.epoch, 0, client, h.phase)
        kind = msg["type"]
        if kind == "join":
            self.samples[client] = int(msg["train_samples"])
        elif kind == "get_global":
            async with self._cond:
                await self._cond.wait_for(lambda: h.round in self.globals)
            return Reply(weights_frame(ids, self.globals[h.round]))
        elif kind == "submit":
            if len(msgs) != 2:
                raise ProtocolError("submit must carry one weights frame")
            await self._submit(client, h.round, state_of(msgs[1]), int(msg["train_samples"]))
        elif kind == "val_report":
            await self._val_report(client, h.round, float(msg["loss"]))
        elif kind == "best_global":
            final = self.cfg.train.rounds
            async with self._cond:
                await self._cond.wait_for(lambda: final in self.val_loss)
            r = self.best_round
            return Reply(
                control_frame(
                    ids, {"type": "best_global", "round": r, "val_loss": self.val_loss[r]}
                )
                + weights_frame(ids, self.globals[r])
            )
        elif kind != "bye":
            raise ProtocolError(f"federation server: unknown control message {kind!r}")
        return Reply(control_frame(ids, {"type": "ack"}))

    async def _submit(self, client: int, r: int, state: dict[str, Tensor], n: int) -> None:
        async with self._cond:
            got = self._submitted.setdefault(r, {})
            got[client] = state
            self.samples[client] = n
            if len(got) == self.num_clients:
                order = sorted(got)
                self.globals[r + 1] = fedavg(
                    [got[c] for c in order], [self.samples[c] for c in order]
                )
                del self._submitted[r]
                self._cond.notify_all()

    async def _val_report(self, client: int, r: int, loss: float) -> None:
        async with self._cond:
            got = self._val.setdefault(r, {})
            got[client] = loss
            if len(got) == self.num_clients:
                self.val_loss[r] = math.fsum(got.values()) / len(got)
                self._cond.notify_all()
