"""The Mix Transformer's layers against torch functional ops and a NumPy reference.

OverlapPatchEmbedding and MixFFN are compared with `torch.nn.functional`
(`conv2d` with torch's padding, `layer_norm`, the exact `gelu`);
EfficientSelfAttention with a float64 NumPy attention written here; DropPath
with its definition (each sample kept and scaled, or zeroed).
"""

import math

import keras
import numpy as np
import pytest

import kseg
from tests.helpers import random_array, to_numpy, torch_or_skip

LAYERS = {
    "patch": (kseg.layers.OverlapPatchEmbedding, {"filters": 8, "patch_size": 3, "strides": 2}),
    "attention": (
        kseg.layers.EfficientSelfAttention,
        {"filters": 8, "num_heads": 2, "sr_ratio": 2},
    ),
    "ffn": (kseg.layers.MixFFN, {"filters": 8, "mlp_ratio": 2}),
}


def _randomize(layer, seed=0):
    """Every weight random (LayerNorm scales around 1), so that no term is trivial."""
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        value = rng.standard_normal(tuple(weight.shape)) * 0.5
        if weight.path.endswith("gamma"):
            value = 1.0 + 0.2 * value
        weight.assign(value.astype("float32"))
    return layer


def _named(layer):
    """`{sub-layer name: [weights as numpy]}`."""
    return {sub.name: [to_numpy(w.value) for w in sub.weights] for sub in layer._layers}


def _layer_norm(torch, x, weights, channels):
    gamma, beta = (torch.from_numpy(w) for w in weights)
    return torch.nn.functional.layer_norm(x, (channels,), gamma, beta, eps=1e-5)


def test_overlap_patch_embedding_matches_torch():
    torch = torch_or_skip()
    layer = kseg.layers.OverlapPatchEmbedding(8, patch_size=7, strides=4)
    x = random_array((2, 33, 47, 3))
    layer(x)
    _randomize(layer)
    got = to_numpy(layer(x))
    weights = _named(layer)
    kernel, bias = weights["conv"]
    y = torch.nn.functional.conv2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2)),
        torch.from_numpy(kernel.transpose(3, 2, 0, 1)),
        torch.from_numpy(bias),
        stride=4,
        padding=3,
    ).permute(0, 2, 3, 1)
    expected = _layer_norm(torch, y, weights["norm"], 8).numpy()
    assert got.shape == expected.shape == (2, 9, 12, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def _attention_reference(x, weights, heads, sr_ratio):
    """Float64 multi-head attention with keys and values from the reduced map."""
    x = x.astype("float64")
    b, h, w, c = x.shape
    d = c // heads

    def dense(t, name):
        kernel, bias = weights[name]
        return t @ kernel.astype("float64") + bias

    reduced = x
    if sr_ratio > 1:
        kernel, bias = weights["sr"]
        rows, cols = h // sr_ratio, w // sr_ratio
        patches = x[:, : rows * sr_ratio, : cols * sr_ratio]
        patches = patches.reshape(b, rows, sr_ratio, cols, sr_ratio, c)
        reduced = np.einsum("bipjqc,pqco->bijo", patches, kernel.astype("float64")) + bias
        gamma, beta = weights["sr_norm"]
        mean = reduced.mean(-1, keepdims=True)
        var = reduced.var(-1, keepdims=True)
        reduced = (reduced - mean) / np.sqrt(var + 1e-5) * gamma + beta
    q = dense(x, "query").reshape(b, h * w, heads, d)
    k = dense(reduced, "key").reshape(b, -1, heads, d)
    v = dense(reduced, "value").reshape(b, -1, heads, d)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    logits -= logits.max(-1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    y = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, h, w, c)
    return dense(y, "output")


@pytest.mark.parametrize("heads, sr_ratio", [(2, 2), (1, 1), (4, 3)])
def test_efficient_self_attention_matches_numpy(heads, sr_ratio):
    layer = kseg.layers.EfficientSelfAttention(8, num_heads=heads, sr_ratio=sr_ratio)
    x = random_array((2, 9, 11, 8), seed=1)
    layer(x)
    _randomize(layer, seed=heads)
    expected = _attention_reference(x, _named(layer), heads, sr_ratio)
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-4, atol=1e-4)


def test_mix_ffn_matches_torch():
    torch = torch_or_skip()
    layer = kseg.layers.MixFFN(8, mlp_ratio=2)
    x = random_array((2, 9, 11, 8), seed=2)
    layer(x)
    _randomize(layer, seed=2)
    weights = _named(layer)
    assert weights["dense1"][0].shape == (8, 16)
    t = torch.from_numpy(x)
    t = t @ torch.from_numpy(weights["dense1"][0]) + torch.from_numpy(weights["dense1"][1])
    kernel, bias = weights["dwconv"]  # (3, 3, 16, 1) -> torch's grouped (16, 1, 3, 3)
    t = torch.nn.functional.conv2d(
        t.permute(0, 3, 1, 2),
        torch.from_numpy(kernel.transpose(2, 3, 0, 1)),
        torch.from_numpy(bias),
        padding=1,
        groups=16,
    ).permute(0, 2, 3, 1)
    t = torch.nn.functional.gelu(t, approximate="none")
    expected = t @ torch.from_numpy(weights["dense2"][0]) + torch.from_numpy(weights["dense2"][1])
    np.testing.assert_allclose(to_numpy(layer(x)), expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_config_shapes_and_channels_first(name):
    cls, kwargs = LAYERS[name]
    layer = cls(**kwargs, name=name)
    config = layer.get_config()
    assert cls.from_config(config).get_config() == config
    channels = 3 if name == "patch" else 8
    x = random_array((2, 9, 11, channels), seed=3)
    y = to_numpy(layer(x))
    assert tuple(layer.compute_output_shape(x.shape)) == y.shape
    symbolic = layer(keras.Input((None, None, channels)))
    assert tuple(symbolic.shape) == (None, None, None, y.shape[-1])
    _randomize(layer, seed=3)
    y = to_numpy(layer(x))
    first = cls(**kwargs, data_format="channels_first")
    first(x.transpose(0, 3, 1, 2))
    first.set_weights(layer.get_weights())
    got = to_numpy(first(x.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(got, y.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


def test_attention_logits_stay_finite_under_float16():
    # Queries and keys of about 300 give dot products of about 7e5, beyond float16's
    # 65504: their product and softmax are computed in float32.
    x = np.ones((1, 4, 4, 8), "float32")
    keras.config.set_dtype_policy("mixed_float16")
    layer = kseg.layers.EfficientSelfAttention(8, num_heads=1)
    layer(x)
    for weight in layer.weights:
        weight.assign(np.full(weight.shape, 0.0 if weight.path.endswith("bias") else 1.0))
    layer.query.kernel.assign(np.full((8, 8), 37.5))  # 8 * 37.5 = 300 per query entry
    layer.key.kernel.assign(np.full((8, 8), 37.5))
    out = to_numpy(layer(x)).astype("float32")
    np.testing.assert_allclose(out, np.full((1, 4, 4, 8), 64.0), rtol=1e-3)


def test_drop_path_drops_whole_samples_in_training_only():
    x = np.ones((64, 3, 5, 2), "float32")
    layer = kseg.layers.DropPath(0.25, seed=1)
    np.testing.assert_array_equal(to_numpy(layer(x)), x)
    y = to_numpy(layer(x, training=True))
    per_sample = y.reshape(64, -1)
    assert np.all(per_sample == per_sample[:, :1])  # one draw per sample
    values = set(np.unique(per_sample).tolist())
    assert values <= {0.0, float(np.float32(1 / 0.75))} and len(values) == 2
    np.testing.assert_array_equal(to_numpy(kseg.layers.DropPath(0.0)(x, training=True)), x)
    config = layer.get_config()
    assert kseg.layers.DropPath.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="rate"):
        kseg.layers.DropPath(1.0)
