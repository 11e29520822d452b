"""One direction of one split point: the sender trains the codec, the receiver decodes.

Entropy decoding only works if the receiver holds bit-identical copies of every weight the
probability tables depend on. So the sender owns and trains the live codec, and *publishes*
snapshots: a frozen copy whose entropy tables are rebuilt, sent to the receiver as a codec
sync. The sender codes with the snapshot it last sent to that receiver, and each frame names
the snapshot's version, so every bitstream decodes exactly. A snapshot travels either in a
round's sync exchange or just ahead of the tensor frame it was published for (the sync policy,
:meth:`CodecSender.encode`). The task gradient that comes back for a decoded tensor is applied
to the live codec's differentiable reconstruction (see docs/protocol.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..codecs import ClassicCodec, Codec, CodecOutput, ErrorFeedback, codec_id, codec_label
from ..codecs.streams import SymbolMismatch
from ..config import CodecConfig
from ..errors import RunFailure
from ..federation.weights import UpdateError, decode_state, encode_state
from ..wire import Frame, pack_state, unpack_state


class SyncError(ValueError):
    """A frame was coded with a codec version the receiver does not hold."""


class IntegrityError(RunFailure):
    """A receiver decoded other symbols than the sender coded: the two sides' decoders disagree."""

    #: How a server reports it to the client whose tensor it was (gRPC's status for corruption).
    status = "DATA_LOSS"


@dataclass
class Encoded:
    """A coded tensor: the bitstream, its codec id and version, and the size estimate.

    ``sync`` is the decoder state of snapshot ``version`` when it was published for this
    tensor: it crosses in a codec-sync frame just ahead of the tensor frame.
    """

    payload: bytes
    codec: int
    version: int
    est_bits: float | None
    sync: bytes | None = None


class CodecSender:
    """Owns, trains and publishes the codec of one crossing."""

    def __init__(
        self,
        codec: Codec,
        lmbda: float,
        opts: CodecConfig,
        sync_codec: str = "float32",
        sync_keep: float = 1.0,
    ) -> None:
        self.live: Codec | None = codec
        self.sync_codec = sync_codec
        self.sync_keep = sync_keep
        #: receiver -> (version, decoder state) as that receiver reconstructed it
        self._sent: dict[int, tuple[int, dict[str, Tensor]]] = {}
        self.lmbda = lmbda
        self.opts = opts
        self.version = 0
        self._snapshots: dict[int, tuple[int, Codec]] = {}
        #: receiver -> optimiser steps of the live codec since its snapshot was taken
        self._stale: dict[int, int] = {}
        #: receivers whose next tensor must carry a fresh snapshot (after the warm-up)
        self._forced: set[int] = set()
        self._warm = opts.warmup_steps == 0
        #: A classic codec's residual (``error_feedback``) and its last training forward.
        self._feedback = ErrorFeedback() if opts.error_feedback and self.classic else None
        self._coded: tuple[Tensor, Tensor, CodecOutput] | None = None
        #: A frozen codec neither trains nor adds its rate to a loss (docs/baselines.md).
        self.frozen = False
        #: receiver -> (version, the live weights its snapshot was taken from), once frozen:
        #: while they stay the same there is nothing new to send it
        self._frozen_sent: dict[int, tuple[int, dict[str, Tensor]]] = {}
        self.reset_optimizers()

    def freeze(self) -> None:
        """Stop training the codec for good: its weights no longer change, the task gradient
        still flows through it to its input."""
        self.frozen = True
        self.live.requires_grad_(False)

    @property
    def learned(self) -> bool:
        """Whether there is a codec to train and sync (``none`` has not)."""
        return self.live.learned

    @property
    def classic(self) -> bool:
        """Whether the codec is a classic one (it codes in ``forward``; see codecs/classic.py)."""
        return isinstance(self.live, ClassicCodec)

    def reset_optimizers(self) -> None:
        """Fresh Adam states (each federated round starts from averaged weights).

        Three groups: the transforms at ``lr``, the entropy models' densities at ``entropy_lr``
        (and the latent gains, one scalar per channel, at ``latent_gain_lr``, by default the
        same) and, in the auxiliary optimiser, the bottlenecks' quantiles at ``aux_lr``. A classic
        codec's error-feedback residual is dropped: it came from the weights being replaced.
        """
        if self._feedback is not None:
            self._feedback.reset()
        if not self.learned:
            self.opt = self.aux_opt = None
            return
        o = self.opts
        named = list(self.live.named_parameters())
        aux = [p for n, p in named if n.endswith("quantiles")]
        gain = [p for n, p in named if "latent_gain" in n]
        density = [p for n, p in named if "entropy_bottleneck" in n and not n.endswith("quantiles")]
        rest = [p for n, p in named if "entropy_bottleneck" not in n and "latent_gain" not in n]
        fast = o.entropy_lr or o.lr
        if o.latent_gain_lr is None or o.latent_gain_lr == fast:
            density, gain = density + gain, []
        groups = [
            {"params": rest, "lr": o.lr},
            {"params": density, "lr": fast},
            {"params": gain, "lr": o.latent_gain_lr},
        ]
        self.opt = torch.optim.Adam([g for g in groups if g["params"]])
        self.aux_opt = torch.optim.Adam(aux, lr=o.aux_lr)

    def rebind(self, codec: Codec) -> None:
        """Train ``codec`` from now on (a model rebuilt for a round): what was published to
        each receiver stays; the optimisers start afresh, as at every round start."""
        self.live = codec
        if self.frozen:  # frozen for good, whichever module holds the weights
            codec.requires_grad_(False)
        self.reset_optimizers()

    def release(self) -> None:
        """Free what a round rebuilds anyway, between rounds: the optimiser states
        (:meth:`reset_optimizers`), the snapshots (every round start publishes afresh) and the
        live codec, whose model the next round start builds (:meth:`rebind`)."""
        self.opt = self.aux_opt = None
        self._coded = None
        self._snapshots.clear()
        self.live = None

    def publish(self, receiver: int = 0) -> tuple[int, bytes] | None:
        """Freeze a snapshot for ``receiver``; returns (version, decoder state) to send."""
        if not self.learned:
            return None
        if self.frozen:
            # Unchanged unless a round loaded other weights (e.g. the test's best round).
            state = {k: v.detach().clone() for k, v in self.live.state_dict().items()}
            held = self._frozen_sent.get(receiver)
            if held is not None and all(torch.equal(held[1][k], v) for k, v in state.items()):
                if receiver not in self._snapshots:  # released between rounds
                    self._snapshots[receiver] = (held[0], self._rebuild(receiver))
                return None
        snap = self._freeze(receiver)
        snap.update()
        self.version += 1
        self._snapshots[receiver] = (self.version, snap)
        self._stale[receiver] = 0
        self._forced.discard(receiver)
        if self.frozen:
            self._frozen_sent[receiver] = (self.version, state)
        if self.sync_codec == "float32":
            return self.version, pack_state(snap.decoder_state())
        # Lossy: the snapshot adopts what the receiver reconstructs before it codes anything.
        payload, state = encode_state(
            snap.decoder_state(), self._sent.get(receiver), self.sync_codec, self.sync_keep
        )
        snap.load_decoder_state(state)
        self._sent[receiver] = (self.version, state)
        return self.version, payload

    def _rebuild(self, receiver: int) -> Codec:
        """The snapshot ``receiver`` holds of a frozen codec, rebuilt here without sending it:
        the live weights, and with a lossy sync the decoder state the receiver reconstructed."""
        snap = copy.deepcopy(self.live).eval()
        snap.update()
        if self.sync_codec != "float32":
            snap.load_decoder_state(self._sent[receiver][1])
        return snap

    def _freeze(self, receiver: int) -> Codec:
        """The live codec's weights, in the module of ``receiver``'s last snapshot if any.

        Copying into the module already held costs a fraction of a deep copy, which took most
        of the time of publishing Cheng2020-attention (hundreds of submodules). Entropy tables
        are skipped: :meth:`Codec.update` rebuilds them from the weights.
        """
        held = self._snapshots.get(receiver)
        if held is None:
            return copy.deepcopy(self.live).eval()
        snap, live = held[1], self.live.state_dict()
        with torch.no_grad():
            for name, t in snap.state_dict().items():
                if t.shape == live[name].shape:
                    t.copy_(live[name])
        return snap

    def forget(self, receiver: int) -> None:
        """``receiver`` starts afresh: nothing published to it is held there any more."""
        self._snapshots.pop(receiver, None)
        self._sent.pop(receiver, None)
        self._stale.pop(receiver, None)
        self._forced.discard(receiver)
        self._frozen_sent.pop(receiver, None)

    def forward(self, x: Tensor) -> CodecOutput:
        """The live codec's differentiable path (noise in training).

        A classic codec codes here, the residual added when there is error feedback; the next
        training :meth:`encode` of the same tensor sends that payload.
        """
        if not self.classic:
            return self.live(x)
        x_in = x if self._feedback is None else self._feedback.add(x)
        out = self.live(x_in)
        self._coded = (x, x_in, out)
        return out

    def loss(self, out: CodecOutput, pixels: int) -> Tensor | None:
        """Rate in bits per input pixel plus λ·MSE; None for ``none``."""
        if not self.learned or self.frozen:
            return None
        return out.bits() / pixels + self.lmbda * out.mse

    def warm_up(self, x: Tensor, pixels: int) -> None:
        """Once per sender: ``warmup_steps`` rate-distortion steps on the first tensor it sees."""
        if self._warm or not self.learned or self.frozen:
            return
        self._warm = True
        for _ in range(self.opts.warmup_steps):
            self._rd_step(x, pixels)
        # Code this very tensor with the warmed-up codec, not with the initial one.
        self._forced = set(self._snapshots)

    def _due(self, receiver: int, training: bool) -> bool:
        """The sync policy: must a fresh snapshot precede the next tensor for ``receiver``?

        Before evaluation, whenever the live codec moved since the snapshot (so that validation
        scores the codec that would be submitted); in training, every ``sync_every`` steps.
        """
        stale = self._stale.get(receiver, 0)
        if receiver in self._forced:
            return True
        if not training:
            return stale > 0
        return self.opts.sync_every > 0 and stale >= self.opts.sync_every

    @torch.no_grad()
    def encode(self, x: Tensor, receiver: int = 0, training: bool = True) -> Encoded:
        """Code ``x`` with ``receiver``'s snapshot, publishing a fresh one first when due."""
        if self.classic and training:
            return self._encode_classic(x)
        if not self.learned:
            payload, est = self.live.encode(x)
            return Encoded(payload, codec_id(self.live), 0, est)
        if receiver not in self._snapshots:
            raise SyncError(f"codec {self.live.name!r}: nothing published to receiver {receiver}")
        sync = None
        if self._due(receiver, training):
            sync = self.publish(receiver)[1]
        version, snap = self._snapshots[receiver]
        payload, est = snap.encode(x.detach())
        return Encoded(payload, codec_id(snap), version, est, sync)

    def _encode_classic(self, x: Tensor) -> Encoded:
        """A training tensor: the payload its forward made (coding it now if none did), and
        the residual that coding left."""
        coded, self._coded = self._coded, None
        if coded is None or coded[0] is not x:
            x_in = x if self._feedback is None else self._feedback.add(x)
            coded = (x, x_in, self.live(x_in.detach()))
        _, x_in, out = coded
        if self._feedback is not None:
            self._feedback.update(x_in, out.x_hat)
        return Encoded(out.payload, codec_id(self.live), 0, None)

    def step(self, x: Tensor | None = None, pixels: int = 0) -> None:
        """Apply the accumulated gradients; then ``local_steps`` rate-distortion steps on ``x``."""
        if not self.learned or self.frozen:
            return
        self._apply()
        if x is not None:
            for _ in range(self.opts.local_steps):
                self._rd_step(x, pixels)

    def _rd_step(self, x: Tensor, pixels: int) -> None:
        """One step of rate + λ·MSE on a tensor the sender holds: compute only, no traffic."""
        with torch.enable_grad():
            self.loss(self.live(x.detach()), pixels).backward()
        self._apply()

    def _apply(self) -> None:
        if self.opts.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.live.parameters(), self.opts.clip_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.aux_opt.zero_grad(set_to_none=True)
        self.live.aux_loss().backward()
        self.aux_opt.step()
        self.aux_opt.zero_grad(set_to_none=True)
        for r in self._stale:
            self._stale[r] += 1


class CodecReceiver:
    """Holds the decoder side of a peer's codec, as of the peer's last sync.

    Between its rounds a party may :meth:`release` the codec; the next sync or decode builds
    it again (``make``) with the decoder state it held.
    """

    def __init__(
        self, make: Callable[[], Codec], device: torch.device, sync_codec: str = "float32"
    ) -> None:
        self.make = make
        self.codec: Codec | None = make().eval().to(device)
        self.device = device
        self.version = 0
        self.sync_codec = sync_codec
        #: (version, decoder state): a lossy sync's reference, or what a released codec held
        self._held: tuple[int, dict[str, Tensor]] | None = None

    def release(self, keep: bool) -> None:
        """Free the codec until it is next needed; ``keep``: its decoder state is kept (the
        peer may send no sync before the next tensor, e.g. a frozen codec's)."""
        if self.codec is None:
            return
        if self.sync_codec == "float32":  # a lossy sync's reference stays in any case
            kept = keep and self.version > 0
            self._held = (self.version, self.codec.decoder_state()) if kept else None
        if self._held is None:
            self.version = 0  # nothing held: the next tensor needs a sync ahead of it
        self.codec = None

    def decoder_state(self) -> dict[str, Tensor] | None:
        """The decoder state held: the codec's, or what a release kept (None: nothing)."""
        if self.codec is not None:
            return self.codec.decoder_state()
        return None if self._held is None else self._held[1]

    def _codec(self) -> Codec:
        """The codec, built again after a release with the decoder state held."""
        if self.codec is None:
            # Built aside from the run's random stream: its initial weights are overwritten.
            with torch.random.fork_rng(devices=[]):
                codec = self.make().eval()
            if self._held is not None:
                codec.load_decoder_state(self._held[1])
            self.codec = codec.to(self.device)
        return self.codec

    def sync(self, version: int, state: bytes) -> None:
        """Install the decoder weights of snapshot ``version``."""
        codec = self._codec()
        if self.sync_codec == "float32":
            codec.load_decoder_state(unpack_state(state))
            self._held = None  # what a release kept is replaced
        else:
            # Entropy tables grow with the weights, so bound the inflation generously.
            limit = 4 * len(pack_state(codec.decoder_state())) + (1 << 20)
            try:
                decoded = decode_state(state, self._held, self.sync_codec, limit,
                                       codec.decoder_state())  # fmt: skip
            except UpdateError as e:
                raise SyncError(f"codec sync version {version}: {e}") from None
            codec.load_decoder_state(decoded)
            self._held = (version, decoded)
        codec.to(self.device)
        self.version = version

    @torch.no_grad()
    def decode(self, frame: Frame, what: str = "tensor") -> Tensor:
        """Decode a feature or gradient frame (``what``, e.g. "S1 features") into a tensor on
        this party's device; :class:`IntegrityError` if the symbols differ from the sender's."""
        h, codec = frame.header, self._codec()
        expected = codec_id(codec)
        if h.codec != expected:
            raise SyncError(
                f"frame coded with {codec_label(h.codec)}, expected {codec_label(expected)}"
            )
        if codec.learned and (self.version == 0 or h.codec_version != self.version):
            raise SyncError(
                f"frame coded with codec version {h.codec_version}, receiver holds "
                f"{self.version or 'none yet'}: a codec sync is missing"
            )
        try:
            return codec.decompress(frame.payload, h.shape).to(self.device)
        except SymbolMismatch as e:
            raise IntegrityError(
                f"{what} of client {h.client}, round {h.round} epoch {h.epoch} batch {h.batch} "
                f"({h.phase.label}), {codec_label(h.codec)} codec version {h.codec_version}: {e}. "
                "The receiver's decoder disagrees with the sender's (another device, library or "
                "thread set-up?); the tensor was not used"
            ) from None
