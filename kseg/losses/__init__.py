"""kseg.losses: segmentation losses that respect an ignore index."""

from kseg.layers.class_presence import ClassPresenceScore  # a layer; kept here for old imports
from kseg.losses.cross_entropy import SegmentationCrossEntropy
from kseg.losses.dice import DiceLoss
from kseg.losses.focal import FocalLoss
from kseg.losses.jaccard import JaccardLoss
from kseg.losses.lovasz import LovaszSoftmaxLoss
from kseg.losses.semantic_context import SemanticContextLoss, class_presence_target

__all__ = [
    "SegmentationCrossEntropy",
    "DiceLoss",
    "JaccardLoss",
    "FocalLoss",
    "LovaszSoftmaxLoss",
    "SemanticContextLoss",
    "ClassPresenceScore",
    "class_presence_target",
]
