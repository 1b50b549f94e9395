"""Tests for kseg.layers.GraphInteractionUnit."""

import os
import tempfile

import keras
import numpy as np
import pytest

from kseg.layers import GraphInteractionUnit
from tests.helpers import random_array, run_layer_test, to_numpy

# K, N, D, C all distinct so that a wrong broadcast or axis cannot pass.
K, N, D, C, E = 7, 12, 32, 24, 10
SMALL = {"num_classes": K, "num_state": D, "num_node": N, "embedding_mlp": (16, D)}


def _embeddings(seed=9):
    return np.random.default_rng(seed).normal(0.0, 1.0, (K, E)).astype("float32")


def _randomize(layer, seed=1):
    """Random weights, gates, BN parameters and moving statistics."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        shape = tuple(w.shape)
        if w.path.endswith("class_embeddings"):
            continue
        if "moving_variance" in w.path:
            value = rng.uniform(0.5, 2.0, shape)
        elif "gamma" in w.path and "bn" in w.path:
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) == 2:
            value = rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape)
        else:
            value = rng.normal(0.0, 0.5, shape)
        w.assign(value.astype("float32"))


def _np(v):
    return to_numpy(v).astype("float64")


def _dense(d):
    return _np(d.kernel), _np(d.bias)


def _bn(bn):
    return tuple(_np(v) for v in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))


def _gcn(g):
    return _np(g.node_kernel), _np(g.node_bias), _np(g.state_kernel)


def _numpy_gi_unit(x, layer, training=False, eps=1e-5):
    """Float64 NumPy GI unit in PaddleSeg's layout (SPEC 3.2, P2).

    Node tensors are (B, D, nodes) as in the reference; 1x1 convs act on the
    channel axis 1; the input is NCHW.
    """
    x = np.transpose(x.astype("float64"), (0, 3, 1, 2))  # NCHW
    b, c, h, w = x.shape

    def batch_norm(v, params, axes):
        gamma, beta, mean, var = params
        if training:
            mean, var = v.mean(axis=axes), v.var(axis=axes)
        shape = [1] * v.ndim
        shape[1 if v.ndim > 2 else -1] = -1
        r = lambda a: a.reshape(shape)  # noqa: E731
        return (v - r(mean)) / np.sqrt(r(var) + eps) * r(gamma) + r(beta)

    def conv1x1(v, kernel, bias=None):  # v: (B, Cin, ...) -> (B, Cout, ...)
        out = np.einsum("io,bi...->bo...", kernel, v)
        if bias is not None:
            out = out + bias.reshape((1, -1) + (1,) * (v.ndim - 2))
        return out

    def gcn(v, params):  # v: (B, D, nodes), as PaddleSeg's GCN.forward
        node_kernel, node_bias, state_kernel = params
        hid = conv1x1(np.transpose(v, (0, 2, 1)), node_kernel.T, node_bias)
        hid = np.transpose(hid, (0, 2, 1)) + v
        return conv1x1(np.maximum(hid, 0.0), state_kernel)

    def softmax(v, axis):
        v = np.exp(v - v.max(axis=axis, keepdims=True))
        return v / v.sum(axis=axis, keepdims=True)

    # Word branch on the (K, E) table: Linear + BatchNorm1D + ReLU stages.
    inp = _np(layer.embeddings)
    for dense, bn in zip(layer.word_dense, layer.word_bn):
        kernel, bias = _dense(dense)
        inp = np.maximum(batch_norm(inp @ kernel + bias, _bn(bn), axes=0), 0.0)
    inp = np.broadcast_to(inp.T[None], (b, D, K))  # (B, D, K)

    # GlobalReasonUnit.forward
    bp = conv1x1(x, *_dense(layer.conv_theta)).reshape(b, N, h * w)
    x_reduce = np.transpose(conv1x1(x, *_dense(layer.conv_phi)).reshape(b, D, h * w), (0, 2, 1))
    v = np.transpose(bp @ x_reduce, (0, 2, 1)) / (h * w)  # (B, D, N)

    # GraphLayer.forward
    word = gcn(inp, _gcn(layer.gcn_word))
    new_v = gcn(v, _gcn(layer.gcn_vis))
    # GraphTransfer.forward
    proj_query = np.transpose(conv1x1(word, *_dense(layer.query)), (0, 2, 1))  # (B, K, D/2)
    proj_key = conv1x1(new_v, *_dense(layer.key))  # (B, D/2, N)
    energy = proj_query @ proj_key  # (B, K, N)
    attention_vis = np.transpose(softmax(energy, -1), (0, 2, 1))  # (B, N, K)
    attention_word = softmax(energy, -2)  # (B, K, N)
    class_out = conv1x1(new_v, *_dense(layer.value_vis)) @ attention_vis  # (B, D, K)
    node_out = conv1x1(word, *_dense(layer.value_word)) @ attention_word  # (B, D, N)
    class_node = _np(layer.gamma_word) * word + class_out
    new_v = _np(layer.gamma_vis) * node_out + new_v

    y = np.transpose(bp, (0, 2, 1)) @ np.transpose(new_v, (0, 2, 1))  # (B, L, D)
    y = np.transpose(y, (0, 2, 1)).reshape(b, D, h, w)
    y = batch_norm(conv1x1(y, _np(layer.extend.kernel)), _bn(layer.bn), axes=(0, 2, 3))
    out = np.transpose(x + y, (0, 2, 3, 1))
    return out, np.transpose(class_node, (0, 2, 1)), energy


def _built(x, **kwargs):
    layer = GraphInteractionUnit(**{**SMALL, **kwargs})
    layer.build(x.shape)
    return layer


def test_layer_contract():
    # The None and "learned" tables go through save and reload below.
    run_layer_test(
        GraphInteractionUnit,
        {**SMALL, "class_embeddings": _embeddings()},
        (2, 5, 7, C),
        [(2, 5, 7, C), (2, K, D)],
    )


@pytest.mark.parametrize("class_embeddings", [None, "array", "learned"])
@pytest.mark.parametrize("hw", [(5, 7), (4, 4)])
def test_matches_numpy_reference(class_embeddings, hw):
    emb = _embeddings() if class_embeddings == "array" else class_embeddings
    x = random_array((2, *hw, C), seed=3)
    layer = _built(x, class_embeddings=emb)
    _randomize(layer)
    assert np.all(to_numpy(layer.gamma_vis) != 0) and np.all(to_numpy(layer.gamma_word) != 0)
    out, class_node = to_numpy(layer(x, training=False))
    ref_out, ref_class, ref_energy = _numpy_gi_unit(x, layer)
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(class_node, ref_class, rtol=1e-4, atol=1e-5)
    energy = to_numpy(layer.intermediates(x)["energy"])
    np.testing.assert_allclose(energy, ref_energy, rtol=1e-4, atol=1e-5)
    assert class_node.dtype == np.float32


def test_matches_numpy_reference_in_training_mode():
    x = random_array((2, 5, 6, C), seed=4)
    layer = _built(x, class_embeddings=_embeddings())
    _randomize(layer, seed=2)
    out, class_node = to_numpy(layer(x, training=True))
    ref_out, ref_class, _ = _numpy_gi_unit(x, layer, training=True)
    np.testing.assert_allclose(class_node, ref_class, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-4)


def test_zero_gates_give_plain_visual_gcn():
    x = random_array((2, 5, 7, C), seed=5)
    layer = _built(x, class_embeddings=_embeddings())
    _randomize(layer, seed=3)
    layer.gamma_vis.assign(np.zeros(N, "float32"))
    values = to_numpy(layer.intermediates(x))
    np.testing.assert_array_equal(values["visual_nodes_new"], values["visual_nodes_gcn"])
    # And GCN_vis is the GloRe-form GCN of Vn, recomputed here.
    node_kernel, node_bias, state_kernel = _gcn(layer.gcn_vis)
    vn = values["visual_nodes"].astype("float64")
    hid = np.einsum("mn,bnd->bmd", node_kernel, vn) + node_bias[None, :, None] + vn
    np.testing.assert_allclose(
        values["visual_nodes_gcn"], np.maximum(hid, 0) @ state_kernel, rtol=1e-4, atol=1e-5
    )


def test_gates_start_at_zero():
    x = random_array((1, 4, 5, C), seed=6)
    layer = _built(x)
    np.testing.assert_array_equal(to_numpy(layer.gamma_vis), np.zeros(N))
    np.testing.assert_array_equal(to_numpy(layer.gamma_word), np.zeros(K))
    values = to_numpy(layer.intermediates(x))
    np.testing.assert_array_equal(values["visual_nodes_new"], values["visual_nodes_gcn"])


def test_zero_value_conv_gives_zero_class_node():
    x = random_array((2, 5, 7, C), seed=7)
    layer = _built(x, class_embeddings="learned")
    _randomize(layer, seed=4)
    layer.gamma_word.assign(np.zeros(K, "float32"))
    layer.value_vis.kernel.assign(np.zeros((D, D), "float32"))
    layer.value_vis.bias.assign(np.zeros(D, "float32"))
    _, class_node = to_numpy(layer(x))
    np.testing.assert_array_equal(class_node, np.zeros((2, K, D)))


def test_word_branch_is_batch_independent():
    # BN statistics over the K class rows only, not over B * K rows.
    x = random_array((3, 4, 5, C), seed=8)
    layer = _built(x, class_embeddings=_embeddings())
    _randomize(layer, seed=5)
    one = to_numpy(layer.intermediates(x[:1], training=True)["word_nodes_gcn"])
    three = to_numpy(layer.intermediates(x, training=True)["word_nodes_gcn"])
    np.testing.assert_allclose(three, np.broadcast_to(one, three.shape), rtol=1e-6, atol=1e-6)


def test_default_zero_embeddings_and_sizes():
    layer = GraphInteractionUnit(num_classes=5)
    layer.build((None, None, None, 16))
    assert tuple(layer.embeddings.shape) == (5, 300)
    assert not layer.embeddings.trainable
    np.testing.assert_array_equal(to_numpy(layer.embeddings), np.zeros((5, 300)))
    assert tuple(layer.query.kernel.shape) == (256, 128)
    assert tuple(layer.conv_theta.kernel.shape) == (16, 84)
    assert layer.bn.epsilon == 1e-5 and layer.bn.momentum == 0.9
    learned = GraphInteractionUnit(num_classes=5, class_embeddings="learned")
    learned.build((None, None, None, 16))
    assert learned.embeddings.trainable
    assert 0.005 < float(np.std(to_numpy(learned.embeddings))) < 0.05


def test_parameter_count_matches_reference():
    # SPEC 3.2: the GI unit alone (in = 512, D = 256, N = 84) has 645,787
    # trainable parameters for K = 59 and 642,587 for K = 19; the (K, 300)
    # input table is a buffer, and the word MLP (P2's fc1, fc2 in GIHead) has
    # 300*128 + 128 + 2*128 + 128*256 + 256 + 2*256 = 72,320 more.
    for k, expected in ((59, 645_787), (19, 642_587)):
        layer = GraphInteractionUnit(num_classes=k)
        layer.build((None, None, None, 512))
        word = [w for w in layer.trainable_weights if "/word_" in w.path]
        assert sum(int(np.prod(w.shape)) for w in word) == 72_320
        total = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
        assert total - 72_320 == expected


@pytest.mark.parametrize("class_embeddings", [None, "array", "learned"])
def test_save_and_reload_keeps_embeddings(class_embeddings):
    emb = _embeddings() if class_embeddings == "array" else class_embeddings
    x = random_array((1, 4, 5, C), seed=10)
    inputs = keras.Input((None, None, C))
    layer = GraphInteractionUnit(**SMALL, class_embeddings=emb)
    model = keras.Model(inputs, layer(inputs))
    _randomize(layer, seed=6)
    table = to_numpy(layer.embeddings)
    if class_embeddings == "array":
        np.testing.assert_array_equal(table, emb)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gi.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path, safe_mode=True)
    new_layer = next(lay for lay in reloaded.layers if isinstance(lay, GraphInteractionUnit))
    np.testing.assert_array_equal(to_numpy(new_layer.embeddings), table)
    assert new_layer.embeddings.trainable == (class_embeddings == "learned")
    for got, want in zip(to_numpy(reloaded(x)), to_numpy(model(x))):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_config_keeps_array_values():
    emb = _embeddings()
    layer = GraphInteractionUnit(**SMALL, class_embeddings=emb)
    config = layer.get_config()
    assert config["embedding_dim"] == E
    clone = GraphInteractionUnit.from_config(config)
    clone.build((None, None, None, C))
    np.testing.assert_array_equal(to_numpy(clone.embeddings), emb)


def test_channels_first_matches_channels_last():
    x = random_array((2, 5, 7, C), seed=11)
    last = _built(x)
    first = GraphInteractionUnit(**SMALL, data_format="channels_first")
    first.build((2, C, 5, 7))
    _randomize(last)
    first.set_weights(last.get_weights())
    out_last, cls_last = to_numpy(last(x))
    out_first, cls_first = to_numpy(first(np.transpose(x, (0, 3, 1, 2))))
    np.testing.assert_allclose(np.transpose(out_first, (0, 2, 3, 1)), out_last, atol=1e-5)
    np.testing.assert_allclose(cls_first, cls_last, atol=1e-6)


def test_float32_graph_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")
    x = random_array((1, 4, 5, C))
    out, class_node = GraphInteractionUnit(**SMALL)(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(class_node.dtype) == "float32"
    symbolic = GraphInteractionUnit(**SMALL)(keras.Input((None, None, C)))
    assert [keras.backend.standardize_dtype(t.dtype) for t in symbolic] == ["bfloat16", "float32"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_node": 0}, "num_node=0"),
        ({"num_node": -4}, "num_node=-4"),
        ({"num_classes": 0}, "num_classes=0"),
        ({"num_state": 1, "embedding_mlp": (1,)}, "num_state=1"),
        ({"class_embeddings": np.zeros((K + 1, E))}, r"class_embeddings.shape=\(8, 10\)"),
        ({"class_embeddings": np.zeros((K,))}, r"class_embeddings.shape=\(7,\)"),
        ({"class_embeddings": "glove"}, "class_embeddings='glove'"),
        ({"class_embeddings": np.zeros((K, E)), "embedding_dim": 300}, "embedding_dim=300"),
        ({"embedding_mlp": (16, 64)}, r"embedding_mlp=\(16, 64\)"),
        ({"embedding_mlp": ()}, r"embedding_mlp=\(\)"),
        ({"data_format": "NCHW"}, "data_format='NCHW'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GraphInteractionUnit(**{**SMALL, **kwargs})
