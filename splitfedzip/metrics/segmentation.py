"""Soft Dice loss and per-image Jaccard / Dice scores for multi-class segmentation."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

# Keeps Dice defined (and differentiable) when a class is predicted nowhere; small enough not
# to bias the ratio of the pixel sums, which are >= 1 for every class that is kept.
DICE_EPS = 1e-6


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS
) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in the batch's ground truth."""
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"expected logits [B,C,H,W] and target [B,H,W], got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    num_classes = logits.shape[1]
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    truth = onehot.sum(dims)
    dice = (2 * inter + eps) / (probs.sum(dims) + truth + eps)
    present = truth > 0
    return 1 - dice[present].mean()


def _as_pred(logits_or_pred: torch.Tensor) -> torch.Tensor:
    """Class ids [B, H, W] from either logits [B, C, H, W] or ids themselves."""
    if logits_or_pred.ndim == 4:
        return logits_or_pred.argmax(dim=1)
    if logits_or_pred.ndim == 3 and not logits_or_pred.is_floating_point():
        return logits_or_pred
    raise ValueError(
        f"expected logits [B,C,H,W] or integer class ids [B,H,W], "
        f"got {logits_or_pred.dtype} {tuple(logits_or_pred.shape)}"
    )


def _overlaps(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image and class: |P & T|, |P| and |T| as float64 tensors [B, C]."""
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(
            f"pred and target must both be [B,H,W], got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    classes = torch.arange(num_classes, device=pred.device).view(1, -1, 1, 1)
    p = pred.unsqueeze(1) == classes
    t = target.unsqueeze(1) == classes
    inter = (p & t).flatten(2).sum(-1).double()
    return inter, p.flatten(2).sum(-1).double(), t.flatten(2).sum(-1).double()


def jaccard_per_image(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Jaccard [B, C] of each image and class; NaN where the class is in neither map."""
    inter, p, t = _overlaps(_as_pred(pred), target, num_classes)
    union = p + t - inter
    # Class in neither prediction nor truth: nothing to score, so NaN (left out of means).
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, math.nan))


def dice_per_image(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice [B, C] of each image and class; NaN where the class is in neither map."""
    inter, p, t = _overlaps(_as_pred(pred), target, num_classes)
    total = p + t
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.full_like(total, math.nan))


def _foreground_mean(per_class: list[float]) -> float:
    """Mean over classes 1.. of the non-NaN entries; NaN if there are none."""
    values = [v for v in per_class[1:] if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


class SegmentationMeter:
    """Accumulates per-image Jaccard and Dice over batches and reports their means."""

    def __init__(self, num_classes: int):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        zeros = torch.zeros(self.num_classes, dtype=torch.float64)
        self._jac_sum, self._dice_sum, self._count = zeros.clone(), zeros.clone(), zeros.clone()
        self.num_images = 0

    @torch.no_grad()
    def update(self, logits_or_pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: logits [B, C, H, W] (argmax taken) or class ids [B, H, W]."""
        jac = jaccard_per_image(logits_or_pred, target, self.num_classes).cpu()
        dice = dice_per_image(logits_or_pred, target, self.num_classes).cpu()
        valid = ~jac.isnan()  # Jaccard and Dice are NaN for exactly the same entries
        self._jac_sum += jac.nan_to_num(0.0).sum(0)
        self._dice_sum += dice.nan_to_num(0.0).sum(0)
        self._count += valid.sum(0)
        self.num_images += jac.shape[0]

    def result(self) -> dict[str, Any]:
        """``mji`` and ``dice`` (foreground means) and the per-class averages over images."""
        jac = (self._jac_sum / self._count).tolist()  # 0/0 -> NaN for never-seen classes
        dice = (self._dice_sum / self._count).tolist()
        return {
            "mji": _foreground_mean(jac),
            "dice": _foreground_mean(dice),
            "per_class_jaccard": jac,
            "per_class_dice": dice,
            "num_images": self.num_images,
        }


def mean_jaccard(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """MJI: per-image Jaccard averaged over images per class, then over foreground classes."""
    meter = SegmentationMeter(num_classes)
    meter.update(pred, target)
    return meter.result()["mji"]
