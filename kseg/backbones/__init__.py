"""Backbones returning dicts of features: VGG16, dilated ResNets, Xception-65, keras.applications,
the Mix Transformer."""

from kseg.backbones import registry
from kseg.backbones._channels import with_input_channels
from kseg.backbones._info import Backbone, BackboneInfo, FeatureSpec, feature_info
from kseg.backbones.applications import Application
from kseg.backbones.mit import MixTransformer
from kseg.backbones.resnet import ResNet, ResNet18, ResNet34, ResNet50, ResNet101
from kseg.backbones.vgg import VGG16
from kseg.backbones.xception import Xception65

__all__ = [
    "Application",
    "VGG16",
    "Xception65",
    "MixTransformer",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "ResNet101",
    "Backbone",
    "BackboneInfo",
    "FeatureSpec",
    "feature_info",
    "with_input_channels",
    "registry",
]
