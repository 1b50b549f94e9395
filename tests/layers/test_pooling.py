"""Tests for the pooling and unpooling layers."""

import math

import keras
import numpy as np
import pytest

import kseg
from tests.helpers import random_array, run_layer_test, to_numpy


def np_adaptive(x, out_hw):
    """torch adaptive_avg_pool2d bins (SPEC 4.10), channels last."""
    b, h, w, c = x.shape
    y = np.zeros((b, *out_hw, c))
    for i in range(out_hw[0]):
        h0, h1 = (i * h) // out_hw[0], math.ceil((i + 1) * h / out_hw[0])
        for j in range(out_hw[1]):
            w0, w1 = (j * w) // out_hw[1], math.ceil((j + 1) * w / out_hw[1])
            y[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return y


def np_pool2x2_argmax(x):
    """2x2 / stride 2 floor-mode max pooling with torch flat indices, channels last."""
    b, h, w, c = x.shape
    oh, ow = h // 2, w // 2
    win = x[:, : oh * 2, : ow * 2].reshape(b, oh, 2, ow, 2, c).transpose(0, 1, 3, 5, 2, 4)
    win = win.reshape(b, oh, ow, c, 4)
    slot = win.argmax(-1)  # NumPy argmax returns the first maximum
    rows = np.arange(oh)[None, :, None, None] * 2 + slot // 2
    cols = np.arange(ow)[None, None, :, None] * 2 + slot % 2
    return win.max(-1), rows * w + cols


def test_adaptive_average_pooling_layer():
    x = random_array((2, 13, 9, 3))
    out = run_layer_test(
        kseg.layers.AdaptiveAveragePooling2D,
        {"output_size": (5, 7)},
        input_data=x,
        expected_output_shape=(2, 5, 7, 3),
    )
    np.testing.assert_allclose(out, np_adaptive(x, (5, 7)), atol=1e-5)


def test_adaptive_average_pooling_channels_first():
    x = random_array((2, 3, 11, 6))
    out = run_layer_test(
        kseg.layers.AdaptiveAveragePooling2D,
        {"output_size": 3, "data_format": "channels_first"},
        input_data=x,
        expected_output_shape=(2, 3, 3, 3),
        symbolic_input_shape=(3, None, None),
    )
    ref = np_adaptive(x.transpose(0, 2, 3, 1), (3, 3)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_max_pooling_with_argmax_layer():
    x = random_array((2, 7, 8, 3))
    pooled, idx = run_layer_test(
        kseg.layers.MaxPoolingWithArgmax2D,
        {},
        input_data=x,
        expected_output_shape=[(2, 3, 4, 3), (2, 3, 4, 3)],
    )
    ref_p, ref_i = np_pool2x2_argmax(x)
    np.testing.assert_array_equal(pooled, ref_p)
    np.testing.assert_array_equal(idx, ref_i)
    sym = kseg.layers.MaxPoolingWithArgmax2D()(keras.Input((None, None, 3)))
    assert keras.backend.standardize_dtype(sym[1].dtype) == "int32"


@pytest.mark.parametrize("with_reference", [False, True])
def test_max_unpooling_layer(with_reference):
    x = random_array((2, 7, 9, 3))
    ref_p, ref_i = np_pool2x2_argmax(x)
    data = [ref_p, ref_i.astype("int32")]
    kwargs = {"output_size": (7, 9)}
    if with_reference:
        data.append(np.zeros((2, 7, 9, 1), "float32"))
        kwargs = {}
    out = run_layer_test(
        kseg.layers.MaxUnpooling2D,
        kwargs,
        input_data=data,
        expected_output_shape=(2, 7, 9, 3),
    )
    expected = np.zeros((2, 63, 3), "float32")
    for b in range(2):
        for c in range(3):
            expected[b, ref_i[b, ..., c].ravel(), c] = ref_p[b, ..., c].ravel()
    np.testing.assert_array_equal(out, expected.reshape(2, 7, 9, 3))


def test_segnet_style_pool_unpool_model_with_unknown_sizes():
    inp = keras.Input((None, None, 2))
    pooled, idx = kseg.layers.MaxPoolingWithArgmax2D()(inp)
    out = kseg.layers.MaxUnpooling2D()([pooled, idx, inp])
    model = keras.Model(inp, out)
    for hw in [(5, 7), (8, 6)]:
        x = random_array((1, *hw, 2), seed=sum(hw))
        y = to_numpy(model(x))
        ref_p, ref_i = np_pool2x2_argmax(x)
        expected = np.zeros((1, hw[0] * hw[1], 2), "float32")
        for c in range(2):
            expected[0, ref_i[0, ..., c].ravel(), c] = ref_p[0, ..., c].ravel()
        np.testing.assert_array_equal(y, expected.reshape(1, *hw, 2))


@pytest.mark.parametrize(
    "kwargs,expected_hw",
    [
        ({"pool_size": 3, "strides": 2, "padding": 1, "ceil_mode": True}, (5, 4)),
        ({"pool_size": 3, "strides": 1, "padding": 1, "pool_mode": "average"}, (9, 7)),
        ({"pool_size": 2, "ceil_mode": True}, (5, 4)),
    ],
)
def test_pooling2d_layer(kwargs, expected_hw):
    torch = pytest.importorskip("torch")
    x = random_array((2, 9, 7, 3))
    out = run_layer_test(
        kseg.layers.Pooling2D, kwargs, input_data=x, expected_output_shape=(2, *expected_hw, 3)
    )
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    k, s, p = (
        kwargs["pool_size"],
        kwargs.get("strides", kwargs["pool_size"]),
        kwargs.get("padding", 0),
    )
    if kwargs.get("pool_mode", "max") == "max":
        ref = torch.nn.functional.max_pool2d(xt, k, s, p, ceil_mode=kwargs.get("ceil_mode", False))
    else:
        ref = torch.nn.functional.avg_pool2d(xt, k, s, p, kwargs.get("ceil_mode", False), True)
    np.testing.assert_allclose(out, ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_pooling2d_count_include_pad_hand_worked():
    # All-ones input, 3x3 average with pad 1: the corner averages 4/9 when padded cells
    # count (torch/Caffe default), 1 when they do not (SPEC 4.5 pitfall).
    x = np.ones((1, 4, 4, 1), "float32")
    y = to_numpy(kseg.layers.Pooling2D(3, 1, 1, pool_mode="average")(x))
    np.testing.assert_allclose(y[0, 0, 0, 0], 4 / 9, atol=1e-6)
    np.testing.assert_allclose(y[0, 0, 1, 0], 6 / 9, atol=1e-6)
    y = to_numpy(kseg.layers.Pooling2D(3, 1, 1, pool_mode="average", count_include_pad=False)(x))
    np.testing.assert_allclose(y, np.ones_like(y), atol=1e-6)


def test_layer_errors():
    with pytest.raises(ValueError, match="output_size.*Received: output_size=0"):
        kseg.layers.AdaptiveAveragePooling2D(0)
    with pytest.raises(ValueError, match="padding.*Received: padding='full'"):
        kseg.layers.MaxPoolingWithArgmax2D(padding="full")
    layer = kseg.layers.MaxUnpooling2D()
    x = random_array((1, 2, 2, 1))
    with pytest.raises(ValueError, match="needs `output_size`"):
        layer([x, np.zeros((1, 2, 2, 1), "int32")])
    with pytest.raises(ValueError, match=r"at least the pooled size"):
        kseg.layers.MaxUnpooling2D((1, 4))([x, np.zeros((1, 2, 2, 1), "int32")])
    with pytest.raises(ValueError, match=r"at most half of `pool_size`"):
        kseg.layers.Pooling2D(2, padding=2)
    with pytest.raises(ValueError, match="pool_mode.*Received: pool_mode='sum'"):
        kseg.layers.Pooling2D(2, pool_mode="sum")
