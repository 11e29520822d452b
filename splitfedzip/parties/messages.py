"""Building and reading the frames the parties exchange."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ..wire import (
    Frame,
    Header,
    Kind,
    Phase,
    Split,
    encode_frame,
    pack_control,
    pack_state,
    read_frames,
    unpack_control,
    unpack_state,
)
from .crossing import CodecReceiver, Encoded


class ProtocolError(ValueError):
    """A party received a message it did not expect at this point of the protocol."""


@dataclass(frozen=True)
class Ids:
    """Where a message belongs: round, local epoch, batch, client, phase."""

    round: int = 0
    epoch: int = 0
    batch: int = 0
    client: int = 0
    phase: Phase = Phase.TRAIN

    def at(self, **changes: Any) -> Ids:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def header(self, kind: Kind, split: Split = Split.NONE, **fields: Any) -> Header:
        """A frame header carrying these ids."""
        return Header(
            kind=kind, round=self.round, epoch=self.epoch, batch=self.batch,
            client=self.client, split=split, phase=self.phase, **fields,
        )  # fmt: skip


def tensor_frame(ids: Ids, kind: Kind, split: Split, shape: torch.Size, enc: Encoded) -> bytes:
    """A feature or gradient frame holding a coded tensor."""
    h = ids.header(
        kind, split, shape=tuple(shape), dtype=torch.float32, codec=enc.codec,
        codec_version=enc.version,
    )  # fmt: skip
    return encode_frame(h, enc.payload)


def tensor_message(
    ids: Ids, kind: Kind, split: Split, shape: torch.Size, enc: Encoded
) -> tuple[bytes, dict[int, float]]:
    """The tensor frame, preceded by its snapshot's sync frame when one was just published;
    and the ledger's size estimate, keyed by the tensor frame's index in the message."""
    frame = tensor_frame(ids, kind, split, shape, enc)
    if enc.sync is None:
        return frame, {0: enc.est_bits}
    return sync_frame(ids, split, enc.codec, enc.version, enc.sync) + frame, {1: enc.est_bits}


def receive(
    rx: CodecReceiver,
    message: list[Frame],
    kind: Kind,
    what: str,
    shape: tuple[int, ...] | None = None,
) -> Tensor:
    """Install the snapshot sync that may precede a tensor frame, then decode the tensor.

    ``shape`` is the shape the tensor must have: checked before decoding, so that a peer's
    header never sizes what the decoder allocates.
    """
    *syncs, frame = message
    for sync in syncs:
        h = expect(sync, Kind.CODEC_SYNC, f"a codec sync ahead of the {what}").header
        rx.sync(h.codec_version, sync.payload)
    frame = expect(frame, kind, what)
    if shape is not None and frame.header.shape != tuple(shape):
        raise ProtocolError(f"{what}: shape {frame.header.shape}, expected {tuple(shape)}")
    return rx.decode(frame, what)


def control_frame(ids: Ids, message: dict[str, Any]) -> bytes:
    """A control frame with a JSON body (it must have a ``type``)."""
    return encode_frame(ids.header(Kind.CONTROL), pack_control(message))


def no_gradient_frame(ids: Ids, loss: float) -> bytes:
    """The control frame sent in place of a training batch's S2 gradient (split S2, so that
    the ledger places it beside the gradients it replaces)."""
    body = {"type": "no_gradient", "loss": loss}
    return encode_frame(ids.header(Kind.CONTROL, Split.S2), pack_control(body))


def weights_frame(ids: Ids, state: dict[str, Tensor]) -> bytes:
    """A weights frame holding a state dict."""
    return encode_frame(ids.header(Kind.WEIGHTS), pack_state(state))


def coded_weights_frame(ids: Ids, codec: int, reference: int, payload: bytes) -> bytes:
    """A weights frame holding a coded update to global model ``reference``."""
    return encode_frame(ids.header(Kind.WEIGHTS, codec=codec, codec_version=reference), payload)


def sync_frame(ids: Ids, split: Split, codec: int, version: int, state: bytes) -> bytes:
    """A codec-sync frame: the decoder side of snapshot ``version``."""
    return encode_frame(
        ids.header(Kind.CODEC_SYNC, split, codec=codec, codec_version=version), state
    )


def frames(message: bytes) -> list[Frame]:
    """The frames of a message, in order."""
    return read_frames(message)


def expect(frame: Frame, kind: Kind, what: str) -> Frame:
    """Check a frame's kind, naming what was expected."""
    if frame.header.kind != kind:
        raise ProtocolError(
            f"expected {what} ({kind.label}), got a {frame.header.kind.label} frame"
        )
    return frame


def control_of(frame: Frame, *types: str) -> dict[str, Any]:
    """The JSON body of a control frame, checking its type."""
    msg = unpack_control(expect(frame, Kind.CONTROL, "/".join(types) or "control").payload)
    if types and msg["type"] not in types:
        raise ProtocolError(f"expected control message {'/'.join(types)}, got {msg['type']!r}")
    return msg


def integer_of(msg: dict[str, Any], key: str, minimum: int = 0) -> int:
    """An integer field of a control message, at least ``minimum``."""
    value = msg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProtocolError(
            f"control message {msg['type']!r}: {key} must be an integer >= {minimum}, got {value!r}"
        )
    return value


def number_of(msg: dict[str, Any], key: str) -> float:
    """A finite number field of a control message."""
    value = msg.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(
            f"control message {msg['type']!r}: {key} must be a finite number, got {value!r}"
        )
    return float(value)


def clients_of(msg: dict[str, Any], key: str) -> list[int]:
    """A list of client ids in a control message."""
    value = msg.get(key, [])
    if not isinstance(value, list) or any(
        isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in value
    ):
        raise ProtocolError(
            f"control message {msg['type']!r}: {key} must be a list of client ids, got {value!r}"
        )
    return value


def state_of(frame: Frame) -> dict[str, Tensor]:
    """The state dict of a weights frame."""
    return unpack_state(expect(frame, Kind.WEIGHTS, "weights").payload)
