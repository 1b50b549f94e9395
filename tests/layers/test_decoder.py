import numpy as np
import pytest

from kseg.layers import DeepLabV3PlusDecoder
from tests.helpers import random_array, run_layer_test, to_numpy
from tests.layers.test_conv import _np_bn, _np_conv2d, _randomize_bn
from tests.layers.test_ppm import np_bilinear_matrix


def test_layer_basics():
    run_layer_test(
        DeepLabV3PlusDecoder,
        {"filters": 8, "low_level_filters": 4},
        [(1, 5, 6, 16), (1, 17, 23, 8)],
        (1, 17, 23, 8),
    )


def test_layer_basics_separable_one_conv():
    run_layer_test(
        DeepLabV3PlusDecoder,
        {
            "filters": 4,
            "low_level_filters": 2,
            "separable": True,
            "num_convs": 1,
            "align_corners": True,
        },
        [(1, 3, 4, 6), (1, 9, 13, 5)],
        (1, 9, 13, 4),
        train=False,
        mixed_precision=False,
    )


def test_separable_without_inner_bn_act_round_trips():
    kwargs = {"filters": 4, "low_level_filters": 2, "separable": True, "num_convs": 1}
    run_layer_test(
        DeepLabV3PlusDecoder,
        {**kwargs, "separable_inner_bn_act": False},
        [(1, 3, 4, 6), (1, 9, 13, 5)],
        (1, 9, 13, 4),
        train=False,
        mixed_precision=False,
    )
    layer = DeepLabV3PlusDecoder(**kwargs, separable_inner_bn_act=False)
    conv = layer.fusion_convs[0]
    assert conv.depthwise_bn is None and conv.depthwise_act is None
    assert layer.get_config()["separable_inner_bn_act"] is False


@pytest.mark.parametrize("align", [False, True])
def test_matches_numpy_reference(align):
    # Odd sizes, and a high-level map that is not an exact fraction (5 -> 17, 4 -> 13).
    high = random_array((2, 5, 4, 6), seed=1).astype("float64")
    low = random_array((2, 17, 13, 3), seed=2).astype("float64")
    layer = DeepLabV3PlusDecoder(filters=4, low_level_filters=2, align_corners=align)
    layer.build([high.shape, low.shape])
    blocks = [layer.low_level_projection] + layer.fusion_convs
    for i, block in enumerate(blocks):
        _randomize_bn(block.bn, 30 + i)
    y = to_numpy(layer([high.astype("float32"), low.astype("float32")], training=False))

    def conv_bn_relu(x, block):
        w = to_numpy(block.conv.kernel).astype("float64")
        p = (w.shape[0] - 1) // 2
        return np.maximum(_np_bn(_np_conv2d(x, w, 1, 1, (p, p)), block.bn), 0)

    low_p = conv_bn_relu(low, layer.low_level_projection)
    up = np.einsum(
        "hi,bijc,wj->bhwc",
        np_bilinear_matrix(5, 17, align),
        high,
        np_bilinear_matrix(4, 13, align),
    )
    x = np.concatenate([up, low_p], axis=-1)
    for block in layer.fusion_convs:
        x = conv_bn_relu(x, block)
    assert y.shape == (2, 17, 13, 4)
    np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)


def test_structure_and_bn_settings():
    layer = DeepLabV3PlusDecoder(
        filters=8, low_level_filters=4, separable=True, bn_momentum=0.9997, bn_epsilon=1e-3
    )
    layer.build([(1, 4, 4, 16), (1, 13, 13, 8)])
    assert layer.low_level_projection.name == "low_level_projection"
    assert [c.name for c in layer.fusion_convs] == ["decoder_conv0", "decoder_conv1"]
    assert all(c.separable for c in layer.fusion_convs)
    assert layer.fusion_convs[0].depthwise.kernel.shape == (3, 3, 20, 1)
    bns = [layer.low_level_projection.bn] + [
        bn for c in layer.fusion_convs for bn in (c.depthwise_bn, c.pointwise_bn)
    ]
    assert all(bn.momentum == pytest.approx(0.9997) for bn in bns)
    assert all(bn.epsilon == pytest.approx(1e-3) for bn in bns)


@pytest.mark.channels_first_conv
def test_channels_first():
    high = random_array((1, 3, 4, 6), seed=1)
    low = random_array((1, 9, 11, 5), seed=2)
    last = DeepLabV3PlusDecoder(filters=4, low_level_filters=2)
    first = DeepLabV3PlusDecoder(filters=4, low_level_filters=2, data_format="channels_first")
    y_last = to_numpy(last([high, low]))
    cf = [np.transpose(t, (0, 3, 1, 2)) for t in (high, low)]
    first(cf)
    first.set_weights(last.get_weights())
    y_first = to_numpy(first(cf))
    np.testing.assert_allclose(np.transpose(y_first, (0, 2, 3, 1)), y_last, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_convs": 0}, "num_convs"),
        ({"low_level_filters": 0}, "low_level_filters"),
        ({"filters": -1}, "filters"),
        ({"bn_momentum": 2.0}, "bn_momentum"),
        ({"separable_inner_bn_act": "no"}, "Received: separable_inner_bn_act='no'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeepLabV3PlusDecoder(**kwargs)


def test_needs_two_inputs():
    layer = DeepLabV3PlusDecoder(filters=4, low_level_filters=2)
    with pytest.raises(ValueError, match=r"\[high_level, low_level\]"):
        layer.compute_output_shape((1, 8, 8, 3))
    with pytest.raises(ValueError, match="rank 4"):
        layer.compute_output_shape([(1, 8, 3), (1, 8, 8, 3)])
