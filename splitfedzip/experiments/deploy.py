"""Each party in its own process, talking over gRPC (``serve`` and ``client``; ``launch.py``
starts them all on one machine)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import signal
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..data import build_federated_data, client_data, folder_dataset
from ..data.build import num_classes_for
from ..errors import UserError
from ..metrics.ledger import Ledger
from ..parties.client import Client, ClientResult
from ..parties.federation_server import FederationServer
from ..parties.main_server import MainServer
from ..transport.base import Handler, TransportError
from ..transport.grpc import (
    DEFAULT_MAX_MESSAGE,
    ClientSecurity,
    GrpcChannel,
    PartyService,
    ServerSecurity,
    serve_handler,
)
from .resume import Checkpointing, ClientCheckpoints, ProcessCheckpoints, ServerCheckpoints
from .train import resolve_device

log = logging.getLogger(__name__)


def split_target(target: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port)."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"address {target!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def wait_reachable(target: str, timeout: float) -> None:
    """Wait (bounded) until something accepts TCP connections at ``target``."""
    host, port = split_target(target)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(timeout, 2.0)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise TransportError(f"{target}: not reachable within {timeout:g} s: {e}") from e
            time.sleep(0.2)


def _num_classes(cfg: Config) -> int:
    return cfg.model.num_classes or num_classes_for(cfg.data.dataset)


async def _serve(
    handler: Handler,
    peer: str,
    cfg: Config,
    listen: str,
    security: ServerSecurity,
    max_message: int,
    ledger: Ledger,
    port_file: Path | None,
    until_clients: int | None,
    checkpointing: Checkpointing | None,
) -> None:
    service = PartyService(
        handler, peer=peer, security=security, ledger=ledger, max_message=max_message,
        until_clients=until_clients, keep_replies=checkpointing is not None,
    )  # fmt: skip
    saver = None
    if checkpointing is not None:
        saver = ServerCheckpoints(
            ProcessCheckpoints(cfg, checkpointing, peer), handler, service, ledger
        )
        r = saver.restore()
        if r is not None:
            log.info("%s: resumed from round %d's checkpoint", peer, r)
    server, service, port = await serve_handler(
        handler, listen, peer=peer, security=security, service=service
    )
    host, _ = split_target(listen)
    log.info("%s: serving on %s:%d", peer, host, port)
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(f"{host}:{port}\n")
        tmp.replace(port_file)  # appears whole: a reader never sees a partial address
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(service.done.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    log.info("%s: %s; stopping", peer, "all clients left" if service.done.is_set() else "signal")
    await server.stop(5.0)
    if saver is not None:
        saver.finish()


def _serve_party(
    handler: Handler,
    peer: str,
    cfg: Config,
    listen: str,
    security: ServerSecurity,
    max_message: int,
    ledger_path: Path | None,
    port_file: Path | None,
    until_clients: int | None,
    checkpointing: Checkpointing | None,
) -> Ledger:
    ledger = Ledger()
    if until_clients is None:
        until_clients = cfg.data.num_clients()
    try:
        asyncio.run(
            _serve(
                handler, peer, cfg, listen, security, max_message, ledger, port_file,
                until_clients or None, checkpointing,
            )
        )  # fmt: skip
    finally:
        if ledger_path is not None:
            ledger.write_csv(ledger_path)
    return ledger


def serve_federation(
    cfg: Config,
    listen: str,
    *,
    security: ServerSecurity,
    max_message: int = DEFAULT_MAX_MESSAGE,
    ledger_path: Path | None = None,
    port_file: Path | None = None,
    until_clients: int | None = None,
    checkpointing: Checkpointing | None = None,
) -> Ledger:
    """Run the federation server until every client has left (or a signal); returns its ledger.
    With ``checkpointing`` it saves its part of each round checkpoint (and may resume)."""
    n = cfg.data.num_clients()
    torch.manual_seed(cfg.train.seed)
    party = FederationServer(cfg, _num_classes(cfg), n)
    return _serve_party(
        party, "federation", cfg, listen, security, max_message, ledger_path, port_file,
        until_clients, checkpointing,
    )  # fmt: skip


def serve_main(
    cfg: Config,
    listen: str,
    federation_target: str,
    *,
    security: ServerSecurity,
    max_message: int = DEFAULT_MAX_MESSAGE,
    ledger_path: Path | None = None,
    port_file: Path | None = None,
    until_clients: int | None = None,
    connect_timeout: float = 60.0,
    checkpointing: Checkpointing | None = None,
) -> Ledger:
    """Run the main server; checks first that the federation server is reachable."""
    # The main server's protocol needs nothing from the federation server yet (clients carry
    # the round protocol); failing early on a wrong address still saves a wasted run.
    wait_reachable(federation_target, connect_timeout)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    party = MainServer(cfg, _num_classes(cfg), device)
    return _serve_party(
        party, "main", cfg, listen, security, max_message, ledger_path, port_file, until_clients,
        checkpointing,
    )  # fmt: skip


def _array_to_json(a: np.ndarray) -> dict[str, Any]:
    # Raw bytes in base64: a quarter larger than the array, where a JSON list would be ~10x.
    data = base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")
    return {"dtype": a.dtype.str, "shape": list(a.shape), "base64": data}


def _array_from_json(raw: dict[str, Any]) -> np.ndarray:
    data = base64.b64decode(raw["base64"])
    return np.frombuffer(data, dtype=np.dtype(raw["dtype"])).reshape(raw["shape"]).copy()


def client_result_to_json(result: ClientResult, test_images: int | None) -> str:
    """A client's result as JSON (``test_images``: the size of the test set it evaluated)."""
    raw = asdict(result) | {"test_images": test_images}
    if result.examples is not None:
        raw["examples"] = {k: _array_to_json(v) for k, v in result.examples.items()}
    return json.dumps(raw, indent=2) + "\n"


def client_result_from_json(text: str) -> tuple[ClientResult, int | None]:
    """Inverse of :func:`client_result_to_json`."""
    raw = json.loads(text)
    test_images = raw.pop("test_images", None)
    if raw.get("examples") is not None:
        raw["examples"] = {k: _array_from_json(v) for k, v in raw["examples"].items()}
    return ClientResult(**raw), test_images


def _client_sets(
    cfg: Config, client_id: int, data_root: str | Path | None, test_root: str | Path | None
):
    """This client's (train, val, test or None): from its own folder when it has one (``--data-
    root`` or ``data.client_roots``), else its share of the data set built from the config."""
    d, n = cfg.data, cfg.data.num_clients()
    if not 0 <= client_id < n:
        raise UserError(f"--client-id {client_id}: the config has {n} clients")
    if data_root is None and d.client_roots:
        data_root = d.client_roots[client_id]
    if data_root is None:
        data = build_federated_data(d, cfg.train.seed)
        own = data.clients[client_id]
        return own.train, own.val, data.test if client_id == 0 else None
    # Only this client's folder is read; client 0, the tester, also reads its test folder.
    own = client_data(d, cfg.train.seed, client_id, data_root)
    test = None
    if client_id == 0:
        test_root = test_root or d.test_root
        if test_root is None:
            raise UserError("client 0 tests the final model: give --test-root (or data.test_root)")
        test = folder_dataset(d, test_root)
    return own.train, own.val, test


def run_client(
    cfg: Config,
    client_id: int,
    main_target: str,
    federation_target: str,
    *,
    security: ClientSecurity,
    max_message: int = DEFAULT_MAX_MESSAGE,
    ledger_path: Path | None = None,
    result_path: Path | None = None,
    connect_timeout: float = 60.0,
    request_timeout: float | None = 600.0,
    progress: bool = False,
    data_root: str | Path | None = None,
    test_root: str | Path | None = None,
    checkpointing: Checkpointing | None = None,
    reconnect: float = 0.0,
) -> ClientResult:
    """Run one client against the two servers; writes its ledger and result when paths are given.

    ``data_root``: this client's own folder (it reads no other); ``test_root``: client 0's test
    folder. Without them the client takes its share of the data set the config describes.
    ``checkpointing``: save its part of each round checkpoint (and resume from one);
    ``reconnect``: seconds to wait for a server that went away to come back.
    """
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    train, val, test = _client_sets(cfg, client_id, data_root, test_root)
    ledger = Ledger()

    async def go() -> ClientResult:
        common = dict(
            security=security, ledger=ledger, max_message=max_message,
            connect_timeout=connect_timeout, request_timeout=request_timeout,
            claim_timeout=connect_timeout, reconnect=reconnect,
        )  # fmt: skip
        main = await GrpcChannel.connect(main_target, client_id, peer="main", **common)
        try:
            federation = await GrpcChannel.connect(
                federation_target, client_id, peer="federation", **common
            )
            try:
                client = Client(
                    client_id, cfg, _num_classes(cfg), train, val, main, federation, device,
                    test=test, progress=progress,
                )  # fmt: skip
                resumed = None
                if checkpointing is not None:
                    store = ProcessCheckpoints(cfg, checkpointing, f"client-{client_id}")
                    channels = {"main": main, "federation": federation}
                    resumed = ClientCheckpoints(store, client, channels, ledger).restore()
                    if resumed is not None:
                        log.info("client %d: resumed from round %d", client_id, resumed[0])
                return await client.run(resumed)
            finally:
                await federation.close()
        finally:
            await main.close()

    try:
        result = asyncio.run(go())
    finally:
        if ledger_path is not None:
            ledger.write_csv(ledger_path)
    if result_path is not None:
        result_path.write_text(client_result_to_json(result, len(test) if test else None))
    return result
