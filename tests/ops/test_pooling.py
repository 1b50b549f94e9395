"""Tests for kseg.ops pooling: adaptive, argmax, unpooling and torch-style padded pooling."""

import math

import keras
import numpy as np
import pytest
from keras import ops

import kseg
from tests.helpers import random_array, to_numpy

# ----------------------------------------------------------------------------- references


def np_adaptive(x, out_hw):
    """torch adaptive_avg_pool2d bins (SPEC 4.10), channels last, float64."""
    b, h, w, c = x.shape
    y = np.zeros((b, *out_hw, c))
    for i in range(out_hw[0]):
        h0, h1 = (i * h) // out_hw[0], math.ceil((i + 1) * h / out_hw[0])
        for j in range(out_hw[1]):
            w0, w1 = (j * w) // out_hw[1], math.ceil((j + 1) * w / out_hw[1])
            y[:, i, j] = x[:, h0:h1, w0:w1].astype(np.float64).mean(axis=(1, 2))
    return y


def np_argmax_pool(x, k, s, padding="valid"):
    """Channels-last max pooling with torch indices; first maximum wins."""
    b, h, w, c = x.shape
    if padding == "valid":
        oh, ow, top, left = (h - k) // s + 1, (w - k) // s + 1, 0, 0
    else:
        oh, ow = -(-h // s), -(-w // s)
        top = max((oh - 1) * s + k - h, 0) // 2
        left = max((ow - 1) * s + k - w, 0) // 2
    pooled = np.zeros((b, oh, ow, c), x.dtype)
    idx = np.zeros((b, oh, ow, c), np.int64)
    for n in range(b):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    best, best_idx = None, None
                    for dy in range(k):
                        for dx in range(k):
                            r, q = i * s + dy - top, j * s + dx - left
                            if 0 <= r < h and 0 <= q < w:
                                v = x[n, r, q, ch]
                                if best is None or v > best:
                                    best, best_idx = v, r * w + q
                    pooled[n, i, j, ch], idx[n, i, j, ch] = best, best_idx
    return pooled, idx


def np_unpool(x, idx, out_hw):
    b, _, _, c = x.shape
    y = np.zeros((b, out_hw[0] * out_hw[1], c), x.dtype)
    for n in range(b):
        for ch in range(c):
            y[n, idx[n, ..., ch].ravel(), ch] = x[n, ..., ch].ravel()
    return y.reshape(b, *out_hw, c)


def np_torch_pool(x, k, s, p, mode, ceil_mode, count_include_pad):
    """torch F.max_pool2d / F.avg_pool2d output size and padding rules, channels last."""
    b, h, w, c = x.shape

    def out_len(n):
        o = (n + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
        if ceil_mode and (o - 1) * s >= n + p:
            o -= 1
        return o

    oh, ow = out_len(h), out_len(w)
    y = np.zeros((b, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * s - p, j * s - p
            h1, w1 = min(h0 + k, h + p), min(w0 + k, w + p)
            pool_cells = (h1 - h0) * (w1 - w0)
            a0, b0, a1, b1 = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
            win = x[:, a0:a1, b0:b1].astype(np.float64)
            if mode == "max":
                y[:, i, j] = win.max(axis=(1, 2))
            else:
                div = pool_cells if count_include_pad else (a1 - a0) * (b1 - b0)
                y[:, i, j] = win.sum(axis=(1, 2)) / div
    return y


def _torch():
    return pytest.importorskip("torch")


def _nchw(x):
    torch = _torch()
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


# ----------------------------------------------------------------------------- adaptive pooling


@pytest.mark.parametrize("n", [5, 33, 60, 65, 97])
def test_adaptive_bins(n):
    # Height n with o in {1, 2, 3, 6}; width a second size, pooled to a different o.
    x = random_array((1, n, 7, 2), seed=n)
    for o in (1, 2, 3, 6):
        y = to_numpy(kseg.ops.adaptive_average_pool(x, (o, 3)))
        np.testing.assert_allclose(y, np_adaptive(x, (o, 3)), atol=1e-5)
    torch = _torch()
    for o in (1, 2, 3, 6):
        ref = _nhwc(torch.nn.functional.adaptive_avg_pool2d(_nchw(x), (o, 3)))
        y = to_numpy(kseg.ops.adaptive_average_pool(x, (o, 3)))
        np.testing.assert_allclose(y, ref, atol=1e-5)


def test_adaptive_hand_worked_overlap():
    # n = 5, o = 6: bins (0,1), (0,2), (1,3), (2,4), (3,5), (4,5) (SPEC 4.10).
    x = np.arange(5, dtype="float32").reshape(1, 5, 1, 1)
    y = to_numpy(kseg.ops.adaptive_average_pool(x, (6, 1))).ravel()
    np.testing.assert_allclose(y, [0, 0.5, 1.5, 2.5, 3.5, 4], atol=1e-6)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_adaptive_33x47_to_5x7(data_format):
    x = random_array((2, 33, 47, 3), seed=1)
    xf = x if data_format == "channels_last" else x.transpose(0, 3, 1, 2)
    y = to_numpy(kseg.ops.adaptive_average_pool(xf, (5, 7), data_format=data_format))
    if data_format == "channels_first":
        y = y.transpose(0, 2, 3, 1)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, np_adaptive(x, (5, 7)), atol=1e-5)
    np.testing.assert_allclose(y, _nhwc(_torch().nn.functional.adaptive_avg_pool2d(_nchw(x), (5, 7))), atol=1e-5)


def test_adaptive_dynamic_matrix():
    pooling = __import__("kseg.ops.pooling", fromlist=["_adaptive_matrix_dynamic"])
    for n, o in [(65, 6), (5, 6), (97, 3)]:
        m = to_numpy(pooling._adaptive_matrix_dynamic(ops.convert_to_tensor(n, "int32"), o, "float32"))
        eye = np.eye(n)[None, :, :, None]  # pooling the identity exposes the matrix
        ref = np_adaptive(eye, (o, n))[0, :, :, 0]
        np.testing.assert_allclose(m, ref, atol=1e-6)


# ----------------------------------------------------------------------------- argmax pooling


CASES = [(2, 2, (8, 6)), (2, 2, (7, 9)), (3, 2, (7, 8)), (3, 1, (5, 6)), (2, 3, (9, 7))]


@pytest.mark.parametrize("k,s,hw", CASES)
def test_argmax_pool_matches_torch(k, s, hw):
    x = random_array((2, *hw, 3), seed=2)
    pooled, idx = kseg.ops.max_pool_with_argmax(x, k, s)
    assert keras.backend.standardize_dtype(idx.dtype) == "int32"
    pooled, idx = to_numpy(pooled), to_numpy(idx)
    ref_p, ref_i = np_argmax_pool(x, k, s)
    np.testing.assert_array_equal(pooled, ref_p)
    np.testing.assert_array_equal(idx, ref_i)
    tp, ti = _torch().nn.functional.max_pool2d(_nchw(x), k, s, return_indices=True)
    np.testing.assert_array_equal(pooled, _nhwc(tp))
    np.testing.assert_array_equal(idx, _nhwc(ti))


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2)])
def test_argmax_pool_ties_take_first_maximum(k, s):
    for x in (np.ones((1, 6, 7, 2), "float32"), np.random.default_rng(3).integers(0, 2, (1, 6, 7, 2)).astype("float32")):
        pooled, idx = kseg.ops.max_pool_with_argmax(x, k, s)
        ref_p, ref_i = np_argmax_pool(x, k, s)
        np.testing.assert_array_equal(to_numpy(idx), ref_i)
        _, ti = _torch().nn.functional.max_pool2d(_nchw(x), k, s, return_indices=True)
        np.testing.assert_array_equal(to_numpy(idx), _nhwc(ti))


@pytest.mark.parametrize("k,s,hw", [(2, 2, (7, 8)), (3, 2, (6, 7)), (3, 1, (5, 5))])
def test_argmax_pool_same(k, s, hw):
    x = random_array((1, *hw, 2), seed=4)
    pooled, idx = kseg.ops.max_pool_with_argmax(x, k, s, padding="same")
    ref_p, ref_i = np_argmax_pool(x, k, s, "same")
    np.testing.assert_array_equal(to_numpy(pooled), ref_p)
    np.testing.assert_array_equal(to_numpy(idx), ref_i)
    keras_pool = keras.layers.MaxPooling2D(k, s, padding="same")(x)
    np.testing.assert_array_equal(to_numpy(pooled), to_numpy(keras_pool))


def test_argmax_pool_channels_first_and_integers():
    x = np.random.default_rng(5).integers(-50, 50, (2, 3, 7, 6)).astype("int32")
    pooled, idx = kseg.ops.max_pool_with_argmax(x, 2, 2, data_format="channels_first")
    assert keras.backend.standardize_dtype(pooled.dtype) == "int32"
    ref_p, ref_i = np_argmax_pool(x.transpose(0, 2, 3, 1), 2, 2)
    np.testing.assert_array_equal(to_numpy(pooled), ref_p.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(to_numpy(idx), ref_i.transpose(0, 3, 1, 2))


class _BiasThen(keras.layers.Layer):
    """Adds a trainable zero-initialised tensor, then applies `fn`; fitting one SGD step
    with learning rate 1 leaves `-d loss / d input` in the bias."""

    def __init__(self, fn, shape, **kwargs):
        super().__init__(**kwargs)
        self.fn = fn
        self.bias = self.add_weight(shape=shape, initializer="zeros")

    def call(self, x):
        return self.fn(x + self.bias)


def _input_gradient(fn, x, g):
    inp = keras.Input(x.shape[1:])
    layer = _BiasThen(fn, x.shape[1:])
    model = keras.Model(inp, layer(inp))
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=lambda yt, yp: ops.sum(yt * yp))
    model.fit(x, g, batch_size=1, epochs=1, verbose=0)
    return -to_numpy(layer.bias.value)


@pytest.mark.parametrize("k,s", [(2, 2), (3, 2)])
def test_gradient_through_argmax_pool(k, s):
    x = random_array((1, 7, 6, 2), seed=6)
    ref_p, ref_i = np_argmax_pool(x, k, s)
    g = random_array(ref_p.shape, seed=7)
    grad = _input_gradient(lambda t: kseg.ops.max_pool_with_argmax(t, k, s)[0], x, g)
    # d sum(g * pooled) / dx puts g at the argmax cells (summed where windows share one).
    expected = np.zeros((7 * 6, 2))
    for ch in range(2):
        np.add.at(expected[:, ch], ref_i[0, ..., ch].ravel(), g[0, ..., ch].ravel())
    np.testing.assert_allclose(grad[0] if grad.ndim == 4 else grad, expected.reshape(7, 6, 2), atol=1e-5)
    torch = _torch()
    xt = _nchw(x).requires_grad_(True)
    tp, _ = torch.nn.functional.max_pool2d(xt, k, s, return_indices=True)
    (tp * _nchw(g)).sum().backward()
    np.testing.assert_allclose(grad, _nhwc(xt.grad)[0], atol=1e-5)


# ----------------------------------------------------------------------------- unpooling


@pytest.mark.parametrize("k,s,hw", CASES)
def test_unpool_round_trip_matches_torch(k, s, hw):
    x = random_array((2, *hw, 3), seed=8)
    pooled, idx = kseg.ops.max_pool_with_argmax(x, k, s)
    y = to_numpy(kseg.ops.max_unpool(pooled, idx, hw))
    ref_p, ref_i = np_argmax_pool(x, k, s)
    np.testing.assert_array_equal(y, np_unpool(ref_p, ref_i, hw))
    tp, ti = _torch().nn.functional.max_pool2d(_nchw(x), k, s, return_indices=True)
    ty = _torch().nn.functional.max_unpool2d(tp, ti, k, s, output_size=hw)
    np.testing.assert_array_equal(y, _nhwc(ty))


def test_unpool_other_values_and_odd_size():
    # Decoder features (not the pooled values) go to the recorded positions; the row and
    # column dropped by floor-mode pooling stay zero.
    x = random_array((1, 5, 7, 2), seed=9)
    _, ref_i = np_argmax_pool(x, 2, 2)
    v = random_array(ref_i.shape, seed=10)
    y = to_numpy(kseg.ops.max_unpool(v, ref_i.astype("int32"), (5, 7)))
    np.testing.assert_array_equal(y, np_unpool(v, ref_i, (5, 7)))
    assert np.all(y[:, 4] == 0) and np.all(y[:, :, 6] == 0)


def test_unpool_channels_first():
    x = random_array((2, 3, 6, 5), seed=11)
    pooled, idx = kseg.ops.max_pool_with_argmax(x, 2, 2, data_format="channels_first")
    y = to_numpy(kseg.ops.max_unpool(pooled, idx, (6, 5), data_format="channels_first"))
    ref_p, ref_i = np_argmax_pool(x.transpose(0, 2, 3, 1), 2, 2)
    np.testing.assert_array_equal(y, np_unpool(ref_p, ref_i, (6, 5)).transpose(0, 3, 1, 2))


def test_gradient_through_unpool():
    x = random_array((1, 6, 7, 2), seed=12)
    _, ref_i = np_argmax_pool(x, 2, 2)
    v = random_array(ref_i.shape, seed=13)
    g = random_array((1, 6, 7, 2), seed=14)
    idx = ops.convert_to_tensor(ref_i.astype("int32"))

    def fn(t):
        return kseg.ops.max_unpool(t, ops.broadcast_to(idx, ops.shape(t)), (6, 7))

    grad = _input_gradient(fn, v, g)
    expected = np.take_along_axis(g.reshape(1, 42, 2), ref_i.reshape(1, -1, 2), axis=1)
    np.testing.assert_allclose(grad, expected.reshape(ref_i.shape)[0], atol=1e-6)


def test_symbolic_none_batch():
    inp = keras.Input((None, None, 3))
    pooled, idx = kseg.ops.max_pool_with_argmax(inp)
    assert keras.backend.standardize_dtype(idx.dtype) == "int32"
    up = kseg.ops.max_unpool(pooled, idx, (6, 8))
    ad = kseg.ops.adaptive_average_pool(inp, (2, 3))
    pl = kseg.ops.pool(inp, 3, 2, 1, ceil_mode=True)
    assert tuple(up.shape) == (None, 6, 8, 3) and tuple(ad.shape) == (None, 2, 3, 3)
    model = keras.Model(inp, [up, ad, pl])
    x = random_array((2, 6, 8, 3), seed=15)
    u, a, p = to_numpy(model(x))
    rp, ri = np_argmax_pool(x, 2, 2)
    np.testing.assert_array_equal(u, np_unpool(rp, ri, (6, 8)))
    np.testing.assert_allclose(a, np_adaptive(x, (2, 3)), atol=1e-5)
    np.testing.assert_allclose(p, np_torch_pool(x, 3, 2, 1, "max", True, True), atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="graph with unknown sizes")
def test_unknown_sizes_in_tf_graph():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 2), "float32")])
    def f(x):
        pooled, idx = kseg.ops.max_pool_with_argmax(x, 3, 2, padding="same")
        shape = ops.shape(x)
        up = kseg.ops.max_unpool(pooled, idx, (shape[1], shape[2]))
        ad = kseg.ops.adaptive_average_pool(x, (3, 2))
        avg = kseg.ops.pool(x, 3, 2, 1, "average", ceil_mode=True)
        return pooled, idx, up, ad, avg

    x = random_array((1, 7, 6, 2), seed=16)
    pooled, idx, up, ad, avg = to_numpy(f(x))
    rp, ri = np_argmax_pool(x, 3, 2, "same")
    np.testing.assert_array_equal(pooled, rp)
    np.testing.assert_array_equal(idx, ri)
    np.testing.assert_array_equal(up, np_unpool(rp, ri, (7, 6)))
    np.testing.assert_allclose(ad, np_adaptive(x, (3, 2)), atol=1e-5)
    np.testing.assert_allclose(avg, np_torch_pool(x, 3, 2, 1, "average", True, True), atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's export with symbolic sizes")
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_symbolic_sizes_in_jax_export(padding):
    """SegNet's 2x2/2 argmax pooling and unpooling trace with a symbolic height and width,
    as `model.export` from JAX (jax2tf, jax2onnx) traces them."""
    import jax
    from jax import export

    def f(x):
        pooled, idx = kseg.ops.max_pool_with_argmax(x, 2, 2, padding=padding)
        return pooled, idx, kseg.ops.max_unpool(pooled, idx, x.shape[1:3])

    spec = jax.ShapeDtypeStruct(export.symbolic_shape("b, h, w, 3"), "float32")
    exported = export.export(jax.jit(f))(spec)
    for seed, hw in enumerate(((8, 6), (7, 9))):
        x = random_array((2, *hw, 3), seed=17 + seed)
        pooled, idx, up = (np.asarray(t) for t in exported.call(x))
        ref_p, ref_i = np_argmax_pool(x, 2, 2, padding)
        np.testing.assert_array_equal(pooled, ref_p)
        np.testing.assert_array_equal(idx, ref_i)
        np.testing.assert_array_equal(up, np_unpool(ref_p, ref_i, hw))


# ----------------------------------------------------------------------------- padded pooling


POOL_CASES = [
    (3, 2, 1, True),  # DeepLab v1 pool1-3 / ResNet stem
    (2, 2, 0, True),  # FCN ceil-mode pooling
    (3, 1, 1, False),  # DeepLab v1 pool4/5 and pool5a
    (3, 2, 0, True),
    (2, 1, 1, True),  # ceil mode drops a window starting in the right padding
]


@pytest.mark.parametrize("k,s,p,ceil_mode", POOL_CASES)
@pytest.mark.parametrize("hw", [(5, 6), (8, 13)])
def test_pool_matches_torch(k, s, p, ceil_mode, hw):
    torch = _torch()
    x = random_array((1, *hw, 2), seed=17)
    xt = _nchw(x)
    for mode in ("max", "average"):
        for cip in (True, False) if mode == "average" else (True,):
            y = to_numpy(kseg.ops.pool(x, k, s, p, mode, ceil_mode, cip))
            np.testing.assert_allclose(y, np_torch_pool(x, k, s, p, mode, ceil_mode, cip), atol=1e-5)
            if mode == "max":
                ref = torch.nn.functional.max_pool2d(xt, k, s, p, ceil_mode=ceil_mode)
            else:
                ref = torch.nn.functional.avg_pool2d(xt, k, s, p, ceil_mode, cip)
            np.testing.assert_allclose(y, _nhwc(ref), atol=1e-5)


def test_pool_channels_first_and_output_size():
    x = random_array((1, 2, 321, 9), seed=18)
    y = kseg.ops.pool(x, 3, 2, 1, ceil_mode=True, data_format="channels_first")
    assert tuple(y.shape) == (1, 2, 161, 5)  # DeepLab v1 pool1: 321 -> 161 (-> 81 -> 41)
    ref = np_torch_pool(x.transpose(0, 2, 3, 1), 3, 2, 1, "max", True, True)
    np.testing.assert_allclose(to_numpy(y), ref.transpose(0, 3, 1, 2), atol=1e-6)


# ----------------------------------------------------------------------------- errors


def test_errors():
    x = random_array((1, 4, 4, 2))
    with pytest.raises(ValueError, match=r"output_size.*>= 1.*Received: output_size=0"):
        kseg.ops.adaptive_average_pool(x, (0, 2))
    with pytest.raises(ValueError, match=r"rank 4.*Received: x.shape=\(4, 4, 2\)"):
        kseg.ops.adaptive_average_pool(x[0], 2)
    with pytest.raises(TypeError, match="floating-point.*x.dtype=int32"):
        kseg.ops.adaptive_average_pool(np.zeros((1, 4, 4, 1), "int32"), 2)
    with pytest.raises(ValueError, match="padding.*Received: padding='full'"):
        kseg.ops.max_pool_with_argmax(x, padding="full")
    with pytest.raises(ValueError, match=r"at least `pool_size`.*pool_size=\(5, 5\)"):
        kseg.ops.max_pool_with_argmax(x, 5)
    with pytest.raises(ValueError, match=r"rank 4"):
        kseg.ops.max_pool_with_argmax(x[0])
    pooled, idx = kseg.ops.max_pool_with_argmax(x)
    with pytest.raises(ValueError, match=r"at least the pooled size.*output_size=\(1, 4\)"):
        kseg.ops.max_unpool(pooled, idx, (1, 4))
    with pytest.raises(ValueError, match="same shape"):
        kseg.ops.max_unpool(pooled, ops.zeros((1, 2, 3, 2), "int32"), (4, 4))
    with pytest.raises(ValueError, match="output_size=None"):
        kseg.ops.max_unpool(pooled, idx, None)
    with pytest.raises(ValueError, match=r"at most half of `pool_size`.*padding=\(2, 2\)"):
        kseg.ops.pool(x, 3, 1, padding=2)
    with pytest.raises(ValueError, match="pool_mode.*Received: pool_mode='min'"):
        kseg.ops.pool(x, 2, pool_mode="min")
    with pytest.raises(TypeError, match="ceil_mode.*Received: ceil_mode='yes'"):
        kseg.ops.pool(x, 2, ceil_mode="yes")
    with pytest.raises(ValueError, match="at least one cell"):
        kseg.ops.pool(x, 6, 1, padding=0)
    with pytest.raises(TypeError, match="floating-point.*average"):
        kseg.ops.pool(np.zeros((1, 4, 4, 1), "int32"), 2, pool_mode="average")
