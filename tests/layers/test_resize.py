"""Tests for the Resize2D and ResizeLike layers."""

import keras
import numpy as np
import pytest

import kseg
from tests.helpers import random_array, run_layer_test, to_numpy


def _np_bilinear_matrix(n_in, n_out, align_corners):
    """torch F.interpolate bilinear weights along one axis (SPEC 4.9), float64."""
    m = np.zeros((n_out, n_in))
    for d in range(n_out):
        if align_corners:
            src = 0.0 if n_out == 1 else d * (n_in - 1) / (n_out - 1)
        else:
            src = max((d + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        m[d, i0] += 1 - (src - i0)
        m[d, i1] += src - i0
    return m


def np_bilinear(x, out_hw, align_corners):
    mh = _np_bilinear_matrix(x.shape[1], out_hw[0], align_corners)
    mw = _np_bilinear_matrix(x.shape[2], out_hw[1], align_corners)
    return np.einsum("oh,bhwc,pw->bopc", mh, x.astype(np.float64), mw)


@pytest.mark.parametrize("align_corners", [False, True])
def test_resize2d_layer(align_corners):
    x = random_array((2, 5, 7, 3))
    out = run_layer_test(
        kseg.layers.Resize2D,
        {"size": (9, 4), "align_corners": align_corners},
        input_data=x,
        expected_output_shape=(2, 9, 4, 3),
    )
    np.testing.assert_allclose(out, np_bilinear(x, (9, 4), align_corners), atol=2e-5)


def test_resize2d_scale_layer():
    x = random_array((2, 6, 5, 3))
    out = run_layer_test(
        kseg.layers.Resize2D,
        {"scale": 2, "interpolation": "nearest"},
        input_data=x,
        expected_output_shape=(2, 12, 10, 3),
    )
    np.testing.assert_array_equal(out, x.repeat(2, axis=1).repeat(2, axis=2))


def test_resize2d_channels_first():
    x = random_array((2, 3, 5, 7))
    out = run_layer_test(
        kseg.layers.Resize2D,
        {"size": (8, 3), "align_corners": True, "data_format": "channels_first"},
        input_data=x,
        expected_output_shape=(2, 3, 8, 3),
        symbolic_input_shape=(3, None, None),
    )
    ref = np_bilinear(x.transpose(0, 2, 3, 1), (8, 3), True).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, ref, atol=2e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_like_layer(align_corners):
    x = random_array((2, 4, 5, 3))
    ref = random_array((2, 13, 9, 1), seed=1)
    out = run_layer_test(
        kseg.layers.ResizeLike,
        {"align_corners": align_corners},
        input_data=[x, ref],
        expected_output_shape=(2, 13, 9, 3),
    )
    np.testing.assert_allclose(out, np_bilinear(x, (13, 9), align_corners), atol=2e-5)


def test_resize_like_with_unknown_sizes_in_a_model():
    x_in = keras.Input((None, None, 4))
    ref_in = keras.Input((None, None, 3))
    y = kseg.layers.ResizeLike(align_corners=True)([x_in, ref_in])
    assert tuple(y.shape) == (None, None, None, 4)
    model = keras.Model([x_in, ref_in], y)
    for hw, ref_hw in [((3, 4), (17, 11)), ((8, 8), (5, 6))]:
        x = random_array((1, *hw, 4), seed=2)
        out = to_numpy(model([x, np.zeros((1, *ref_hw, 3), "float32")]))
        np.testing.assert_allclose(out, np_bilinear(x, ref_hw, True), atol=2e-5)


def test_resize_like_integer_labels_keep_dtype():
    labels = np.random.default_rng(0).integers(0, 21, (2, 5, 6, 1)).astype("int32")
    ref = np.zeros((2, 10, 12, 3), "float32")
    layer = kseg.layers.ResizeLike(interpolation="nearest")
    y = layer([labels, ref])
    assert keras.backend.standardize_dtype(y.dtype) == "int32"
    np.testing.assert_array_equal(to_numpy(y), labels.repeat(2, axis=1).repeat(2, axis=2))
    sym = layer([keras.Input((None, None, 1), dtype="int32"), keras.Input((None, None, 3))])
    assert keras.backend.standardize_dtype(sym.dtype) == "int32"


def test_mixed_precision_output_dtype():
    keras.config.set_dtype_policy("mixed_bfloat16")
    layer = kseg.layers.Resize2D(size=(6, 6), align_corners=True)
    y = layer(random_array((1, 3, 3, 2)))
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"


def test_layer_errors():
    with pytest.raises(ValueError, match="interpolation.*Received: interpolation='area'"):
        kseg.layers.Resize2D(size=4, interpolation="area")
    with pytest.raises(ValueError, match="exactly one of `size` and `scale`"):
        kseg.layers.Resize2D()
    with pytest.raises(ValueError, match="align_corners=True.*interpolation='nearest'"):
        kseg.layers.ResizeLike(interpolation="nearest", align_corners=True)
    with pytest.raises(ValueError, match=r"list \[x, reference\]"):
        kseg.layers.ResizeLike()(random_array((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="ndim=4"):
        kseg.layers.Resize2D(size=4)(random_array((4, 4, 1)))
