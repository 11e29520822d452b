"""Segmentation losses and scores, and Bjøntegaard-delta curve comparison."""

from .bd import bd_metric, bd_rate
from .segmentation import (
    DICE_EPS,
    SegmentationMeter,
    dice_per_image,
    jaccard_per_image,
    mean_jaccard,
    soft_dice_loss,
)

__all__ = [
    "DICE_EPS",
    "SegmentationMeter",
    "bd_metric",
    "bd_rate",
    "dice_per_image",
    "jaccard_per_image",
    "mean_jaccard",
    "soft_dice_loss",
]
