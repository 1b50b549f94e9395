"""Backbones: VGG16, dilated ResNets and keras.applications encoders returning dicts of features."""

from kseg.backbones._channels import with_input_channels
from kseg.backbones._info import BackboneInfo, FeatureSpec, feature_info
from kseg.backbones.applications import Application
from kseg.backbones.resnet import ResNet, ResNet50, ResNet101
from kseg.backbones.vgg import VGG16

__all__ = [
    "Application",
    "VGG16",
    "ResNet",
    "ResNet50",
    "ResNet101",
    "BackboneInfo",
    "FeatureSpec",
    "feature_info",
    "with_input_channels",
]
