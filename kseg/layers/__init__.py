"""Keras layers for semantic segmentation."""

from kseg.layers.aspp import ASPP
from kseg.layers.class_presence import ClassPresenceScore
from kseg.layers.conv import ConvBNAct
from kseg.layers.crop import CropLike
from kseg.layers.decoder import DeepLabV3PlusDecoder
from kseg.layers.gcu import GraphConvolutionalUnit
from kseg.layers.ginet import GraphInteractionUnit
from kseg.layers.glore import GloReUnit
from kseg.layers.jpu import JointPyramidUpsampling
from kseg.layers.mix_transformer import (
    DropPath,
    EfficientSelfAttention,
    MixFFN,
    OverlapPatchEmbedding,
)
from kseg.layers.pooling import (
    AdaptiveAveragePooling2D,
    MaxPoolingWithArgmax2D,
    MaxUnpooling2D,
    Pooling2D,
)
from kseg.layers.ppm import PyramidPoolingModule
from kseg.layers.preprocessing import ImageNormalization
from kseg.layers.resize import Resize2D, ResizeLike

__all__ = [
    "ConvBNAct",
    "Resize2D",
    "ResizeLike",
    "AdaptiveAveragePooling2D",
    "MaxPoolingWithArgmax2D",
    "MaxUnpooling2D",
    "Pooling2D",
    "ASPP",
    "PyramidPoolingModule",
    "DeepLabV3PlusDecoder",
    "GraphConvolutionalUnit",
    "GloReUnit",
    "GraphInteractionUnit",
    "ClassPresenceScore",
    "JointPyramidUpsampling",
    "CropLike",
    "ImageNormalization",
    "OverlapPatchEmbedding",
    "EfficientSelfAttention",
    "MixFFN",
    "DropPath",
]
