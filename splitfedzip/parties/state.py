"""A party's run state at a round boundary, as one picklable object, and putting it back.

Each party's state is gathered into one dict and saved with one ``torch.save``, so objects that
share tensors (an optimiser and the model it steps, a codec sender and its live codec) still
share them after loading. What is left out is rebuilt by the party itself: channels, locks,
timers, datasets (whose augmentation generators are saved by state).
"""

from __future__ import annotations

from typing import Any

import torch

from .client import Client
from .federation_server import FederationServer
from .main_server import MainServer

#: Attributes that make up each party's run state (everything a round boundary carries over).
CLIENT_STATE = (
    "model", "s1f", "s2g", "rx_s2f", "rx_s1g", "rng", "opt", "reference", "weights_residual",
)  # fmt: skip
MAIN_STATE = ("peers", "globals", "participants", "_shared", "_sums", "_template")
FEDERATION_STATE = (
    "globals", "rounds", "participants", "val_loss", "val_clients", "updates", "_digests",
    "_sums", "freezing", "_rates", "weights_residual",
)  # fmt: skip


def client_state(client: Client) -> dict[str, Any]:
    """A client's models, codecs, optimiser, random state and augmentation stream."""
    state = {name: getattr(client, name) for name in CLIENT_STATE}
    state["loader_gen"] = client._loader_gen.get_state()
    # The training set's flips draw from a numpy generator that advances every epoch.
    gen = getattr(client.train_set, "generator", None)
    state["augment"] = gen.bit_generator.state if gen is not None else None
    return state


def restore_client(client: Client, state: dict[str, Any]) -> None:
    """Put back what :func:`client_state` saved."""
    for name in CLIENT_STATE:
        setattr(client, name, state[name])
    client._loader_gen.set_state(state["loader_gen"])
    gen = getattr(client.train_set, "generator", None)
    if (gen is None) != (state["augment"] is None):
        raise ValueError("the checkpoint's augmentation state does not fit this client's data")
    if gen is not None:
        gen.bit_generator.state = state["augment"]


def main_state(main: MainServer) -> dict[str, Any]:
    """The main server's replicas, receivers, globals and selections."""
    if main._holder is not None:
        raise RuntimeError("main server: a training batch holds the shared model")
    return {name: getattr(main, name) for name in MAIN_STATE}


def restore_main(main: MainServer, state: dict[str, Any]) -> None:
    """Put back what :func:`main_state` saved."""
    for name in MAIN_STATE:
        setattr(main, name, state[name])


def federation_state(fed: FederationServer) -> dict[str, Any]:
    """The federation server's globals, membership, validation record and coded updates."""
    return {name: getattr(fed, name) for name in FEDERATION_STATE}


def restore_federation(fed: FederationServer, state: dict[str, Any]) -> None:
    """Put back what :func:`federation_state` saved."""
    for name in FEDERATION_STATE:
        setattr(fed, name, state[name])


def process_random_state() -> dict[str, Any]:
    """torch's global CPU generator (eval loaders draw their base seed from it)."""
    return {"torch": torch.get_rng_state()}


def restore_process_random_state(state: dict[str, Any]) -> None:
    """Put back what :func:`process_random_state` saved."""
    torch.set_rng_state(state["torch"])


def server_state(party: FederationServer | MainServer) -> dict[str, Any]:
    """Either server's state (:func:`federation_state` or :func:`main_state`)."""
    if isinstance(party, FederationServer):
        return federation_state(party)
    return main_state(party)


def restore_server(party: FederationServer | MainServer, state: dict[str, Any]) -> None:
    """Put back what :func:`server_state` saved."""
    if isinstance(party, FederationServer):
        restore_federation(party, state)
    else:
        restore_main(party, state)
