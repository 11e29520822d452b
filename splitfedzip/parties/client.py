"""A client (a hospital): holds its data, the front end, the back end and its sending codecs."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..codecs import codec_id
from ..codecs.base import ENTROPY_TABLES
from ..config import Config
from ..errors import RunFailure
from ..federation.weights import (
    WEIGHTS_CODECS,
    UpdateError,
    decode_update,
    encode_feedback,
    state_digest,
)
from ..metrics.history import EXAMPLES, prediction_examples
from ..metrics.segmentation import SegmentationMeter, soft_dice_loss
from ..transport.base import Channel
from ..wire import Frame, Kind, Phase, Split
from .crossing import CodecReceiver, CodecSender
from .messages import (
    Ids,
    ProtocolError,
    clients_of,
    coded_weights_frame,
    control_frame,
    control_of,
    expect,
    frames,
    no_gradient_frame,
    receive,
    state_of,
    sync_frame,
    tensor_message,
    weights_frame,
)
from .models import (
    SCHEMES,
    ClientModel,
    crossing_codec,
    exchanged_state,
    resynced,
    split_shape,
)
from .rng import RngScope

log = logging.getLogger(__name__)


class Diverged(RunFailure):
    """Training went numerically wrong: a loss is no longer a finite number."""


@dataclass
class ClientResult:
    """What a client reports when the run ends (the tester also reports test metrics)."""

    client: int
    test: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    #: From the federation server (the tester only): who took part in each round, and events.
    rounds: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: Training batches this client ran, and when (wall clock, from, to) each epoch trained.
    train_batches: int = 0
    train_spans: list[tuple[float, float]] = field(default_factory=list)
    #: The tester's first test images, masks, predictions and per-image MJI (predictions.npz).
    examples: dict[str, np.ndarray] | None = None


class Client:
    """Runs the client side of the protocol; talks to the servers only through channels."""

    def __init__(
        self,
        cid: int,
        cfg: Config,
        num_classes: int,
        train: Dataset,
        val: Dataset,
        main: Channel,
        federation: Channel,
        device: torch.device,
        test: Dataset | None = None,
        progress: bool = False,
    ) -> None:
        self.cid, self.cfg, self.device = cid, cfg, device
        self.train_set, self.val_set, self.test_set = train, val, test
        self.main, self.federation = main, federation
        self.progress = progress
        self.num_classes = num_classes
        #: The model exists from a round's start to its end (:meth:`release`).
        self.model: ClientModel | None = ClientModel(cfg, num_classes).to(device)
        self.compressed = any(SCHEMES[cfg.scheme])
        opts = cfg.codec_options
        wc, keep = cfg.federation.weights_codec, cfg.federation.weights_keep
        # Codec syncs cross as coded as the weights.
        self.s1f = CodecSender(self.model.s1_feature, cfg.lmbda, opts, wc, keep)
        self.s2g = CodecSender(self.model.s2_gradient, cfg.lmbda, opts, wc, keep)
        self.rx_s2f = CodecReceiver(partial(crossing_codec, cfg, "feature"), device, wc)
        self.rx_s1g = CodecReceiver(partial(crossing_codec, cfg, "gradient"), device, wc)
        flags = cfg.codec_training.trainable
        for sender, trains in ((self.s1f, flags.s1_feature), (self.s2g, flags.s2_gradient)):
            if not trains:
                sender.freeze()
        #: The federation server's word on whether this round's codecs are frozen (None: no
        #: freezing rule); the round's training feature bytes (S1 + S2) and input pixels.
        self.frozen: bool | None = None
        self._rate = [0, 0]
        self.rng = RngScope(cfg.train.seed * 1000 + 17 + cid)
        self._loader_gen = torch.Generator().manual_seed(cfg.train.seed * 1000 + 31 + cid)
        self.opt: torch.optim.Optimizer | None = None
        self.weights_codec = cfg.federation.weights_codec
        #: (round, state) of the last global model installed: the reference of coded updates.
        #: The initial global model is derived here as the federation server derives it.
        self.reference: tuple[int, dict[str, Tensor]] | None = None
        if self.weights_codec != "float32":
            self.reference = (0, exchanged_state(ClientModel(cfg, num_classes, cfg.train.seed)))
        #: What this client's coded submissions lost so far (federation.weights_error_feedback;
        #: None: nothing yet, or no feedback): added to the next submission's update.
        self.weights_residual: dict[str, Tensor] | None = None
        #: Who trains in the round begun last (client sampling); None: every client.
        self.sampled: list[int] | None = None
        #: Awaited at the start of each round, and once after the last validation, with the
        #: round and the record so far (turns and checkpoints: experiments/resume.py).
        self.at_boundary: Callable[[Client, int, ClientResult], Awaitable[None]] | None = None
        self.release()  # until the first round starts

    # --- the run -------------------------------------------------------------------------

    async def run(self, resume: tuple[int, ClientResult] | None = None) -> ClientResult:
        """Join, train every round, report validation, and (the tester) run the test pass;
        ``resume`` (round, result so far) continues a restored client from that round."""
        cfg = self.cfg
        if resume is None:
            result = ClientResult(self.cid)
            start = await self.join()
        else:
            start, result = resume
        for r in range(start, cfg.train.rounds + 1):
            if self.at_boundary is not None:
                await self.at_boundary(self, r, result)
            ids = Ids(round=r, client=self.cid)
            await self.begin_round(ids)
            if r > 0:  # validate the global model averaged at the end of round r-1
                val = await self.validate(ids)
                if not math.isfinite(val):
                    raise Diverged(
                        f"client {self.cid}: the global model of round {r} gives validation "
                        f"loss {val}: the federated model diverged"
                    )
                await self._control(self.federation, ids, {"type": "val_report", "loss": val})
                result.history.append({"round": r - 1, "global_val_loss": val})
            if r < cfg.train.rounds and (self.sampled is None or self.cid in self.sampled):
                await self._local_training(ids, result)
            else:  # not drawn, or the last validation: the main server may free the replica
                await self._control(self.main, ids, {"type": "idle"})
            self.release()
            if r == cfg.train.rounds:
                break
        if self.at_boundary is not None:  # the last validation is done
            await self.at_boundary(self, cfg.train.rounds + 1, result)
        if self.test_set is not None:
            result.test = await self.test(result)
        await self._control(self.main, Ids(client=self.cid), {"type": "bye"})
        await self._control(self.federation, Ids(client=self.cid), {"type": "bye"})
        return result

    async def join(self) -> int:
        """Join both servers; returns the first round to take part in (later on a rejoin)."""
        ids = Ids(client=self.cid)
        join = {"type": "join", "train_samples": len(self.train_set)}
        start = int((await self._control(self.federation, ids, join))["round"])
        await self._control(self.main, ids, join)
        return start

    async def begin_round(self, ids: Ids) -> None:
        """Install the global model of ``ids.round`` on both sides and sync the codecs."""
        participants = await self._load_global(ids)
        start = {"type": "round_start", "participants": participants}
        if self.frozen is not None:
            start["frozen"] = self.frozen
        self._rate = [0, 0]
        await self._control(self.main, ids, start)
        await self.sync(ids)
        self.reset_optimizers()

    async def _local_training(self, ids: Ids, result: ClientResult) -> None:
        cfg = self.cfg
        best, best_loss, best_epoch = None, math.inf, cfg.train.local_epochs
        for e in range(1, cfg.train.local_epochs + 1):
            ids = ids.at(epoch=e)
            log.info("client %d: round %d epoch %d", self.cid, ids.round, e)
            tic = time.time()
            train_loss, batches = await self.train_epoch(ids)
            result.train_spans.append((tic, time.time()))
            result.train_batches += batches
            val = await self.validate(ids.at(phase=Phase.VAL))
            if not (math.isfinite(train_loss) and math.isfinite(val)):
                # Weights that are no longer numbers: selecting or submitting them means nothing.
                raise Diverged(
                    f"client {self.cid}: training diverged in round {ids.round} epoch {e} "
                    f"(training loss {train_loss}, validation loss {val}); try a lower train.lr "
                    "or codec_options.lr, or codec_options.clip_norm"
                )
            await self._control(self.main, ids, {"type": "epoch_end", "val_loss": val})
            # Batches are full but for the last (drop_last=False), so this counts the images.
            images = min(batches * cfg.train.batch_size, len(self.train_set))
            result.history.append({
                "round": ids.round, "epoch": e, "train_loss": train_loss, "val_loss": val,
                "batches": batches, "images": images,
            })  # fmt: skip
            log.info(
                "client %d: round %d epoch %d done: train loss %.4f, val loss %.4f, %d images",
                self.cid, ids.round, e, train_loss, val, images,
            )  # fmt: skip
            if cfg.federation.select == "best" and val < best_loss:
                best, best_loss, best_epoch = copy.deepcopy(self.model.state_dict()), val, e
        if best is not None:
            self.model.load_state_dict(best)
        ids = ids.at(epoch=best_epoch)
        await self._control(self.main, ids, {"type": "select", "epoch": best_epoch})
        submit = {"type": "submit", "train_samples": len(self.train_set)}
        if cfg.codec_training.freeze_rate_change is not None:
            submit["bpp"] = 8 * self._rate[0] / max(self._rate[1], 1)  # the rate rule's input
        message = control_frame(ids, submit)
        lost = None
        if self.reference is None:
            message += weights_frame(ids, exchanged_state(self.model))
        else:
            # The update to the global model this round started from, which the server holds.
            held, state = self.reference
            codec = cfg.weights_codec_of(ids.round)
            payload, _, lost = encode_feedback(
                exchanged_state(self.model),
                state,
                codec,
                self.weights_residual,
                cfg.federation.weights_keep,
            )
            message += coded_weights_frame(ids, WEIGHTS_CODECS[codec], held, payload)
        ack = control_of(frames(await self.federation.request(message))[0], "ack")
        if cfg.federation.weights_error_feedback and ack["accepted"]:
            # A submission the round closed before was dropped whole, as a float32 one would
            # be: what earlier ones lost is still owed, and nothing of this one crossed.
            self.weights_residual = lost
        if not ack["accepted"]:
            log.warning("client %d: round %d closed before this submission", self.cid, ids.round)

    async def _load_global(self, ids: Ids) -> list[int]:
        """Install global round ``ids.round``; returns who took part in the round before."""
        ask = {"type": "get_global"} | self._held()
        reply = await self._poll(self.federation, control_frame(ids, ask))
        head = control_of(reply[0], "global")
        self._build_model()
        if "frozen" in head:
            if not isinstance(head["frozen"], bool):
                raise ProtocolError(f"round {ids.round}: 'frozen' must be true or false")
            self.frozen = head["frozen"]
            if self.frozen:
                self.s1f.freeze()
                self.s2g.freeze()
        self.sampled = clients_of(head, "train") if "train" in head else None
        state = self._global_state(ids.round, head, reply[1:])
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or any(not k.endswith(ENTROPY_TABLES) for k in missing):
            raise RuntimeError(
                f"global weights do not fit the client model: {missing or unexpected}"
            )
        return [int(c) for c in head["participants"]]

    def _held(self) -> dict[str, Any]:
        """What a request for a global model says of the one this client holds (``have``,
        ``digest``): nothing with the float32 exchange, which always sends it whole."""
        if self.reference is None:
            return {}
        held, state = self.reference
        return {"have": held, "digest": state_digest(state)}

    def _global_state(self, r: int, head: dict[str, Any], rest: list[Frame]) -> dict[str, Tensor]:
        """Global model ``r`` from the reply: whole, a coded update to the reference, or (no
        frame) the reference itself; checked against the server's digest when coded."""
        if self.reference is None:
            return state_of(rest[0])
        held, reference = self.reference
        if not rest:
            if held != r:
                raise ProtocolError(
                    f"round {r}: no global model sent, and this client holds {held}"
                )
            state = reference
        else:
            h = expect(rest[0], Kind.WEIGHTS, "the global model").header
            codec = self.cfg.weights_codec_of(r - 1)
            if h.codec == 0:
                state = state_of(rest[0])
            elif h.codec_version != held or h.codec != WEIGHTS_CODECS[codec]:
                raise ProtocolError(
                    f"round {r}: global update with codec {h.codec} to model {h.codec_version}, "
                    f"this client holds model {held} and decodes {codec}"
                )
            else:
                try:
                    state = decode_update(rest[0].payload, reference, codec)
                except UpdateError as e:
                    raise ProtocolError(f"round {r}: global update: {e}") from None
        if state_digest(state) != head.get("digest"):
            raise ProtocolError(f"round {r}: the global model differs from the server's (digest)")
        self.reference = (r, state)
        return state

    async def _poll(self, channel: Channel, message: bytes) -> list[Frame]:
        """Ask until the answer is not ``wait`` (the server answers ``wait`` after a while)."""
        while True:
            reply = frames(await channel.request(message))
            if control_of(reply[0])["type"] != "wait":
                return reply

    def _build_model(self) -> None:
        """A fresh model for a round, its codecs trained by the senders; the global model
        loaded next replaces every weight (the entropy tables are the fresh model's anyway)."""
        # No pretrained weights: the global model (or the reference, itself built with them)
        # replaces every one, and reading the checkpoint per client and round is wasted.
        self.model = ClientModel(self.cfg, self.num_classes, pretrained=False).to(self.device)
        self.s1f.rebind(self.model.s1_feature)
        self.s2g.rebind(self.model.s2_gradient)

    def release(self) -> None:
        """Between rounds, free what the next round start installs again: the model, the
        optimiser states, the codec snapshots and the receivers' codecs (see docs/resume.md)."""
        self.model = self.opt = None
        self.s1f.release()
        self.s2g.release()
        keep = not resynced(self.cfg)
        self.rx_s2f.release(keep)
        self.rx_s1g.release(keep)

    def reset_optimizers(self) -> None:
        """Fresh Adam states for the front end, back end and sending codecs (each round)."""
        params = [*self.model.front_end.parameters(), *self.model.back_end.parameters()]
        self.opt = torch.optim.Adam(params, lr=self.cfg.train.lr)
        self.s1f.reset_optimizers()
        self.s2g.reset_optimizers()

    async def _control(self, channel: Channel, ids: Ids, msg: dict[str, Any]) -> dict[str, Any]:
        return control_of(frames(await channel.request(control_frame(ids, msg)))[0])

    # --- codec syncs ---------------------------------------------------------------------

    async def sync(self, ids: Ids) -> None:
        """Send snapshots of the client's codecs; install the main server's."""
        message = control_frame(ids, {"type": "sync"})
        for split, sender in ((Split.S1, self.s1f), (Split.S2, self.s2g)):
            published = sender.publish()
            if published is not None:
                version, state = published
                message += sync_frame(ids, split, codec_id(sender.live), version, state)
        for f in frames(await self.main.request(message)):
            h = expect(f, Kind.CODEC_SYNC, "codec sync").header
            rx = self.rx_s2f if h.split == Split.S2 else self.rx_s1g
            rx.sync(h.codec_version, f.payload)

    # --- one batch -----------------------------------------------------------------------

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.cfg.train.batch_size, shuffle=shuffle,
            generator=self._loader_gen if shuffle else None, drop_last=False,
        )  # fmt: skip

    async def train_epoch(self, ids: Ids) -> tuple[float, int]:
        """One local epoch over the training set; returns the mean Dice loss and the batches."""
        cfg, losses = self.cfg, []
        self.model.train()
        loader = self._loader(self.train_set, shuffle=True)
        limit = cfg.train.max_batches or len(loader)
        bar = tqdm(
            total=min(limit, len(loader)), disable=not self.progress, leave=False,
            desc=f"client {self.cid} round {ids.round} epoch {ids.epoch}",
        )  # fmt: skip
        for b, (x, y) in enumerate(loader):
            if b >= limit:
                break
            losses.append(await self.train_batch(ids.at(batch=b), x, y))
            bar.update()
        bar.close()
        return float(np.mean(losses)), len(losses)

    async def train_batch(self, ids: Ids, x: torch.Tensor, y: torch.Tensor) -> float:
        """FE -> S1 -> server -> S2 -> BE -> loss -> S2 gradient -> server -> S1 gradient -> FE."""
        x, y = x.to(self.device), y.to(self.device)
        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        with self.rng.active(), torch.enable_grad():
            s1, skip = self.model.front_end(x)
            self.s1f.warm_up(s1, pixels)
            out1 = self.s1f.forward(s1)
            enc = self.s1f.encode(s1)
        reply = await self.main.request(*tensor_message(ids, Kind.FEATURE, Split.S1, s1.shape, enc))
        shape = split_shape(self.cfg, x.shape[0])
        received = frames(reply)
        s2 = receive(self.rx_s2f, received, Kind.FEATURE, "S2 features", shape)
        self._rate[0] += len(enc.payload) + len(received[-1].payload)
        self._rate[1] += pixels
        with self.rng.active(), torch.enable_grad():
            s2.requires_grad_(True)
            skip_leaf = skip.detach().requires_grad_(True)
            dice = soft_dice_loss(self.model.back_end(s2, skip_leaf), y)
            # Eq. (1)-(3): λ weighs the task term whenever something is compressed.
            ((self.cfg.lmbda if self.compressed else 1.0) * dice).backward()
        threshold = self.cfg.train.gradient_threshold
        if threshold is not None and not float(dice.detach()) > threshold:
            return await self._no_gradient(ids, float(dice.detach()))
        with self.rng.active(), torch.enable_grad():
            g2 = s2.grad.detach()
            self.s2g.warm_up(g2, pixels)
            out_g2 = self.s2g.forward(g2)
            enc = self.s2g.encode(g2)
        reply = await self.main.request(
            *tensor_message(ids, Kind.GRADIENT, Split.S2, g2.shape, enc)
        )
        g1 = receive(self.rx_s1g, frames(reply), Kind.GRADIENT, "S1 gradient", tuple(s1.shape))
        with self.rng.active(), torch.enable_grad():
            # The decoded S1 gradient enters through the live codec's reconstruction; the skip
            # connection's gradient is local. Codec losses add their rate and distortion terms.
            tensors, grads = [out1.x_hat, skip], [g1, skip_leaf.grad]
            for sender, out in ((self.s1f, out1), (self.s2g, out_g2)):
                loss = sender.loss(out, pixels)
                if loss is not None:
                    tensors.append(loss)
                    grads.append(None)
            torch.autograd.backward(tensors, grads)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.s1f.step(s1, pixels)
            self.s2g.step(g2, pixels)
        return float(dice.detach())

    async def _no_gradient(self, ids: Ids, loss: float) -> float:
        """Ayad et al.'s threshold: no gradient crosses for this batch. Only the back end steps;
        the front end and the codecs hold no gradient of it, so nothing of it is applied later."""
        control_of(frames(await self.main.request(no_gradient_frame(ids, loss)))[0], "ack")
        self.opt.step()  # parameters without a gradient (the front end's) are left alone
        self.opt.zero_grad(set_to_none=True)
        return loss

    # --- evaluation ----------------------------------------------------------------------

    async def _evaluate(
        self,
        ids: Ids,
        dataset: Dataset,
        meter: SegmentationMeter | None,
        keep: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    ) -> float:
        """Mean Dice loss over ``dataset``; ``keep(x, y, logits)`` sees every batch."""
        # Grad mode is thread-global: never hold it across an await.
        self.model.eval()
        losses = []
        for b, (x, y) in enumerate(self._loader(dataset, shuffle=False)):
            x, y = x.to(self.device), y.to(self.device)
            with torch.no_grad():
                s1, skip = self.model.front_end(x)
                enc = self.s1f.encode(s1, training=False)
            bids = ids.at(batch=b)
            message = tensor_message(bids, Kind.FEATURE, Split.S1, s1.shape, enc)
            reply = await self.main.request(*message)
            shape = split_shape(self.cfg, x.shape[0])
            s2 = receive(self.rx_s2f, frames(reply), Kind.FEATURE, "S2 features", shape)
            with torch.no_grad():
                logits = self.model.back_end(s2, skip)
                losses.append(float(soft_dice_loss(logits, y)))
            if meter is not None:
                meter.update(logits, y)
            if keep is not None:
                keep(x, y, logits)
        self.model.train()
        return float(np.mean(losses))

    async def validate(self, ids: Ids) -> float:
        """Mean Dice loss on the validation set, eval mode, real bitstreams."""
        return await self._evaluate(ids.at(phase=Phase.VAL), self.val_set, None)

    async def test(
        self, result: ClientResult | None = None, examples: int = EXAMPLES
    ) -> dict[str, Any]:
        """Test the best global model (as chosen by the federation server); ``result`` also
        gets the run's record and the first ``examples`` test images with their predictions."""
        ids = Ids(client=self.cid, phase=Phase.TEST)
        ask = {"type": "best_global"} | self._held()
        reply = await self._poll(self.federation, control_frame(ids, ask))
        best = control_of(reply[0], "best_global")
        if result is not None:
            result.rounds, result.events = best["rounds"], best["events"]
        self._build_model()
        # Usually the best model is the last one validated, which this client holds.
        self.model.load_state_dict(self._global_state(best["round"], best, reply[1:]), strict=False)
        ids = ids.at(round=best["round"])
        await self._control(self.main, ids, {"type": "test_start"})
        await self.sync(ids)
        classes = self.model.back_end.head.out_channels
        meter, kept = SegmentationMeter(classes), []

        def keep(x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
            room = examples - sum(len(b[0]) for b in kept)
            if room > 0:
                kept.append((x[:room].cpu(), y[:room].cpu(), logits[:room].cpu()))

        loss = await self._evaluate(ids, self.test_set, meter, keep)
        if result is not None and kept:
            x, y, logits = (torch.cat(parts) for parts in zip(*kept, strict=True))
            result.examples = prediction_examples(x, y, logits, classes)
        return {"round": best["round"], "loss": loss, **meter.result()}
