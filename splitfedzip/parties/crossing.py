"""One direction of one split point: the sender trains the codec, the receiver decodes.

Entropy decoding only works if the receiver holds bit-identical copies of every weight the
probability tables depend on. So the sender owns and trains the live codec, and *publishes*
snapshots: a frozen copy whose entropy tables are rebuilt, sent to the receiver as a codec
sync. The sender codes with the snapshot it last sent to that receiver, and each frame names
the snapshot's version, so every bitstream decodes exactly. The task gradient that comes back
for a decoded tensor is applied to the live codec's differentiable reconstruction (see
docs/protocol.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from ..codecs import Codec, CodecOutput, codec_id, codec_label
from ..wire import Frame, pack_state, unpack_state


class SyncError(RuntimeError):
    """A frame was coded with a codec version the receiver does not hold."""


@dataclass
class Encoded:
    """A coded tensor: the bitstream, its codec id and version, and the size estimate."""

    payload: bytes
    codec: int
    version: int
    est_bits: float | None


class CodecSender:
    """Owns, trains and publishes the codec of one crossing."""

    def __init__(self, codec: Codec, lmbda: float, lr: float, aux_lr: float) -> None:
        self.live = codec
        self.lmbda = lmbda
        self.lr, self.aux_lr = lr, aux_lr
        self.version = 0
        self._snapshots: dict[int, tuple[int, Codec]] = {}
        self.reset_optimizers()

    @property
    def learned(self) -> bool:
        """Whether there is a codec to train and sync (``none`` has not)."""
        return self.live.learned

    def reset_optimizers(self) -> None:
        """Fresh Adam states (each federated round starts from averaged weights)."""
        if not self.learned:
            self.opt = self.aux_opt = None
            return
        main = [p for n, p in self.live.named_parameters() if not n.endswith("quantiles")]
        aux = [p for n, p in self.live.named_parameters() if n.endswith("quantiles")]
        self.opt = torch.optim.Adam(main, lr=self.lr)
        self.aux_opt = torch.optim.Adam(aux, lr=self.aux_lr)

    def publish(self, receiver: int = 0) -> tuple[int, bytes] | None:
        """Freeze a snapshot for ``receiver``; returns (version, decoder state) to send."""
        if not self.learned:
            return None
        snap = copy.deepcopy(self.live).eval()
        snap.update()
        self.version += 1
        self._snapshots[receiver] = (self.version, snap)
        return self.version, pack_state(snap.decoder_state())

    def forward(self, x: Tensor) -> CodecOutput:
        """The live codec's differentiable path (noise in training)."""
        return self.live(x)

    def loss(self, out: CodecOutput, pixels: int) -> Tensor | None:
        """Rate in bits per input pixel plus λ·MSE; None for ``none``."""
        if not self.learned:
            return None
        return out.bits() / pixels + self.lmbda * out.mse

    @torch.no_grad()
    def encode(self, x: Tensor, receiver: int = 0) -> Encoded:
        """Code ``x`` with the snapshot last published to ``receiver``."""
        if not self.learned:
            payload, est = self.live.encode(x)
            return Encoded(payload, codec_id(self.live), 0, est)
        if receiver not in self._snapshots:
            raise SyncError(f"codec {self.live.name!r}: nothing published to receiver {receiver}")
        version, snap = self._snapshots[receiver]
        payload, est = snap.encode(x.detach())
        return Encoded(payload, codec_id(snap), version, est)

    def step(self) -> None:
        """Apply the accumulated gradients, then one auxiliary (quantile) step."""
        if not self.learned:
            return
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.aux_opt.zero_grad(set_to_none=True)
        self.live.aux_loss().backward()
        self.aux_opt.step()
        self.aux_opt.zero_grad(set_to_none=True)


class CodecReceiver:
    """Holds the decoder side of a peer's codec, as of the peer's last sync."""

    def __init__(self, codec: Codec, device: torch.device) -> None:
        self.codec = codec.eval().to(device)
        self.device = device
        self.version = 0

    def sync(self, version: int, state: bytes) -> None:
        """Install the decoder weights of snapshot ``version``."""
        self.codec.load_decoder_state(unpack_state(state))
        self.codec.to(self.device)
        self.version = version

    @torch.no_grad()
    def decode(self, frame: Frame) -> Tensor:
        """Decode a feature or gradient frame into a tensor on this party's device."""
        h = frame.header
        expected = codec_id(self.codec)
        if h.codec != expected:
            raise SyncError(
                f"frame coded with {codec_label(h.codec)}, expected {codec_label(expected)}"
            )
        if self.codec.learned and h.codec_version != self.version:
            raise SyncError(
                f"frame coded with codec version {h.codec_version}, receiver holds "
                f"{self.version}: a codec sync is missing"
            )
        return self.codec.decompress(frame.payload, h.shape).to(self.device)
