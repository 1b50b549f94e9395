"""Compact backbones so the model tests exercise full architectures quickly."""

import pytest

import kseg


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
