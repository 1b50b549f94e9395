import keras
import numpy as np
import pytest

from kseg.layers import ConvBNAct
from tests.helpers import random_array, run_layer_test, to_numpy


def _np_conv2d(x, w, stride=1, dilation=1, pad=(0, 0)):
    """Direct NHWC cross-correlation; w is (kh, kw, cin, cout)."""
    x = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
    kh, kw, _, cout = w.shape
    b, h, wd, _ = x.shape
    oh = (h - dilation * (kh - 1) - 1) // stride + 1
    ow = (wd - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((b, oh, ow, cout))
    for i in range(kh):
        for j in range(kw):
            patch = x[
                :,
                i * dilation : i * dilation + stride * (oh - 1) + 1 : stride,
                j * dilation : j * dilation + stride * (ow - 1) + 1 : stride,
                :,
            ]
            out += patch @ w[i, j]
    return out


def _np_depthwise(x, w, dilation=1, pad=(0, 0)):
    """w is (kh, kw, c, 1)."""
    c = x.shape[-1]
    full = np.zeros(w.shape[:2] + (c, c))
    for k in range(c):
        full[:, :, k, k] = w[:, :, k, 0]
    return _np_conv2d(x, full, 1, dilation, pad)


def _np_bn(x, bn):
    gamma, beta, mean, var = (to_numpy(v).astype("float64") for v in bn.weights)
    return (x - mean) / np.sqrt(var + bn.epsilon) * gamma + beta


def _randomize_bn(bn, seed):
    rng = np.random.default_rng(seed)
    c = bn.weights[0].shape[0]
    bn.set_weights(
        [
            rng.uniform(0.5, 1.5, c),
            rng.normal(size=c),
            rng.normal(size=c),
            rng.uniform(0.5, 2.0, c),
        ]
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dilation_rate": 2},
        {"separable": True, "dilation_rate": 3},
        {"separable": True, "separable_inner_bn_act": False, "use_bn": False, "activation": "gelu"},
    ],
)
def test_layer_basics(kwargs):
    run_layer_test(ConvBNAct, {"filters": 8, **kwargs}, (1, 17, 23, 16), (1, 17, 23, 8))


def test_layer_basics_strided_explicit_padding():
    run_layer_test(
        ConvBNAct,
        {"filters": 8, "strides": 2, "padding": 1},
        (1, 17, 22, 16),
        (1, 9, 11, 8),
        train=False,
        mixed_precision=False,
    )


@pytest.mark.channels_first_conv
def test_channels_first():
    x = random_array((1, 5, 9, 11))
    layer = ConvBNAct(4, dilation_rate=2, data_format="channels_first")
    y = to_numpy(layer(x))
    assert y.shape == (1, 4, 9, 11)
    assert layer.bn.axis == 1
    ref = ConvBNAct(4, dilation_rate=2, data_format="channels_last")
    ref(np.transpose(x, (0, 2, 3, 1)))
    ref.set_weights(layer.get_weights())
    y_ref = to_numpy(ref(np.transpose(x, (0, 2, 3, 1))))
    np.testing.assert_allclose(np.transpose(y, (0, 2, 3, 1)), y_ref, atol=1e-5)


@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_plain_matches_numpy(dilation):
    x = random_array((2, 11, 13, 3)).astype("float64")
    layer = ConvBNAct(5, 3, dilation_rate=dilation, bn_epsilon=1e-3)
    layer.build(x.shape)
    _randomize_bn(layer.bn, 1)
    y = to_numpy(layer(x.astype("float32"), training=False))
    w = to_numpy(layer.conv.kernel).astype("float64")
    ref = np.maximum(_np_bn(_np_conv2d(x, w, 1, dilation, (dilation, dilation)), layer.bn), 0)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    assert layer.conv.bias is None


def test_strided_explicit_padding_matches_symmetric_padding():
    # torch's Conv2d(k=3, s=2, padding=1) pads one row/column on each side.
    x = random_array((1, 8, 10, 3)).astype("float64")
    layer = ConvBNAct(4, 3, strides=2, padding=1, use_bn=False, activation=None)
    y = to_numpy(layer(x.astype("float32")))
    w = to_numpy(layer.conv.kernel).astype("float64")
    b = to_numpy(layer.conv.bias).astype("float64")
    ref = _np_conv2d(x, w, 2, 1, (1, 1)) + b
    assert y.shape == (1, 4, 5, 4)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("inner", [True, False])
def test_separable_matches_numpy(inner):
    x = random_array((1, 9, 12, 4)).astype("float64")
    layer = ConvBNAct(6, 3, dilation_rate=2, separable=True, separable_inner_bn_act=inner)
    layer.build(x.shape)
    _randomize_bn(layer.pointwise_bn, 2)
    if inner:
        _randomize_bn(layer.depthwise_bn, 3)
    y = to_numpy(layer(x.astype("float32"), training=False))
    dw = to_numpy(layer.depthwise.kernel).astype("float64")
    pw = to_numpy(layer.pointwise.kernel).astype("float64")
    h = _np_depthwise(x, dw, 2, (2, 2))
    if inner:
        h = np.maximum(_np_bn(h, layer.depthwise_bn), 0)
    else:
        assert layer.depthwise_bn is None and layer.depthwise_act is None
    h = np.maximum(_np_bn(h @ pw[0, 0], layer.pointwise_bn), 0)
    np.testing.assert_allclose(y, h, rtol=1e-4, atol=1e-5)
    assert layer.depthwise.bias is None and layer.pointwise.bias is None


def test_matches_torch_conv_bn_relu():
    torch = pytest.importorskip("torch")
    x = random_array((1, 10, 9, 3))
    layer = ConvBNAct(4, 3, strides=2, padding=1)
    layer.build(x.shape)
    _randomize_bn(layer.bn, 4)
    y = to_numpy(layer(x, training=False))
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
    bn = torch.nn.BatchNorm2d(4, eps=1e-5).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(to_numpy(layer.conv.kernel).transpose(3, 2, 0, 1)))
        gamma, beta, mean, var = (torch.tensor(to_numpy(v)) for v in layer.bn.weights)
        bn.weight.copy_(gamma)
        bn.bias.copy_(beta)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        ref = torch.relu(bn(conv(torch.tensor(x).permute(0, 3, 1, 2)))).permute(0, 2, 3, 1)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-4, atol=1e-5)


def test_bn_settings_and_names():
    layer = ConvBNAct(4, bn_momentum=0.9997, bn_epsilon=1e-3)
    assert layer.bn.momentum == pytest.approx(0.9997)
    assert layer.bn.epsilon == pytest.approx(1e-3)
    sep = ConvBNAct(4, separable=True, padding=1)
    names = [la.name for la in sep._layers_in_order]
    assert names == [
        "pad",
        "depthwise",
        "depthwise_bn",
        "depthwise_act",
        "pointwise",
        "pointwise_bn",
        "act",
    ]
    assert sep.depthwise_bn.momentum == pytest.approx(0.9)
    assert sep.pointwise_bn.epsilon == pytest.approx(1e-5)
    plain = ConvBNAct(4, use_bn=False)
    assert plain.use_bias and plain.bn is None
    assert ConvBNAct(4, use_bias=True).use_bias


def test_weight_paths_are_predictable():
    layer = ConvBNAct(4, name="block")
    layer.build((1, 8, 8, 3))
    paths = sorted(w.path for w in layer.weights)
    assert "block/conv/kernel" in paths
    assert "block/bn/gamma" in paths


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dilation_rate": 0}, "dilation_rate"),
        ({"dilation_rate": -2}, "dilation_rate"),
        ({"filters": 0}, "filters"),
        ({"activation": "nope"}, "activation"),
        ({"padding": "reflect"}, "padding"),
        ({"padding": -1}, "padding"),
        ({"strides": 2, "dilation_rate": 2}, "strides"),
        ({"bn_momentum": 1.5}, "bn_momentum"),
        ({"bn_epsilon": 0.0}, "bn_epsilon"),
        ({"data_format": "NHWC"}, "data_format"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvBNAct(**{"filters": 4, **kwargs})


def test_float_filters_raise_type_error():
    with pytest.raises(TypeError, match="filters"):
        ConvBNAct(4.0)


def test_training_updates_bn_statistics():
    layer = ConvBNAct(2, 1, bn_momentum=0.5)
    x = random_array((2, 4, 4, 3)) + 3.0
    layer(x, training=True)
    mean = to_numpy(layer.bn.moving_mean)
    assert np.all(mean != 0.0)
    keras.backend.clear_session()
