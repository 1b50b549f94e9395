"""Backbones: VGG16 and dilated ResNet-50/101 returning dicts of named features."""

from kseg.backbones._info import BackboneInfo, FeatureSpec, feature_info
from kseg.backbones.resnet import ResNet, ResNet50, ResNet101
from kseg.backbones.vgg import VGG16

__all__ = [
    "VGG16",
    "ResNet",
    "ResNet50",
    "ResNet101",
    "BackboneInfo",
    "FeatureSpec",
    "feature_info",
]
