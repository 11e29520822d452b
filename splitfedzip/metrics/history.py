"""What a run records beside its summary: the per-epoch history of local training with the bits
per pixel of every crossing, and the test predictions kept for viewing."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..data.transforms import denormalize
from ..wire import Kind
from .ledger import Ledger
from .segmentation import mean_jaccard
from .summary import payload_bytes

#: The four crossings of a training batch, in the order they happen: (kind, split).
CROSSINGS = (("feature", "s1"), ("feature", "s2"), ("gradient", "s2"), ("gradient", "s1"))
_EPOCH = ("round", "epoch", "client", "train_loss", "val_loss", "batches", "images")
HISTORY_COLUMNS = (
    *_EPOCH,
    *(f"bpp_{split}_{kind}" for kind, split in CROSSINGS),
    *(f"bpp_{split}_{kind}_est" for kind, split in CROSSINGS),
)
#: How many test images the tester keeps, with their masks and predictions.
EXAMPLES = 4


def _crossing_bits(ledger: Ledger) -> dict[tuple[int, int, int, str, str], tuple[int, float]]:
    """(client, round, epoch, kind, split) -> (payload bits, estimated bits or NaN) of training."""
    totals: dict[tuple[int, int, int, str, str], tuple[int, float]] = {}
    tensors = {Kind.FEATURE.label, Kind.GRADIENT.label}
    for r in ledger.rows:
        if r.phase != "train" or r.kind not in tensors:
            continue
        key = (r.client, r.round, r.epoch, r.kind, r.split)
        bits, est = totals.get(key, (0, 0.0))
        # One frame without an estimate leaves the sum unknown: NaN stays NaN.
        frame_est = math.nan if r.est_bits is None else r.est_bits
        totals[key] = (bits + 8 * payload_bytes(r), est + frame_est)
    return totals


def epoch_history(
    histories: Mapping[int, Sequence[Mapping[str, Any]]], ledger: Ledger, image_size: int
) -> list[dict[str, Any]]:
    """One row per (round, epoch, client) of local training, with BPP per crossing.

    ``histories`` maps a client to its history rows (``ClientResult.history``); rows without an
    ``epoch`` (the global model's validation) are skipped. BPP divides the coded payload bits of
    that crossing's training frames by the epoch's input pixels (images x image_size²); the
    ``_est`` columns do the same with the codec's estimates, None where a frame had none.
    """
    bits = _crossing_bits(ledger)
    out = []
    for client, rows in histories.items():
        for h in rows:
            if "epoch" not in h:
                continue
            pixels = h["images"] * image_size * image_size
            row = {k: h.get(k) for k in _EPOCH} | {"client": client}
            for kind, split in CROSSINGS:
                real, est = bits.get((client, h["round"], h["epoch"], kind, split), (0, 0.0))
                row[f"bpp_{split}_{kind}"] = real / pixels if pixels else None
                ok = pixels and not math.isnan(est)
                row[f"bpp_{split}_{kind}_est"] = est / pixels if ok else None
            out.append(row)
    return sorted(out, key=lambda r: (r["round"], r["epoch"], r["client"]))


def prediction_examples(
    images: torch.Tensor, masks: torch.Tensor, logits: torch.Tensor, num_classes: int
) -> dict[str, np.ndarray]:
    """Test images as the network saw them, their masks and predictions, and each one's MJI.

    ``images`` are normalised network inputs [k, 3, H, W]; they come back as uint8 RGB
    [k, H, W, 3]. ``masks`` [k, H, W] are class ids, ``logits`` [k, C, H, W] the back end's
    output, whose argmax is the prediction.
    """
    pred = logits.argmax(dim=1)
    rgb = (denormalize(images.float()) * 255).round().clamp(0, 255).to(torch.uint8)
    mji = [mean_jaccard(pred[i : i + 1], masks[i : i + 1], num_classes) for i in range(len(pred))]
    return {
        "images": rgb.permute(0, 2, 3, 1).cpu().numpy(),
        "masks": masks.to(torch.uint8).cpu().numpy(),
        "predictions": pred.to(torch.uint8).cpu().numpy(),
        "mji": np.asarray(mji, dtype=np.float32),
    }
