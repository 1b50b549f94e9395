"""kseg.metrics: segmentation metrics on one streaming confusion matrix."""

from kseg.metrics.confusion_matrix import ConfusionMatrix
from kseg.metrics.segmentation_metrics import (
    DiceScore,
    F1Score,
    FrequencyWeightedIoU,
    MeanIoU,
    MeanPixelAccuracy,
    PixelAccuracy,
)

__all__ = [
    "ConfusionMatrix",
    "MeanIoU",
    "PixelAccuracy",
    "MeanPixelAccuracy",
    "FrequencyWeightedIoU",
    "DiceScore",
    "F1Score",
]
