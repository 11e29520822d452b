"""Segmentation losses and scores, Bjøntegaard-delta curve comparison, and the per-epoch
history and test predictions a run records."""

from .bd import bd_metric, bd_rate
from .history import EXAMPLES, HISTORY_COLUMNS, epoch_history, prediction_examples
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
    "EXAMPLES",
    "HISTORY_COLUMNS",
    "SegmentationMeter",
    "bd_metric",
    "bd_rate",
    "dice_per_image",
    "epoch_history",
    "jaccard_per_image",
    "mean_jaccard",
    "prediction_examples",
    "soft_dice_loss",
]
