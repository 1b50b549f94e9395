"""Tests for kseg.ops.resize against a float64 NumPy reference and torch F.interpolate."""

import importlib
import math

import keras
import numpy as np
import pytest
from keras import ops

import kseg
from tests.helpers import random_array, to_numpy

resize_module = importlib.import_module("kseg.ops.resize")

# ----------------------------------------------------------------------------- references


def _np_axis_matrix(n_in, n_out, mode, align_corners, scale):
    """Dense (n_out, n_in) resampling matrix written from SPEC 4.9 / torch's formulas."""
    m = np.zeros((n_out, n_in))
    for d in range(n_out):
        if mode == "bilinear":
            if align_corners:
                src = 0.0 if n_out == 1 else d * (n_in - 1) / (n_out - 1)
            else:
                r = (1.0 / scale) if scale is not None else n_in / n_out
                src = max((d + 0.5) * r - 0.5, 0.0)
            i0 = min(int(math.floor(src)), n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            lam = src - i0
            m[d, i0] += 1 - lam
            m[d, i1] += lam
        else:
            # torch computes the nearest source index in float32 (UpSample.h).
            r = np.float32(1.0 / scale) if scale is not None else np.float32(n_in) / np.float32(n_out)
            if mode == "nearest":
                src = int(np.floor(np.float32(d) * r))
            else:
                src = int(np.floor(np.float32((d + 0.5) * np.float64(r))))
            m[d, min(src, n_in - 1)] = 1.0
    return m


def np_resize(x, out_hw, mode="bilinear", align_corners=False, scale=(None, None)):
    """Channels-last float64 reference."""
    mh = _np_axis_matrix(x.shape[1], out_hw[0], mode, align_corners, scale[0])
    mw = _np_axis_matrix(x.shape[2], out_hw[1], mode, align_corners, scale[1])
    return np.einsum("oh,bhwc,pw->bopc", mh, x.astype(np.float64), mw)


def torch_resize(x, mode, align_corners=False, size=None, scale=None):
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    kwargs = {"align_corners": align_corners} if mode == "bilinear" else {}
    y = f.interpolate(xt, size=size, scale_factor=scale, mode=mode, **kwargs)
    return y.numpy().transpose(0, 2, 3, 1)


SIZES = [
    ((7, 9), (17, 5)),
    ((33, 47), (5, 7)),
    ((8, 6), (16, 1)),
    ((1, 65), (5, 97)),
]


# ----------------------------------------------------------------------------- bilinear


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("in_hw,out_hw", SIZES)
def test_bilinear_size(in_hw, out_hw, align_corners):
    x = random_array((2, *in_hw, 3))
    y = to_numpy(kseg.ops.resize(x, size=out_hw, align_corners=align_corners))
    assert y.shape == (2, *out_hw, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y, np_resize(x, out_hw, "bilinear", align_corners), atol=2e-5)
    ref = torch_resize(x, "bilinear", align_corners, size=out_hw)
    np.testing.assert_allclose(y, ref, atol=2e-5)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
    "in_hw,scale", [((7, 7), 2.5), ((7, 9), (2.5, 1.7)), ((16, 12), 0.5), ((9, 10), (0.3, 4))]
)
def test_bilinear_scale_uses_inverse_scale(in_hw, scale, align_corners):
    x = random_array((1, *in_hw, 2), seed=1)
    pair = scale if isinstance(scale, tuple) else (scale, scale)
    out_hw = tuple(int(math.floor(n * s)) for n, s in zip(in_hw, pair))
    y = to_numpy(kseg.ops.resize(x, scale=scale, align_corners=align_corners))
    assert y.shape == (1, *out_hw, 2)
    np.testing.assert_allclose(y, np_resize(x, out_hw, "bilinear", align_corners, pair), atol=2e-5)
    ref = torch_resize(x, "bilinear", align_corners, scale=tuple(float(s) for s in pair))
    np.testing.assert_allclose(y, ref, atol=2e-5)


def test_scale_differs_from_size_when_not_whole():
    # SPEC 4.9: 7 -> 17 with scale 2.5 uses r = 0.4, not 7/17.
    x = random_array((1, 7, 7, 1), seed=2)
    by_scale = to_numpy(kseg.ops.resize(x, scale=2.5))
    by_size = to_numpy(kseg.ops.resize(x, size=17))
    assert np.abs(by_scale - by_size).max() > 1e-2
    np.testing.assert_allclose(by_size, np_resize(x, (17, 17)), atol=2e-5)


def test_hand_worked_align_corners():
    x = np.array([0.0, 10.0], "float32").reshape(1, 1, 2, 1)
    y = to_numpy(kseg.ops.resize(x, size=(1, 5), align_corners=True))
    np.testing.assert_allclose(y.ravel(), [0.0, 2.5, 5.0, 7.5, 10.0], atol=1e-6)
    y = to_numpy(kseg.ops.resize(x, size=(1, 4), align_corners=False))
    np.testing.assert_allclose(y.ravel(), [0.0, 2.5, 7.5, 10.0], atol=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
def test_channels_first(align_corners):
    x = random_array((2, 3, 7, 9), seed=3)
    y = to_numpy(
        kseg.ops.resize(x, size=(12, 4), align_corners=align_corners, data_format="channels_first")
    )
    ref = np_resize(x.transpose(0, 2, 3, 1), (12, 4), "bilinear", align_corners)
    np.testing.assert_allclose(y, ref.transpose(0, 3, 1, 2), atol=2e-5)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("in_hw,out_hw", SIZES[:2])
def test_generic_paths_match_reference(in_hw, out_hw, align_corners):
    """Both generic kernels run on every backend, whatever `resize` routes to."""
    x = random_array((1, *in_hw, 2), seed=4)
    ref = np_resize(x, out_hw, "bilinear", align_corners)
    for fmt in ("channels_last", "channels_first"):
        xf = x if fmt == "channels_last" else x.transpose(0, 3, 1, 2)
        t = ops.convert_to_tensor(xf)
        g = to_numpy(resize_module._resize_gather(t, in_hw, out_hw, None, "bilinear", align_corners, fmt))
        m = to_numpy(resize_module._resize_matrix(t, in_hw, out_hw, None, align_corners, fmt))
        if fmt == "channels_first":
            g, m = g.transpose(0, 2, 3, 1), m.transpose(0, 2, 3, 1)
        np.testing.assert_allclose(g, ref, atol=2e-5)
        np.testing.assert_allclose(m, ref, atol=2e-5)


@pytest.mark.parametrize("in_hw,out_hw", SIZES[:2])
def test_generic_path_matches_keras_image_resize(in_hw, out_hw):
    x = random_array((1, *in_hw, 3), seed=5)
    t = ops.convert_to_tensor(x)
    g = to_numpy(resize_module._resize_gather(t, in_hw, out_hw, None, "bilinear", False, "channels_last"))
    k = to_numpy(ops.image.resize(t, out_hw, interpolation="bilinear", antialias=False))
    np.testing.assert_allclose(g, k, atol=2e-5)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest", "nearest-exact"])
def test_dynamic_sizes(interpolation, align_corners):
    """Sizes given as tensors (as read with ops.shape in a graph) take the dynamic path."""
    if align_corners and interpolation != "bilinear":
        pytest.skip("align_corners only applies to bilinear")
    x = random_array((2, 7, 10, 3), seed=6)
    size = (ops.convert_to_tensor(17, "int32"), ops.convert_to_tensor(4, "int32"))
    y = to_numpy(kseg.ops.resize(x, size=size, interpolation=interpolation, align_corners=align_corners))
    np.testing.assert_allclose(y, np_resize(x, (17, 4), interpolation, align_corners), atol=2e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="graph with unknown sizes")
@pytest.mark.parametrize("align_corners", [False, True])
def test_unknown_sizes_in_tf_graph(align_corners):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 2), "float32"), tf.TensorSpec((None, None, None, 1), "float32")])
    def f(x, ref):
        shape = ops.shape(ref)
        a = kseg.ops.resize(x, size=(shape[1], shape[2]), align_corners=align_corners)
        b = kseg.ops.resize(x, scale=2, align_corners=align_corners)
        c = kseg.ops.resize(x, scale=2.5, interpolation="nearest")
        return a, b, c

    x = random_array((1, 7, 9, 2), seed=7)
    a, b, c = to_numpy(f(x, np.zeros((1, 12, 5, 1), "float32")))
    np.testing.assert_allclose(a, np_resize(x, (12, 5), "bilinear", align_corners), atol=2e-5)
    np.testing.assert_allclose(b, np_resize(x, (14, 18), "bilinear", align_corners, (2, 2)), atol=2e-5)
    np.testing.assert_allclose(c, np_resize(x, (17, 22), "nearest", False, (2.5, 2.5)), atol=0)


# ----------------------------------------------------------------------------- nearest


@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
@pytest.mark.parametrize("in_hw,out_hw", SIZES + [((10, 3), (4, 7))])
def test_nearest_matches_torch(mode, in_hw, out_hw):
    x = random_array((1, *in_hw, 2), seed=8)
    y = to_numpy(kseg.ops.resize(x, size=out_hw, interpolation=mode))
    np.testing.assert_array_equal(y, np_resize(x, out_hw, mode).astype("float32"))
    np.testing.assert_array_equal(y, torch_resize(x, mode, size=out_hw))


def test_nearest_hand_worked():
    # SPEC 4.9: 10 -> 4 gives [0, 2, 5, 7] for torch nearest, [1, 3, 6, 8] for nearest-exact.
    x = np.arange(10, dtype="float32").reshape(1, 1, 10, 1)
    y = to_numpy(kseg.ops.resize(x, size=(1, 4), interpolation="nearest"))
    np.testing.assert_array_equal(y.ravel(), [0, 2, 5, 7])
    y = to_numpy(kseg.ops.resize(x, size=(1, 4), interpolation="nearest-exact"))
    np.testing.assert_array_equal(y.ravel(), [1, 3, 6, 8])


@pytest.mark.parametrize("dtype", ["int32", "uint8"])
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
def test_nearest_keeps_integer_label_maps(dtype, mode):
    labels = np.random.default_rng(9).integers(0, 21, (2, 9, 13, 1)).astype(dtype)
    labels[0, 0, 0, 0] = 255
    y = kseg.ops.resize(labels, scale=(2.5, 0.5), interpolation=mode)
    assert keras.backend.standardize_dtype(y.dtype) == dtype
    ref = np_resize(labels.astype("float64"), (22, 6), mode, False, (2.5, 0.5))
    np.testing.assert_array_equal(to_numpy(y), ref.astype(dtype))
    np.testing.assert_array_equal(
        to_numpy(y), torch_resize(labels.astype("float32"), mode, scale=(2.5, 0.5)).astype(dtype)
    )


# ----------------------------------------------------------------------------- dtypes, symbolic


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_half_precision_keeps_dtype(dtype, align_corners):
    x = random_array((1, 6, 7, 3), seed=10)
    y = kseg.ops.resize(ops.cast(x, dtype), size=(11, 5), align_corners=align_corners)
    assert keras.backend.standardize_dtype(y.dtype) == dtype
    ref = np_resize(x, (11, 5), "bilinear", align_corners)
    np.testing.assert_allclose(to_numpy(ops.cast(y, "float32")), ref, atol=0.05)


def test_symbolic_none_batch_and_sizes():
    inp = keras.Input((None, None, 3))
    out = kseg.ops.resize(inp, size=(9, 11), align_corners=True)
    assert tuple(out.shape) == (None, 9, 11, 3)
    inp2 = keras.Input((6, 8, 3))
    out2 = kseg.ops.resize(inp2, scale=2.5, interpolation="nearest")
    assert tuple(out2.shape) == (None, 15, 20, 3)
    model = keras.Model([inp, inp2], [out, out2])
    x = random_array((2, 6, 8, 3), seed=11)
    a, b = to_numpy(model([x, x]))
    np.testing.assert_allclose(a, np_resize(x, (9, 11), "bilinear", True), atol=2e-5)
    np.testing.assert_array_equal(b, np_resize(x, (15, 20), "nearest", False, (2.5, 2.5)).astype("float32"))


def test_identity_when_size_unchanged():
    x = random_array((1, 5, 6, 2), seed=12)
    for ac in (False, True):
        np.testing.assert_array_equal(to_numpy(kseg.ops.resize(x, size=(5, 6), align_corners=ac)), x)


# ----------------------------------------------------------------------------- errors


def test_errors():
    x = random_array((1, 4, 4, 1))
    with pytest.raises(ValueError, match="interpolation.*Received: interpolation='bicubic'"):
        kseg.ops.resize(x, size=2, interpolation="bicubic")
    with pytest.raises(ValueError, match="exactly one of `size` and `scale`.*size=None, scale=None"):
        kseg.ops.resize(x)
    with pytest.raises(ValueError, match="exactly one of `size` and `scale`.*size=2, scale=2"):
        kseg.ops.resize(x, size=2, scale=2)
    with pytest.raises(ValueError, match=r"size.*>= 1.*Received: size=\(0, 3\)"):
        kseg.ops.resize(x, size=(0, 3))
    with pytest.raises(TypeError, match=r"size.*integers.*Received: size=\(2.0, 3\)"):
        kseg.ops.resize(x, size=(2.0, 3))
    with pytest.raises(ValueError, match="scale.*Received: scale=-1"):
        kseg.ops.resize(x, scale=-1)
    with pytest.raises(ValueError, match="scale.*at least one pixel"):
        kseg.ops.resize(x, scale=0.1)
    with pytest.raises(ValueError, match="align_corners=True.*interpolation='nearest'"):
        kseg.ops.resize(x, size=2, interpolation="nearest", align_corners=True)
    with pytest.raises(ValueError, match=r"rank 4.*Received: x.shape=\(4, 4, 1\)"):
        kseg.ops.resize(x[0], size=2)
    with pytest.raises(TypeError, match="floating-point.*Received: x.dtype=int32"):
        kseg.ops.resize(np.zeros((1, 4, 4, 1), "int32"), size=2)
    with pytest.raises(ValueError, match="data_format"):
        kseg.ops.resize(x, size=2, data_format="NHWC")
