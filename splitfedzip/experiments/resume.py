"""Round boundaries of an embedded run (``splitfedzip train``): clients take their rounds in
turn, and every party is saved at each boundary; a saved run is put back together here.

The boundary of round ``r`` is the moment when every client has finished round ``r - 1`` (trained
and submitted, or validated and stayed idle) and none has started round ``r``. Each client waits
there. When the last arrives, every party is saved (with checkpoints); then the clients take round
``r`` one at a time, in client order: the next starts when the one before reaches the next
boundary. So only one client's round is in progress at a time, and its transient state (the
main server's replica, optimiser states, best-epoch copies) exists for one client at a time;
and a resumed run, which starts at a boundary, computes exactly what the uninterrupted one did.

Under ``launch`` (and ``serve``, ``client``) each process saves its own part at its own round
boundary (:class:`ProcessCheckpoints`): a client when it starts round ``r``, the federation
server at its first request after global model ``r`` exists, the main server at the first
``round_start`` of round ``r``. Each part holds, with the party, the transport's count of
answered requests (and a client its log of recent ones), so that parts saved at slightly
different moments still fit together: a server that is behind is sent again what it lacks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import Config
from ..metrics.ledger import Ledger
from ..parties import state
from ..parties.client import Client, ClientResult
from ..parties.federation_server import FederationServer
from ..parties.main_server import MainServer
from ..parties.messages import control_of
from ..wire import Frame, Kind
from . import checkpoint

if TYPE_CHECKING:  # train, which needs no network, does not import grpc
    from ..transport.grpc import GrpcChannel, PartyService


class RoundTurns:
    """Installs itself as every client's ``at_boundary`` hook; ``on_boundary(r, results)`` runs
    when every client has reached round ``r``. At ``last`` (after the final validation) every
    client goes on at once: the tester's test is all that is left."""

    def __init__(
        self,
        clients: list[Client],
        last: int,
        on_boundary: Callable[[int, dict[int, ClientResult]], None],
    ) -> None:
        self.order = sorted(c.cid for c in clients)
        self.last, self.on_boundary = last, on_boundary
        self._arrived: dict[int, dict[int, tuple[ClientResult, asyncio.Future]]] = {}
        for c in clients:
            c.at_boundary = self.boundary

    async def boundary(self, client: Client, r: int, result: ClientResult) -> None:
        """Wait until every client reached round ``r`` and the clients before this one in
        client order have finished their round ``r``."""
        fut = asyncio.get_running_loop().create_future()
        waiting = self._arrived.setdefault(r, {})
        waiting[client.cid] = (result, fut)
        self._next(r - 1, client.cid)  # this client's round r - 1 is over: the next one's turn
        if len(waiting) == len(self.order):
            self.on_boundary(r, {cid: res for cid, (res, _) in waiting.items()})
            self._start(r)
        await fut

    def _start(self, r: int) -> None:
        """Everyone reached round ``r``: the first client starts it (at the end, all go)."""
        waiting = self._arrived[r]
        for cid in self.order if r == self.last else self.order[:1]:
            waiting[cid][1].set_result(None)
        if r == self.last:
            del self._arrived[r]

    def _next(self, r: int, cid: int) -> None:
        """Client ``cid`` finished round ``r``: let the next client of round ``r`` start."""
        waiting = self._arrived.get(r)
        if waiting is None:
            return
        i = self.order.index(cid) + 1
        if i < len(self.order):
            waiting[self.order[i]][1].set_result(None)
        else:
            del self._arrived[r]


class EmbeddedCheckpoints:
    """Saves every party of an embedded run at each round boundary; restores the latest."""

    def __init__(self, cfg: Config, parties: Any, directory: Path | None) -> None:
        self.cfg, self.p, self.directory = cfg, parties, directory
        #: Boundaries up to this round are already on disk (a resumed run starts after one).
        self.saved = 0

    def on_boundary(self, r: int, results: dict[int, ClientResult]) -> None:
        """Save round ``r`` unless it is on disk already or it is the end of the run."""
        if self.directory is not None and self.saved < r <= self.cfg.train.rounds:
            self.save(r, results)
            self.saved = r

    def save(self, r: int, results: dict[int, ClientResult]) -> Path:
        """Write round ``r``'s checkpoint of every party."""
        assert self.directory is not None
        parts: dict[str, Any] = {
            "federation": state.federation_state(self.p.federation),
            "main": state.main_state(self.p.main),
        }
        for c in self.p.clients:
            parts[f"client-{c.cid}"] = state.client_state(c)
        parts["run"] = {
            "round": r,
            "ledger": list(self.p.ledger.rows),
            "results": results,
            "random": state.process_random_state(),
        }
        return checkpoint.write_round(self.directory, r, self.cfg, parts)

    def restore(self) -> tuple[int, dict[int, ClientResult]] | None:
        """Load the latest complete round into the parties; (round, each client's result so
        far), or None when there is no checkpoint."""
        found = None if self.directory is None else checkpoint.latest(self.directory, self.cfg)
        if found is None:
            return None
        r, path = found
        run = checkpoint.load_part(path, "run")
        if sorted(run["results"]) != [c.cid for c in self.p.clients]:
            raise ValueError(f"{path}: the checkpoint's clients differ from this run's")
        state.restore_federation(self.p.federation, checkpoint.load_part(path, "federation"))
        state.restore_main(self.p.main, checkpoint.load_part(path, "main"))
        for c in self.p.clients:
            state.restore_client(c, checkpoint.load_part(path, f"client-{c.cid}"))
        self.p.ledger.rows[:] = run["ledger"]
        state.restore_process_random_state(run["random"])
        self.saved = r
        return r, run["results"]


@dataclass(frozen=True)
class Checkpointing:
    """Where a process of a deployment keeps its part of the round checkpoints, and whether
    it continues from one: ``round`` (None: the latest round that holds its part)."""

    directory: Path
    resume: bool = False
    round: int | None = None


class ProcessCheckpoints:
    """One process's part (``federation``, ``main`` or ``client-K``) of each round checkpoint."""

    def __init__(self, cfg: Config, where: Checkpointing, name: str) -> None:
        self.cfg, self.where, self.name = cfg, where, name
        n = cfg.data.num_clients()
        self.parts = ["federation", "main", *(f"client-{i}" for i in range(n))]
        #: Boundaries up to this round are on disk (a resumed process starts after one).
        self.saved = 0

    def due(self, r: int) -> bool:
        """Whether round ``r``'s boundary is still to be saved (never the end of the run)."""
        return self.saved < r <= self.cfg.train.rounds

    def save(self, r: int, part: dict[str, Any]) -> None:
        """Write this process's part of round ``r`` with the process's random state."""
        part = part | {"random": state.process_random_state()}
        checkpoint.write_part(self.where.directory, r, self.cfg, self.name, part, self.parts)
        self.saved = r

    def load(self) -> tuple[int, dict[str, Any]] | None:
        """This process's part to resume from, when resuming and one exists: (round, part)."""
        if not self.where.resume:
            return None
        found = checkpoint.load_own_part(
            self.where.directory, self.cfg, self.name, self.where.round
        )
        if found is not None:
            self.saved = found[0]
        return found


def _control_type(frames: list[Frame]) -> str | None:
    head = frames[0]
    return control_of(head).get("type") if head.header.kind == Kind.CONTROL else None


class ServerCheckpoints:
    """A serving process's part: its party, its transport's counts and its ledger, saved just
    before the party handles the first request past its round boundary."""

    def __init__(
        self,
        store: ProcessCheckpoints,
        party: FederationServer | MainServer,
        service: PartyService,
        ledger: Ledger,
    ) -> None:
        self.store, self.party, self.service, self.ledger = store, party, service, ledger
        service.before_request = self.before_request
        #: The round of the global model the tester asked for (the run's tested model).
        self.tested: int | None = None

    def boundary(self, frames: list[Frame]) -> int | None:
        """The round boundary this request is past: the federation server's in its round
        since global model ``r`` exists; the main server's at round ``r``'s first start."""
        if isinstance(self.party, FederationServer):
            return self.party.in_progress
        return frames[0].header.round if _control_type(frames) == "round_start" else None

    def before_request(self, client: int, frames: list[Frame]) -> None:
        """Save the boundary first when this request is the first past it."""
        if _control_type(frames) in ("best_global", "test_start"):
            self.tested = frames[0].header.round
        r = self.boundary(frames)
        if r is not None and self.store.due(r):
            self.store.save(r, {
                "party": state.server_state(self.party), "transport": self.service.state(),
                "ledger": list(self.ledger.rows),
            })  # fmt: skip

    def finish(self) -> None:
        """Once the tester has had the tested model: write its part as ``train`` does, beside
        the round checkpoints (``client_global.pt`` here, ``server_global.pt`` on the main
        server)."""
        if self.tested is None:
            return
        if isinstance(self.party, FederationServer):
            best = self.party.best_round
            name, weights = "client_global", self.party.globals[best]
        else:
            name, weights = "server_global", self.party.globals[self.tested]
        self.store.where.directory.mkdir(parents=True, exist_ok=True)
        torch.save(weights, self.store.where.directory / f"{name}.pt")

    def restore(self) -> int | None:
        """Load the part to resume from into the party, service and ledger; its round."""
        found = self.store.load()
        if found is None:
            return None
        r, part = found
        state.restore_server(self.party, part["party"])
        self.service.restore(part["transport"])
        self.ledger.rows[:] = part["ledger"]
        state.restore_process_random_state(part["random"])
        return r


class ClientCheckpoints:
    """A client process's part: the client, its channels' counts and logs, its record and
    ledger, saved as it starts each round."""

    def __init__(
        self,
        store: ProcessCheckpoints,
        client: Client,
        channels: dict[str, GrpcChannel],
        ledger: Ledger,
    ) -> None:
        self.store, self.client, self.channels, self.ledger = store, client, channels, ledger
        client.at_boundary = self.boundary

    async def boundary(self, client: Client, r: int, result: ClientResult) -> None:
        """Save round ``r``'s boundary unless it is on disk already."""
        if self.store.due(r):
            self.store.save(r, {
                "party": state.client_state(client), "result": result,
                "channels": {name: ch.state() for name, ch in self.channels.items()},
                "ledger": list(self.ledger.rows),
            })  # fmt: skip

    def restore(self) -> tuple[int, ClientResult] | None:
        """Load the part to resume from; (round, the client's record so far)."""
        found = self.store.load()
        if found is None:
            return None
        r, part = found
        state.restore_client(self.client, part["party"])
        for name, ch in self.channels.items():
            ch.restore(part["channels"][name])
        self.ledger.rows[:] = part["ledger"]
        state.restore_process_random_state(part["random"])
        return r, part["result"]
