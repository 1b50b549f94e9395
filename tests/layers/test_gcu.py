"""Tests for kseg.layers.GraphConvolutionalUnit."""

import keras
import numpy as np
import pytest

from kseg.layers import GraphConvolutionalUnit
from tests.helpers import random_array, run_layer_test, to_numpy

D, V, OUT = 6, 5, 4


def _randomize(layer, seed=1):
    rng = np.random.default_rng(seed)
    layer.anchors.assign(rng.normal(0.0, 0.5, layer.anchors.shape).astype("float32"))
    layer.log_sigma.assign(rng.uniform(-0.3, 0.3, layer.log_sigma.shape).astype("float32"))
    layer.kernel.assign(rng.normal(0.0, 0.5, layer.kernel.shape).astype("float32"))


def _naive_gcu(x, anchors, sigma, kernel, temperature=1.0):
    """Float64 NumPy GCU in the naive form of SPEC 1.1 (builds the (B, L, d, V) tensor)."""
    x = x.astype("float64")
    b, h, w, d = x.shape
    xf = x.reshape(b, h * w, d)
    resid = (xf[:, :, :, None] - anchors[None, None]) / sigma[None, None]  # (B, L, d, V)
    logits = -0.5 * np.sum(resid**2, axis=2) / temperature  # (B, L, V)
    logits = logits - logits.max(axis=-1, keepdims=True)
    q = np.exp(logits)
    q = q / q.sum(axis=-1, keepdims=True)
    zp = np.einsum("blv,bldv->bdv", q, resid) / q.sum(axis=1)[:, None, :]  # (B, d, V)
    z = zp / np.linalg.norm(zp, axis=1, keepdims=True)
    a = np.einsum("bdv,bdu->bvu", z, z)
    zt = np.maximum(a @ np.transpose(z, (0, 2, 1)) @ kernel, 0.0)  # (B, V, out)
    out = (q @ zt).reshape(b, h, w, -1)
    return out, q, z, a


def _layer_params(layer):
    return (
        to_numpy(layer.anchors).astype("float64"),
        np.exp(to_numpy(layer.log_sigma).astype("float64")),
        to_numpy(layer.kernel).astype("float64"),
    )


def test_layer_contract():
    run_layer_test(
        GraphConvolutionalUnit,
        {"num_vertices": V, "filters": OUT},
        (2, 7, 9, D),
        (2, 7, 9, OUT),
    )


def test_layer_contract_channels_first():
    run_layer_test(
        GraphConvolutionalUnit,
        {"num_vertices": 3, "filters": OUT, "temperature": 2.0, "data_format": "channels_first"},
        (1, D, 5, 6),
        (1, OUT, 5, 6),
        symbolic_input_shape=(D, None, None),
    )


@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("hw", [(7, 9), (4, 6)])
def test_matches_naive_float64_reference(temperature, hw):
    x = random_array((2, *hw, D), seed=2)
    layer = GraphConvolutionalUnit(V, OUT, temperature=temperature)
    layer.build(x.shape)
    _randomize(layer)
    expected, q_ref, z_ref, a_ref = _naive_gcu(x, *_layer_params(layer), temperature)
    # The test inputs keep the assignment soft, so this is a real check of Q.
    assert 0.05 < q_ref.max(axis=-1).mean() < 0.95
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-4, atol=1e-5)
    q, z, a = to_numpy(layer.graph(x))
    np.testing.assert_allclose(q, q_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a, a_ref, rtol=1e-4, atol=1e-5)


def test_graph_invariants():
    x = random_array((2, 5, 7, D), seed=3)
    layer = GraphConvolutionalUnit(V, OUT)
    layer.build(x.shape)
    _randomize(layer, seed=4)
    q, z, a = to_numpy(layer.graph(x))
    assert q.shape == (2, 35, V) and z.shape == (2, D, V) and a.shape == (2, V, V)
    np.testing.assert_allclose(q.sum(axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.diagonal(a, axis1=1, axis2=2), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, np.transpose(a, (0, 2, 1)), atol=1e-6)
    assert np.all(np.abs(a) <= 1.0 + 1e-5)


def test_vertex_permutation_invariance():
    x = random_array((2, 5, 7, D), seed=5)
    layer = GraphConvolutionalUnit(V, OUT)
    layer.build(x.shape)
    _randomize(layer, seed=6)
    out = to_numpy(layer(x))
    q, _, a = to_numpy(layer.graph(x))
    perm = np.array([3, 0, 4, 1, 2])
    layer.anchors.assign(to_numpy(layer.anchors)[:, perm])
    layer.log_sigma.assign(to_numpy(layer.log_sigma)[:, perm])
    np.testing.assert_allclose(to_numpy(layer(x)), out, rtol=1e-5, atol=1e-6)
    q_p, _, a_p = to_numpy(layer.graph(x))
    np.testing.assert_allclose(q_p, q[:, :, perm], atol=1e-6)
    np.testing.assert_allclose(a_p, a[:, perm][:, :, perm], atol=1e-6)


def test_channels_first_matches_channels_last():
    x = random_array((2, 5, 7, D), seed=7)
    last = GraphConvolutionalUnit(V, OUT)
    first = GraphConvolutionalUnit(V, OUT, data_format="channels_first")
    last.build(x.shape)
    first.build((2, D, 5, 7))
    _randomize(last)
    first.set_weights(last.get_weights())
    out_first = to_numpy(first(np.transpose(x, (0, 3, 1, 2))))
    np.testing.assert_allclose(np.transpose(out_first, (0, 2, 3, 1)), to_numpy(last(x)), atol=1e-6)


def test_parameter_count():
    # SPEC 1.3: 2 d V + d d_out per unit; four units (V = 2, 4, 8, 32) at
    # d = 2048, d_out = 256 have 2,285,568 together.
    total = 0
    for v in (2, 4, 8, 32):
        layer = GraphConvolutionalUnit(v, 256)
        layer.build((None, None, None, 2048))
        total += layer.count_params()
    assert total == 2_285_568


def test_float32_graph_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")
    layer = GraphConvolutionalUnit(V, OUT)
    x = random_array((1, 4, 4, D))
    out = layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    q, z, a = layer.graph(x)
    assert all(keras.backend.standardize_dtype(t.dtype) == "float32" for t in (q, z, a))
    assert keras.backend.standardize_dtype(layer.anchors.dtype) == "float32"


def test_initialize_from_features_recovers_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]])
    spreads = np.array([[0.1, 0.2, 0.3], [0.3, 0.1, 0.2], [0.2, 0.3, 0.1]])
    labels = np.repeat(np.arange(3), 60)
    points = centres[labels] + rng.standard_normal((180, 3)) * spreads[labels]
    points = points[rng.permutation(180)].reshape(2, 9, 10, 3)
    layer = GraphConvolutionalUnit(3, 2)
    means, stds = layer.initialize_from_features(points, seed=1)
    # Match found clusters to the true ones by their nearest centre.
    order = np.argmin(((means[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert sorted(order) == [0, 1, 2]
    flat = points.reshape(-1, 3)
    truth = np.argmin(((flat[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    for k, c in enumerate(order):
        members = flat[truth == c]
        np.testing.assert_allclose(means[k], members.mean(0), atol=1e-9)
        np.testing.assert_allclose(stds[k], np.sqrt(members.var(0) + 1e-6), atol=1e-9)
    np.testing.assert_allclose(to_numpy(layer.anchors), means.T, rtol=1e-6)
    np.testing.assert_allclose(np.exp(to_numpy(layer.log_sigma)), stds.T, rtol=1e-5)


def test_set_anchors_rejects_wrong_shape():
    layer = GraphConvolutionalUnit(V, OUT)
    layer.build((None, None, None, D))
    with pytest.raises(ValueError, match=r"means.shape=\(5, 7\)"):
        layer.set_anchors(np.zeros((V, D + 1)), np.ones((V, D)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_vertices": 0, "filters": 4}, "num_vertices=0"),
        ({"num_vertices": -2, "filters": 4}, "num_vertices=-2"),
        ({"num_vertices": 4, "filters": 0}, "filters=0"),
        ({"num_vertices": 4, "filters": 4, "temperature": 0.0}, "temperature=0.0"),
        ({"num_vertices": 4, "filters": 4, "epsilon": -1.0}, "epsilon=-1.0"),
        ({"num_vertices": 4, "filters": 4, "data_format": "NHWC"}, "data_format='NHWC'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GraphConvolutionalUnit(**kwargs)


def test_bad_vertex_type():
    with pytest.raises(TypeError, match="num_vertices=2.5"):
        GraphConvolutionalUnit(2.5, 4)
