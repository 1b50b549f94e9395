import keras
import numpy as np
import pytest

from kseg.layers import JointPyramidUpsampling
from tests.helpers import random_array, run_layer_test, to_numpy


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
