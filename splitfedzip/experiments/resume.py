"""Round checkpoints of an embedded run (``splitfedzip train``): the round boundary at which
every party is saved, and putting a saved run back together.

A round boundary of round ``r`` is the moment when every client has submitted round ``r - 1``
and none has started round ``r``. Each client waits there; the last to arrive has every party
saved, then all go on in client order, the order in which a resumed run starts them, so a
resumed run computes exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ..config import Config
from ..parties import state
from ..parties.client import Client, ClientResult
from . import checkpoint


class EmbeddedCheckpoints:
    """Saves every party of an embedded run at each round boundary; restores the latest."""

    def __init__(self, cfg: Config, parties: Any, directory: Path) -> None:
        self.cfg, self.p, self.directory = cfg, parties, directory
        self._arrived: dict[int, dict[int, tuple[ClientResult, asyncio.Future]]] = {}
        for c in parties.clients:
            c.at_boundary = self.boundary

    async def boundary(self, client: Client, r: int, result: ClientResult) -> None:
        """Wait until every client reached round ``r``; the last one saves the run."""
        loop = asyncio.get_running_loop()
        waiting = self._arrived.setdefault(r, {})
        fut = loop.create_future()
        waiting[client.cid] = (result, fut)
        if len(waiting) == len(self.p.clients):
            self.save(r, {cid: res for cid, (res, _) in waiting.items()})
            # Released by a callback, in client order: the order a resumed run starts them in.
            loop.call_soon(self._release, r)
        await fut

    def _release(self, r: int) -> None:
        for _, (_, fut) in sorted(self._arrived.pop(r).items()):
            fut.set_result(None)

    def save(self, r: int, results: dict[int, ClientResult]) -> Path:
        """Write round ``r``'s checkpoint of every party."""
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
        found = checkpoint.latest(self.directory, self.cfg)
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
        return r, run["results"]
