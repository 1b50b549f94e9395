import keras
import numpy as np
import pytest

from kseg.layers import JointPyramidUpsampling
from tests.helpers import random_array, run_layer_test, to_numpy
from tests.layers.test_conv import _np_bn, _np_conv2d, _np_depthwise, _randomize_bn
from tests.layers.test_ppm import np_bilinear_matrix


def _inputs(seed=0, sizes=((9, 11), (5, 6), (3, 3)), channels=(3, 5, 7)):
    return [
        random_array((2, h, w, c), seed=seed + i)
        for i, ((h, w), c) in enumerate(zip(sizes, channels))
    ]


def test_layer_basics():
    run_layer_test(
        JointPyramidUpsampling,
        {"width": 4, "dilations": [1, 2]},
        input_data=_inputs(),
        expected_output_shape=(2, 9, 11, 8),
    )


def test_layer_basics_default_dilations_same_sizes():
    # At output stride 8 the three stages share one size (the resizes are identities).
    run_layer_test(
        JointPyramidUpsampling,
        {"width": 2},
        input_data=_inputs(sizes=((6, 7),) * 3),
        expected_output_shape=(2, 6, 7, 8),
        train=False,
        mixed_precision=False,
    )


def test_reference_parameter_count():
    # PaddleSeg's JPU([512, 1024, 2048], width=512): 19,735,552 parameters (SPEC 3.4).
    inputs = [keras.Input((None, None, c)) for c in (512, 1024, 2048)]
    layer = JointPyramidUpsampling()
    layer(inputs)
    trainable = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
    assert trainable == 19_735_552
    assert [c.name for c in layer.convs] == ["conv2", "conv3", "conv4"]
    assert [b.name for b in layer.branches] == ["dilation1", "dilation2", "dilation4", "dilation8"]


@pytest.mark.channels_first_conv
def test_channels_first_equals_channels_last():
    xs = _inputs(seed=3)
    last = JointPyramidUpsampling(width=3, dilations=(1, 2), data_format="channels_last")
    first = JointPyramidUpsampling(width=3, dilations=(1, 2), data_format="channels_first")
    y_last = last(xs)
    xs_first = [np.transpose(x, (0, 3, 1, 2)) for x in xs]
    first.build([x.shape for x in xs_first])
    first.set_weights(last.get_weights())
    y_first = to_numpy(first(xs_first))
    np.testing.assert_allclose(
        np.transpose(y_first, (0, 2, 3, 1)), to_numpy(y_last), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"width": 0}, ValueError, "width"),
        ({"dilations": 2}, TypeError, "dilations"),
        ({"dilations": ()}, ValueError, "dilations"),
        ({"dilations": (1, 1)}, ValueError, "distinct"),
        ({"data_format": "nchw"}, ValueError, "data_format"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        JointPyramidUpsampling(**kwargs)


def test_needs_three_inputs():
    layer = JointPyramidUpsampling(width=2)
    with pytest.raises(ValueError, match="Received: 2 input"):
        layer(_inputs()[:2])


def _np_conv_bn_relu(x, block):
    k = to_numpy(block.conv.kernel).astype("float64")
    return np.maximum(_np_bn(_np_conv2d(x, k, 1, 1, (1, 1)), block.bn), 0)


def _np_separable_branch(x, branch, dilation):
    """FastFCN's SeparableConv2d + BN + ReLU: depthwise -> BN -> pointwise -> BN -> ReLU."""
    dw = to_numpy(branch.depthwise.kernel).astype("float64")
    pw = to_numpy(branch.pointwise.kernel).astype("float64")
    h = _np_bn(_np_depthwise(x, dw, dilation, (dilation, dilation)), branch.depthwise_bn)
    return np.maximum(_np_bn(h @ pw[0, 0], branch.pointwise_bn), 0), h


def _randomized_layer(xs, **kwargs):
    layer = JointPyramidUpsampling(**kwargs)
    layer.build([x.shape for x in xs])
    for i, conv in enumerate(layer.convs):
        _randomize_bn(conv.bn, 10 + i)
    for i, branch in enumerate(layer.branches):
        _randomize_bn(branch.depthwise_bn, 20 + i)
        _randomize_bn(branch.pointwise_bn, 30 + i)
    return layer


def test_separable_branch_has_no_activation_between_the_convolutions():
    layer = JointPyramidUpsampling(width=3, dilations=(1, 2))
    for branch in layer.branches:
        assert getattr(branch, "depthwise_act", None) is None
        assert branch.depthwise_bn is not None and branch.pointwise_bn is not None
        assert branch.act is not None


def test_negative_depthwise_output_reaches_the_pointwise_conv():
    # One branch on its own: the depthwise BN output has negative values, and
    # they must enter the pointwise convolution unclipped.
    x = random_array((1, 7, 8, 6), seed=1).astype("float64")
    layer = JointPyramidUpsampling(width=4, dilations=(2,))
    branch = layer.branches[0]
    branch.build(x.shape)
    _randomize_bn(branch.depthwise_bn, 3)
    _randomize_bn(branch.pointwise_bn, 4)
    got = to_numpy(branch(x.astype("float32"), training=False))
    ref, depthwise_out = _np_separable_branch(x, branch, 2)
    assert (depthwise_out < 0).mean() > 0.2
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_matches_numpy_reference():
    xs = [x.astype("float64") for x in _inputs(seed=7)]
    layer = _randomized_layer(xs, width=3, dilations=(1, 2, 4))
    got = to_numpy(layer([x.astype("float32") for x in xs], training=False))

    maps = [_np_conv_bn_relu(x, conv) for conv, x in zip(layer.convs, xs)]
    h, w = maps[0].shape[1:3]
    resized = [
        np.einsum(
            "hi,bijc,wj->bhwc",
            np_bilinear_matrix(m.shape[1], h, True),
            m,
            np_bilinear_matrix(m.shape[2], w, True),
        )
        for m in maps[1:]
    ]
    concat = np.concatenate([maps[0]] + resized, axis=-1)
    ref = np.concatenate(
        [_np_separable_branch(concat, b, d)[0] for b, d in zip(layer.branches, (1, 2, 4))],
        axis=-1,
    )
    assert got.shape == (2, 9, 11, 9)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
