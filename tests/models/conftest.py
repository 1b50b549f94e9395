"""Compact backbones so the model tests exercise full architectures quickly."""

import keras
import pytest

import kseg
from kseg.backbones import BackboneInfo, FeatureSpec


def tiny_resnet(output_stride=16, multi_grid=None):
    """A ResNet of width 4 (stage 4 has 128 channels), one bottleneck per stage.

    With `multi_grid` the last stage gets one block per multiplier.
    """
    last = 1 if multi_grid is None else len(multi_grid)
    return kseg.backbones.ResNet(
        blocks=(1, 1, 1, last), width=4, output_stride=output_stride, multi_grid=multi_grid
    )


@pytest.fixture
def tiny_backbone():
    return tiny_resnet


def convnext_like(h, w):
    """A tiny stand-in for keras.applications' ConvNeXt: features at strides 4 ... 32 only,
    `floor(h / s)` rows (4x4/4 stem, 2x2/2 downsampling), family "convnext"."""
    inputs = keras.Input((h, w, 3))
    x, outputs, specs = inputs, {}, []
    for level, (size, width) in enumerate(((4, 6), (2, 10), (2, 12), (2, 14)), start=2):
        x = keras.layers.Conv2D(width, size, strides=size, name=f"down{level}")(x)
        outputs[f"level{level}"] = x
        specs.append(FeatureSpec(f"level{level}", f"down{level}", width, 2**level))
    model = keras.Model(inputs, outputs, name="convnext_like")
    model.feature_info = BackboneInfo(
        family="convnext",
        variant="convnexttiny",
        output_stride=32,
        features=tuple(specs),
        low_level="level2",
        aux="level4",
        high_level="level5",
        preprocessing=None,
    )
    return model
