import math

import numpy as np
import pytest

from kseg.layers import PyramidPoolingModule
from tests.helpers import random_array, run_layer_test, to_numpy
from tests.layers.test_conv import _np_bn, _randomize_bn


def np_adaptive_pool_matrix(n, o):
    """torch adaptive_avg_pool bins: [floor(i n / o), ceil((i + 1) n / o)) (SPEC 4.10)."""
    p = np.zeros((o, n))
    for i in range(o):
        start, end = (i * n) // o, math.ceil((i + 1) * n / o)
        p[i, start:end] = 1.0 / (end - start)
    return p


def np_bilinear_matrix(n_in, n_out, align_corners):
    """torch F.interpolate(size=...) bilinear weights along one axis (SPEC 4.9)."""
    m = np.zeros((n_out, n_in))
    for d in range(n_out):
        if align_corners:
            src = 0.0 if n_out == 1 else d * (n_in - 1) / (n_out - 1)
        else:
            src = max((d + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        m[d, i0] += 1 - lam
        m[d, i1] += lam
    return m


def _np_branch(x, bin_size, conv_block, align_corners):
    _, h, w, _ = x.shape
    pooled = np.einsum(
        "ih,bhwc,jw->bijc",
        np_adaptive_pool_matrix(h, bin_size),
        x,
        np_adaptive_pool_matrix(w, bin_size),
    )
    k = to_numpy(conv_block.conv.kernel).astype("float64")[0, 0]
    y = np.maximum(_np_bn(pooled @ k, conv_block.bn), 0)
    return np.einsum(
        "hi,bijc,wj->bhwc",
        np_bilinear_matrix(bin_size, h, align_corners),
        y,
        np_bilinear_matrix(bin_size, w, align_corners),
    )


def test_layer_basics():
    run_layer_test(PyramidPoolingModule, {}, (1, 17, 23, 16), (1, 17, 23, 32))


def test_layer_basics_explicit_filters_descending():
    run_layer_test(
        PyramidPoolingModule,
        {"bins": [1, 3], "filters": 3, "concat_order": "descending", "align_corners": True},
        (2, 9, 8, 5),
        (2, 9, 8, 11),
        train=False,
        mixed_precision=False,
    )


@pytest.mark.parametrize("align", [False, True])
def test_matches_numpy_reference(align):
    # 7 x 5 with bins up to 6: overlapping bins and 3 x 3 -> 7 x 5 upsampling.
    x = random_array((1, 7, 5, 4)).astype("float64")
    layer = PyramidPoolingModule(bins=(1, 2, 3, 6), filters=2, align_corners=align)
    layer.build(x.shape)
    for i, conv in enumerate(layer.convs):
        _randomize_bn(conv.bn, 20 + i)
    y = to_numpy(layer(x.astype("float32"), training=False))
    assert y.shape == (1, 7, 5, 4 + 4 * 2)
    np.testing.assert_allclose(y[..., :4], x, atol=1e-6)
    for k, (b, conv) in enumerate(zip(layer.bins, layer.convs)):
        ref = _np_branch(x, b, conv, align)
        got = y[..., 4 + 2 * k : 4 + 2 * (k + 1)]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=f"bin {b}")


def test_matches_torch_branch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = random_array((1, 13, 10, 4))
    layer = PyramidPoolingModule(bins=(2, 6), filters=3, align_corners=True)
    layer.build(x.shape)
    _randomize_bn(layer.convs[1].bn, 3)
    y = to_numpy(layer(x, training=False))
    conv = layer.convs[1]
    xt = torch.tensor(x).permute(0, 3, 1, 2)
    w = torch.tensor(to_numpy(conv.conv.kernel)).permute(3, 2, 0, 1)
    g, b, m, v = (torch.tensor(to_numpy(t)) for t in conv.bn.weights)
    ref = F.conv2d(F.adaptive_avg_pool2d(xt, 6), w)
    ref = F.relu(F.batch_norm(ref, m, v, g, b, training=False, eps=1e-5))
    ref = F.interpolate(ref, size=(13, 10), mode="bilinear", align_corners=True)
    np.testing.assert_allclose(y[..., 7:10], ref.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-5)


def test_concat_order():
    x = random_array((1, 9, 11, 8))
    asc = PyramidPoolingModule(bins=(3, 1, 6, 2), filters=1)
    desc = PyramidPoolingModule(bins=(3, 1, 6, 2), filters=1, concat_order="descending")
    y_asc = to_numpy(asc(x, training=False))
    desc(x)
    desc.set_weights(asc.get_weights())
    y_desc = to_numpy(desc(x, training=False))
    # Branch maps: one channel each. Ascending is [X, P1, P2, P3, P6].
    branch = {}
    for i, b in enumerate(asc.bins):
        branch[b] = to_numpy(asc.resizes[i]([asc.convs[i](asc.pools[i](x)), x]))[..., 0]
    np.testing.assert_allclose(y_asc[..., :8], x, atol=1e-6)
    for pos, b in enumerate((1, 2, 3, 6)):
        np.testing.assert_allclose(y_asc[..., 8 + pos], branch[b], atol=1e-5)
    for pos, b in enumerate((6, 3, 2, 1)):
        np.testing.assert_allclose(y_desc[..., 8 + pos], branch[b], atol=1e-5)
    # The bin-1 branch is constant over space.
    assert np.ptp(branch[1]) < 1e-5


def test_input_last_and_batch_norm_options():
    # segmentation_models.pytorch's layout: [P1, P2, P3, P6, X], no BN in the bin-1 branch.
    x = random_array((1, 9, 11, 8))
    first = PyramidPoolingModule(bins=(1, 2, 3, 6), filters=1, global_bn=False)
    last = PyramidPoolingModule(
        bins=(1, 2, 3, 6), filters=1, global_bn=False, input_position="last"
    )
    y_first = to_numpy(first(x, training=False))
    last(x)
    last.set_weights(first.get_weights())
    y_last = to_numpy(last(x, training=False))
    np.testing.assert_allclose(y_last[..., :4], y_first[..., 8:], atol=1e-6)
    np.testing.assert_allclose(y_last[..., 4:], x, atol=1e-6)
    conv1 = first.convs[0]
    assert conv1.bn is None and conv1.conv.use_bias
    assert all(c.bn is not None and not c.conv.use_bias for c in first.convs[1:])
    plain = PyramidPoolingModule(bins=(1, 3), filters=2, use_bn=False)
    plain.build((1, 9, 11, 8))
    assert all(c.bn is None and c.conv.use_bias for c in plain.convs)


def test_smp_options_round_trip_through_the_config():
    run_layer_test(
        PyramidPoolingModule,
        {"bins": [1, 2], "filters": 2, "global_bn": False, "input_position": "last"},
        (2, 9, 8, 5),
        (2, 9, 8, 9),
        train=False,
        mixed_precision=False,
    )
    config = PyramidPoolingModule(use_bn=False, input_position="last").get_config()
    assert (config["use_bn"], config["global_bn"], config["input_position"]) == (
        False,
        True,
        "last",
    )


def test_default_filters_and_bn_settings():
    layer = PyramidPoolingModule(bn_momentum=0.99, bn_epsilon=1e-3)
    assert layer.compute_output_shape((None, None, None, 2048)) == (None, None, None, 4096)
    layer.build((1, 6, 6, 16))
    assert [c.filters for c in layer.convs] == [4, 4, 4, 4]
    assert [c.name for c in layer.convs] == ["conv1", "conv2", "conv3", "conv6"]
    assert all(c.bn.momentum == pytest.approx(0.99) for c in layer.convs)
    assert all(c.bn.epsilon == pytest.approx(1e-3) for c in layer.convs)


@pytest.mark.channels_first_conv
def test_channels_first():
    x = random_array((1, 9, 7, 4))
    last = PyramidPoolingModule(bins=(1, 3), filters=2)
    first = PyramidPoolingModule(bins=(1, 3), filters=2, data_format="channels_first")
    y_last = to_numpy(last(x))
    xf = np.transpose(x, (0, 3, 1, 2))
    first(xf)
    first.set_weights(last.get_weights())
    y_first = to_numpy(first(xf))
    np.testing.assert_allclose(np.transpose(y_first, (0, 2, 3, 1)), y_last, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"bins": ()}, ValueError, "at least one bin"),
        ({"bins": (1, 0)}, ValueError, "bins"),
        ({"bins": (2, 2)}, ValueError, "distinct"),
        ({"bins": 6}, TypeError, "bins"),
        ({"filters": 0}, ValueError, "filters"),
        ({"concat_order": "reversed"}, ValueError, "concat_order"),
        ({"input_position": "middle"}, ValueError, "Received: input_position='middle'"),
        ({"use_bn": "yes"}, ValueError, "Received: use_bn='yes'"),
        ({"global_bn": None}, ValueError, "Received: global_bn=None"),
        ({"data_format": "NCHW"}, ValueError, "data_format"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        PyramidPoolingModule(**kwargs)


def test_too_few_channels_for_default_filters():
    with pytest.raises(ValueError, match="pass `filters` explicitly"):
        PyramidPoolingModule().compute_output_shape((1, 8, 8, 3))
