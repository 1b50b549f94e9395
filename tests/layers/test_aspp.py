import numpy as np
import pytest

from kseg.layers import ASPP, ConvBNAct
from tests.helpers import random_array, run_layer_test, to_numpy
from tests.layers.test_conv import _np_bn, _np_conv2d, _randomize_bn


def _bn_layers(layer):
    return [w for w in _walk(layer) if type(w).__name__ == "BatchNormalization"]


def _walk(layer):
    out = []
    for sub in layer._layers:
        out.append(sub)
        out += _walk(sub)
    return out


def _randomize_all_bn(layer):
    for i, bn in enumerate(_bn_layers(layer)):
        _randomize_bn(bn, 10 + i)


def _np_conv_bn_relu(x, block):
    """NumPy reference of a plain ConvBNAct (stride 1, 'same', dilation d)."""
    w = to_numpy(block.conv.kernel).astype("float64")
    d = block.dilation_rate[0]
    pad = d * (w.shape[0] - 1) // 2
    return np.maximum(_np_bn(_np_conv2d(x, w, 1, d, (pad, pad)), block.bn), 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"atrous_rates": (1, 2), "separable": True, "pool_align_corners": True},
        {"atrous_rates": (1, 3), "mode": "v2"},
    ],
)
def test_layer_basics(kwargs):
    run_layer_test(ASPP, {"filters": 8, **kwargs}, (1, 17, 23, 16), (1, 17, 23, 8))


def test_layer_basics_without_image_pooling():
    run_layer_test(
        ASPP,
        {"filters": 4, "atrous_rates": [2], "image_pooling": False, "dropout": 0.0},
        (2, 9, 7, 6),
        (2, 9, 7, 4),
        train=False,
        mixed_precision=False,
    )


def test_default_rates_per_mode():
    assert ASPP(filters=4).atrous_rates == (6, 12, 18)
    assert ASPP(filters=4, mode="v2").atrous_rates == (6, 12, 18, 24)
    assert ASPP(filters=4, atrous_rates=[12, 24, 36]).atrous_rates == (12, 24, 36)


def test_v2_is_sum_of_biased_atrous_convs():
    x = random_array((1, 11, 9, 5)).astype("float64")
    layer = ASPP(filters=3, atrous_rates=(1, 2, 4), mode="v2")
    layer.build(x.shape)
    rng = np.random.default_rng(1)
    for branch in layer.branches:
        branch.bias.assign(rng.normal(size=3).astype("float32"))
    y = to_numpy(layer(x.astype("float32")))
    ref = 0.0
    for rate, branch in zip((1, 2, 4), layer.branches):
        w = to_numpy(branch.kernel).astype("float64")
        ref = ref + _np_conv2d(x, w, 1, rate, (rate, rate)) + to_numpy(branch.bias)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    assert not _bn_layers(layer)
    assert [b.name for b in layer.branches] == ["branch0", "branch1", "branch2"]


def test_v2_init_is_small_normal_with_zero_bias():
    layer = ASPP(filters=8, mode="v2")
    layer.build((1, 8, 8, 64))
    kernels = np.concatenate([to_numpy(b.kernel).ravel() for b in layer.branches])
    assert abs(kernels.std() - 0.01) < 0.001
    assert abs(kernels.mean()) < 0.001
    assert all(np.all(to_numpy(b.bias) == 0) for b in layer.branches)


@pytest.mark.parametrize(
    "align, pooling, rates",
    [(False, True, (2, 3)), (True, True, (2, 3)), (False, False, (2, 3)), (False, True, ())],
)
def test_v3_matches_numpy(align, pooling, rates):
    # Odd, non-square input; the image-pooling branch is a 1x1 map broadcast
    # to the feature size whatever the align_corners setting. No rates: the 1x1
    # and image-pooling branches of the mobile head (MobileNetV2 paper, 6.3).
    x = random_array((2, 13, 9, 6)).astype("float64")
    layer = ASPP(filters=4, atrous_rates=rates, pool_align_corners=align, image_pooling=pooling)
    layer.build(x.shape)
    _randomize_all_bn(layer)
    y = to_numpy(layer(x.astype("float32"), training=False))

    maps = [_np_conv_bn_relu(x, b) for b in layer.branches]
    assert len(maps) == 1 + len(rates)
    if pooling:
        pooled = x.mean(axis=(1, 2), keepdims=True)
        pooled = _np_conv_bn_relu(pooled, layer.pool_conv)
        maps.append(np.broadcast_to(pooled, x.shape[:3] + (4,)))
    else:
        assert layer.pool_conv is None
    ref = _np_conv_bn_relu(np.concatenate(maps, axis=-1), layer.projection)
    assert y.shape == (2, 13, 9, 4)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_v3_matches_torch_functional():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = random_array((1, 11, 14, 5))
    layer = ASPP(filters=3, atrous_rates=(2, 5), dropout=0.5)
    layer.build(x.shape)
    _randomize_all_bn(layer)
    y = to_numpy(layer(x, training=False))

    def t(a):
        return torch.tensor(np.asarray(to_numpy(a)))

    def conv_bn_relu(inp, block):
        w = t(block.conv.kernel).permute(3, 2, 0, 1)
        d = block.dilation_rate[0]
        out = F.conv2d(inp, w, dilation=d, padding=d * (w.shape[-1] - 1) // 2)
        g, b, m, v = (t(w) for w in block.bn.weights)
        out = F.batch_norm(out, m, v, g, b, training=False, eps=block.bn.epsilon)
        return F.relu(out)

    xt = torch.tensor(x).permute(0, 3, 1, 2)
    maps = [conv_bn_relu(xt, b) for b in layer.branches]
    pooled = conv_bn_relu(F.adaptive_avg_pool2d(xt, 1), layer.pool_conv)
    maps.append(F.interpolate(pooled, size=xt.shape[-2:], mode="bilinear", align_corners=False))
    ref = conv_bn_relu(torch.cat(maps, 1), layer.projection).permute(0, 2, 3, 1)
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.channels_first_conv
def test_channels_first_matches_channels_last():
    x = random_array((1, 9, 10, 6))
    last = ASPP(filters=4, atrous_rates=(2,))
    first = ASPP(filters=4, atrous_rates=(2,), data_format="channels_first")
    y_last = to_numpy(last(x))
    first(np.transpose(x, (0, 3, 1, 2)))
    first.set_weights(last.get_weights())
    y_first = to_numpy(first(np.transpose(x, (0, 3, 1, 2))))
    np.testing.assert_allclose(np.transpose(y_first, (0, 2, 3, 1)), y_last, atol=1e-5)


def test_structure_names_and_bn_settings():
    layer = ASPP(
        filters=4, atrous_rates=(2, 3), bn_momentum=0.9997, bn_epsilon=1e-3, separable=True
    )
    layer.build((1, 8, 8, 6))
    assert [b.name for b in layer.branches] == ["aspp0", "aspp1", "aspp2"]
    assert layer.pool_conv.name == "image_pooling" and layer.projection.name == "projection"
    assert not layer.branches[0].separable and layer.branches[1].separable
    assert layer.branches[2].dilation_rate == (3, 3)
    bns = _bn_layers(layer)
    # aspp0, 2 separable branches with 2 BNs each, image pooling, projection.
    assert len(bns) == 7
    assert all(bn.momentum == pytest.approx(0.9997) for bn in bns)
    assert all(bn.epsilon == pytest.approx(1e-3) for bn in bns)
    assert all(isinstance(b, ConvBNAct) for b in layer.branches)
    assert layer.dropout_layer.rate == pytest.approx(0.1)


def test_separable_without_inner_bn_act():
    # segmentation_models.pytorch's SeparableConv2d: depthwise -> pointwise -> BN -> ReLU.
    layer = ASPP(filters=4, atrous_rates=(2,), separable=True, separable_inner_bn_act=False)
    x = random_array((1, 7, 9, 6))
    y = to_numpy(layer(x, training=False))
    branch = layer.branches[1]
    assert branch.depthwise_bn is None and branch.depthwise_act is None
    assert not branch.depthwise.use_bias and not branch.pointwise.use_bias
    assert layer.get_config()["separable_inner_bn_act"] is False
    again = ASPP.from_config(layer.get_config())
    again(x)
    again.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_numpy(again(x, training=False)), y, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"separable_inner_bn_act": 0}, ValueError, "Received: separable_inner_bn_act=0"),
        ({"atrous_rates": [], "mode": "v2"}, ValueError, "at least one rate"),
        ({"atrous_rates": (6, 0)}, ValueError, "atrous_rates"),
        ({"atrous_rates": (6, -12)}, ValueError, "atrous_rates"),
        ({"atrous_rates": 6}, TypeError, "atrous_rates"),
        ({"atrous_rates": (6, 1.5)}, TypeError, "atrous_rates"),
        ({"mode": "v4"}, ValueError, "mode"),
        ({"filters": 0}, ValueError, "filters"),
        ({"dropout": 1.0}, ValueError, "dropout"),
        ({"bn_epsilon": -1.0}, ValueError, "bn_epsilon"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ASPP(**kwargs)
