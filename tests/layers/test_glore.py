"""Tests for kseg.layers.GloReUnit."""

import keras
import numpy as np
import pytest

from kseg.layers import GloReUnit
from tests.helpers import random_array, run_layer_test, to_numpy

C, S, N = 24, 10, 6


def _randomize(layer, seed=1):
    """Random weights everywhere, including a nonzero blocker gamma and BN stats."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        shape = tuple(w.shape)
        if "moving_variance" in w.path:
            value = rng.uniform(0.5, 2.0, shape)
        elif "moving_mean" in w.path:
            value = rng.normal(0.0, 0.3, shape)
        else:
            value = rng.normal(0.0, 0.3, shape)
        w.assign(value.astype("float32"))


def _weights(layer):
    """The unit's weights as NumPy arrays, in the Keras layout."""
    bn = layer.blocker
    return {
        "ws": to_numpy(layer.conv_state.kernel), "bs": to_numpy(layer.conv_state.bias),
        "wp": to_numpy(layer.conv_proj.kernel), "bp": to_numpy(layer.conv_proj.bias),
        "a": to_numpy(layer.gcn.node_kernel), "ab": to_numpy(layer.gcn.node_bias),
        "wg": to_numpy(layer.gcn.state_kernel), "we": to_numpy(layer.conv_extend.kernel),
        "gamma": to_numpy(bn.gamma), "beta": to_numpy(bn.beta),
        "mean": to_numpy(bn.moving_mean), "var": to_numpy(bn.moving_variance),
    }


def _numpy_glore(x, w, normalize, relu_position, eps=1e-4):
    """Float64 NumPy re-implementation of the official GloRe unit (SPEC 2.1)."""
    x = x.astype("float64")
    w = {k: v.astype("float64") for k, v in w.items()}
    b, h, wd, c = x.shape
    xf = x.reshape(b, h * wd, c)
    xs = xf @ w["ws"] + w["bs"]
    bp = xf @ w["wp"] + w["bp"]
    v = np.transpose(bp, (0, 2, 1)) @ xs
    if normalize:
        v = v / (h * wd)
    hid = np.einsum("mn,bns->bms", w["a"], v) + w["ab"][None, :, None] + v
    if relu_position == "before_state_conv":
        z = np.maximum(hid, 0) @ w["wg"]
    else:
        z = np.maximum(hid @ w["wg"], 0)
    y = bp @ z
    e = y @ w["we"]
    bn = (e - w["mean"]) / np.sqrt(w["var"] + eps) * w["gamma"] + w["beta"]
    return (xf + bn).reshape(b, h, wd, c)


def _torch_glore(torch, x, w, normalize, relu_position, eps=1e-4):
    """A torch port of the official unit (NCHW, Conv1d/Conv2d), weights copied in."""
    nn = torch.nn
    f = nn.functional
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    xt = t(x).permute(0, 3, 1, 2)
    n, c, h, wd = xt.shape
    conv_state = nn.Conv2d(c, S, 1).double()
    conv_proj = nn.Conv2d(c, N, 1).double()
    conv1 = nn.Conv1d(N, N, 1).double()
    conv2 = nn.Conv1d(S, S, 1, bias=False).double()
    conv_extend = nn.Conv2d(S, c, 1, bias=False).double()
    blocker = nn.BatchNorm2d(c, eps=eps).double().eval()
    with torch.no_grad():
        conv_state.weight.copy_(t(w["ws"]).T[:, :, None, None])
        conv_state.bias.copy_(t(w["bs"]))
        conv_proj.weight.copy_(t(w["wp"]).T[:, :, None, None])
        conv_proj.bias.copy_(t(w["bp"]))
        conv1.weight.copy_(t(w["a"])[:, :, None])
        conv1.bias.copy_(t(w["ab"]))
        conv2.weight.copy_(t(w["wg"]).T[:, :, None])
        conv_extend.weight.copy_(t(w["we"]).T[:, :, None, None])
        blocker.weight.copy_(t(w["gamma"]))
        blocker.bias.copy_(t(w["beta"]))
        blocker.running_mean.copy_(t(w["mean"]))
        blocker.running_var.copy_(t(w["var"]))
        # G1: x_state (n, S, L), x_proj (n, N, L), x_n_state = x_proj @ x_state^T.
        x_state = conv_state(xt).view(n, S, -1)
        x_proj = conv_proj(xt).view(n, N, -1)
        x_n_state = torch.matmul(x_state, x_proj.permute(0, 2, 1))
        if normalize:
            x_n_state = x_n_state * (1.0 / x_state.size(2))
        # GCN: conv1 over the node axis, + identity, ReLU, conv2 over states.
        hid = conv1(x_n_state.permute(0, 2, 1)).permute(0, 2, 1) + x_n_state
        if relu_position == "before_state_conv":
            x_n_rel = conv2(f.relu(hid))
        else:
            x_n_rel = f.relu(conv2(hid))
        x_state_rev = torch.matmul(x_n_rel, x_proj).view(n, S, h, wd)
        out = xt + blocker(conv_extend(x_state_rev))
    return out.permute(0, 2, 3, 1).numpy()


def test_layer_contract():
    run_layer_test(GloReUnit, {"num_state": S, "num_node": N}, (2, 7, 9, C), (2, 7, 9, C))


def test_layer_contract_derived_sizes_and_paddleseg_variant():
    run_layer_test(
        GloReUnit,
        {"normalize": True, "gcn_relu_position": "after_state_conv", "zero_init_bn": False},
        (1, 8, 8, 16),
        (1, 8, 8, 16),
    )


def test_default_sizes_from_channels():
    layer = GloReUnit()
    layer(random_array((1, 4, 4, 32)))
    assert tuple(layer.conv_state.kernel.shape) == (32, 16)  # C' = C/2
    assert tuple(layer.conv_proj.kernel.shape) == (32, 8)  # N = C/4
    assert tuple(layer.gcn.node_kernel.shape) == (8, 8)
    assert layer.blocker.epsilon == 1e-4 and layer.blocker.momentum == 0.9


def test_parameter_count_matches_paddleseg_unit():
    # SPEC 2.3: GloRe(512, S=128, N=64) alone has 185,600 parameters.
    layer = GloReUnit(num_state=128, num_node=64)
    layer.build((None, None, None, 512))
    assert sum(int(np.prod(w.shape)) for w in layer.trainable_weights) == 185_600


@pytest.mark.parametrize("training", [False, True])
def test_identity_at_init(training):
    x = random_array((2, 5, 7, C), seed=3)
    out = to_numpy(GloReUnit(num_state=S, num_node=N)(x, training=training))
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("relu_position", ["before_state_conv", "after_state_conv"])
@pytest.mark.parametrize("hw", [(5, 7), (6, 4)])
def test_matches_numpy_reference(normalize, relu_position, hw):
    x = random_array((2, *hw, C), seed=4)
    layer = GloReUnit(S, N, normalize=normalize, gcn_relu_position=relu_position)
    layer.build(x.shape)
    _randomize(layer)
    out = to_numpy(layer(x, training=False))
    expected = _numpy_glore(x, _weights(layer), normalize, relu_position)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("relu_position", ["before_state_conv", "after_state_conv"])
def test_matches_torch_port(normalize, relu_position):
    torch = pytest.importorskip("torch")
    x = random_array((2, 5, 6, C), seed=5)
    layer = GloReUnit(S, N, normalize=normalize, gcn_relu_position=relu_position)
    layer.build(x.shape)
    _randomize(layer, seed=2)
    out = to_numpy(layer(x, training=False))
    expected = _torch_glore(torch, x, _weights(layer), normalize, relu_position)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_channels_first_matches_channels_last():
    x = random_array((2, 5, 7, C), seed=6)
    last = GloReUnit(S, N, data_format="channels_last")
    first = GloReUnit(S, N, data_format="channels_first")
    last.build(x.shape)
    first.build((2, C, 5, 7))
    _randomize(last)
    first.set_weights(last.get_weights())
    out_last = to_numpy(last(x, training=False))
    out_first = to_numpy(first(np.transpose(x, (0, 3, 1, 2)), training=False))
    np.testing.assert_allclose(np.transpose(out_first, (0, 2, 3, 1)), out_last, atol=1e-6)


def test_gradients_finite_for_large_input():
    x = random_array((1, 64, 64, 16), seed=7)
    layer = GloReUnit(num_state=8, num_node=4, zero_init_bn=False)
    model = keras.Sequential([keras.Input((None, None, 16)), layer])
    model.compile(optimizer=keras.optimizers.SGD(1e-6), loss="mse")
    model.fit(x, np.zeros_like(x), epochs=1, verbose=0)
    for w in model.weights:
        assert np.all(np.isfinite(to_numpy(w.value))), w.path


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_node": 0}, "num_node=0"),
        ({"num_node": -3}, "num_node=-3"),
        ({"num_state": 0}, "num_state=0"),
        ({"gcn_relu_position": "middle"}, "gcn_relu_position='middle'"),
        ({"data_format": "nhwc"}, "data_format='nhwc'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GloReUnit(**kwargs)


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match="rank 4"):
        GloReUnit().build((2, 8, 16))


def _relative_error(got, expected):
    got = np.asarray(got, "float64")
    expected = np.asarray(expected, "float64")
    return np.linalg.norm(got - expected) / np.linalg.norm(expected)


@pytest.mark.parametrize("policy, tolerance", [("mixed_float16", 1e-2), ("mixed_bfloat16", 3e-2)])
@pytest.mark.parametrize("hw", [(32, 64), (64, 128), (128, 256)])
def test_mixed_precision_at_feature_map_sizes(policy, tolerance, hw):
    # The PaddleSeg head's unit (C=512, S=128, N=64) on ReLU-like features:
    # without 1/L, Y = Bp Z grows with the number of pixels (max|Y| ~ 1e6 at
    # 64x128), far beyond float16's 65504.
    x = np.abs(random_array((1, *hw, 512), seed=8))
    ref = GloReUnit(num_state=128, num_node=64, zero_init_bn=False)
    ref.build(x.shape)
    # Moving statistics of a trained unit: those of conv_extend(Y) on this
    # input, computed here in float64.
    w = _weights(ref)
    xf = x.reshape(-1, 512).astype("float64")
    bp = xf @ w["wp"] + w["bp"]
    v = bp.T @ (xf @ w["ws"] + w["bs"])
    hid = w["a"].astype("float64") @ v + w["ab"][:, None] + v
    e = (bp @ (np.maximum(hid, 0) @ w["wg"])) @ w["we"]
    rng = np.random.default_rng(9)
    ref.blocker.gamma.assign(rng.uniform(0.5, 1.5, 512).astype("float32"))
    ref.blocker.beta.assign(rng.normal(0.0, 0.3, 512).astype("float32"))
    ref.blocker.moving_mean.assign(e.mean(axis=0).astype("float32"))
    ref.blocker.moving_variance.assign(e.var(axis=0).astype("float32"))
    expected = to_numpy(ref(x, training=False))
    expected_train = to_numpy(ref(x, training=True))
    assert np.max(np.abs(e)) > 65504  # the case the test is about

    keras.config.set_dtype_policy(policy)
    layer = GloReUnit(num_state=128, num_node=64, zero_init_bn=False)
    layer.build(x.shape)
    layer.set_weights(ref.get_weights())
    for training, want in ((False, expected), (True, expected_train)):
        got = to_numpy(layer(x, training=training)).astype("float32")
        bad = int(np.sum(~np.isfinite(got)))
        assert bad == 0, f"{bad} non-finite outputs, training={training}"
        assert _relative_error(got, want) < tolerance, training
