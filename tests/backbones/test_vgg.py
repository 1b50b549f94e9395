"""Tests for kseg.backbones.vgg: variants against a torch reference, weight loading."""

import math

import keras
import numpy as np
import pytest

import kseg
from kseg.backbones import VGG16, feature_info
from tests.helpers import random_array, to_numpy

WIDTHS = (64, 128, 256, 512, 512)
DEPTHS = (2, 2, 3, 3, 3)

# The reference layouts, written out from SPEC 4.5, 4.6 and 4.8 in torch terms:
# conv1_1 padding, per-block dilation, per-block pool (kernel, stride, padding,
# ceil_mode), BatchNorm after each conv, and the true stride of each pool.
LAYOUTS = {
    "classic": dict(pad0=1, dil=(1,) * 5, pools=[(2, 2, 0, False)] * 5, bn=False),
    "fcn": dict(pad0=100, dil=(1,) * 5, pools=[(2, 2, 0, True)] * 5, bn=False),
    "deeplab_v1": dict(
        pad0=1, dil=(1, 1, 1, 1, 2), pools=[(3, 2, 1, True)] * 3 + [(3, 1, 1, True)] * 2, bn=False
    ),
    "bn": dict(pad0=1, dil=(1,) * 5, pools=[(2, 2, 0, False)] * 5, bn=True),
}
STRIDES = {
    "classic": (2, 4, 8, 16, 32),
    "fcn": (2, 4, 8, 16, 32),
    "deeplab_v1": (2, 4, 8, 8, 8),
    "bn": (2, 4, 8, 16, 32),
}


@pytest.fixture(scope="module")
def variants():
    """One VGG16 per variant, built once for the module."""
    return {variant: VGG16(variant=variant) for variant in LAYOUTS}


def _randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c).astype("float32"),
                    rng.normal(0.0, 0.1, c).astype("float32"),
                    rng.normal(0.0, 0.1, c).astype("float32"),
                    rng.uniform(0.5, 1.5, c).astype("float32"),
                ]
            )


def _torch_vgg(model, x, layout):
    """The VGG-16 variant in torch functional ops, reading the Keras weights."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    def weights(name):
        return [torch.from_numpy(to_numpy(w)) for w in model.get_layer(name).weights]

    h = torch.from_numpy(x).permute(0, 3, 1, 2)
    out = {}
    for b in range(5):
        for c in range(DEPTHS[b]):
            name = f"block{b + 1}_conv{c + 1}"
            kernel, bias = weights(name)
            pad = layout["pad0"] if (b, c) == (0, 0) else layout["dil"][b]
            h = F.conv2d(
                h, kernel.permute(3, 2, 0, 1), bias, padding=pad, dilation=layout["dil"][b]
            )
            if layout["bn"]:
                gamma, beta, mean, var = weights(f"{name}_bn")
                h = F.batch_norm(h, mean, var, gamma, beta, training=False, eps=1e-5)
            h = F.relu(h)
        out[f"block{b + 1}"] = h
        k, s, p, ceil = layout["pools"][b]
        h = F.max_pool2d(h, k, s, p, ceil_mode=ceil)
        out[f"pool{b + 1}"] = h
    return {k: v.permute(0, 2, 3, 1).numpy() for k, v in out.items()}


@pytest.mark.parametrize(
    "variant, size",
    [("classic", (37, 35)), ("fcn", (3, 2)), ("deeplab_v1", (19, 14)), ("bn", (34, 33))],
)
def test_variant_matches_torch_reference(variants, variant, size):
    model = variants[variant]
    _randomize_bn(model)
    x = random_array((1, *size, 3), seed=2, scale=20.0)
    got = to_numpy(model(x, training=False))
    want = _torch_vgg(model, x, LAYOUTS[variant])
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].shape == want[key].shape, key
        scale = max(np.abs(want[key]).max(), 1e-6)
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4 * scale, err_msg=key)


def _pool_sizes(variant, n):
    """Pool output sizes by the torch/Caffe output-size formula (SPEC 4.5, 4.6)."""
    layout = LAYOUTS[variant]
    n = n + 2 * layout["pad0"] - 2  # conv1_1
    sizes = []
    for k, s, p, ceil in layout["pools"]:
        rounding = math.ceil if ceil else math.floor
        out = rounding((n + 2 * p - k) / s) + 1
        if ceil and (out - 1) * s >= n + p:  # the last window must start inside
            out -= 1
        sizes.append(out)
        n = out
    return sizes


@pytest.mark.parametrize("variant", ["classic", "fcn", "deeplab_v1", "bn"])
def test_stride_channel_contract(variants, variant):
    model = variants[variant]
    info = feature_info(model)
    assert info.family == "vgg16" and info.variant == variant
    assert info.high_level == "pool5" and info.low_level is None and info.aux is None
    assert info.output_stride == STRIDES[variant][-1]
    for size in [(64, 64), (65, 47), (321, 97)]:
        spec = model.compute_output_spec(keras.KerasTensor((1, *size, 3)))
        rows, cols = _pool_sizes(variant, size[0]), _pool_sizes(variant, size[1])
        for b in range(5):
            key = f"pool{b + 1}"
            assert info.channels(key) == WIDTHS[b]
            assert info.stride(key) == STRIDES[variant][b]
            assert tuple(spec[key].shape) == (1, rows[b], cols[b], WIDTHS[b]), (key, size)
            block = f"block{b + 1}"
            assert info.stride(block) == ((1,) + STRIDES[variant])[b]
            pad0 = LAYOUTS[variant]["pad0"]
            first = (size[0] + 2 * pad0 - 2, size[1] + 2 * pad0 - 2)
            before = (rows[b - 1], cols[b - 1]) if b else first
            assert tuple(spec[block].shape) == (1, *before, WIDTHS[b])
    if variant == "deeplab_v1":
        assert _pool_sizes(variant, 321) == [161, 81, 41, 41, 41]
        assert feature_info(model)["block5"].dilation == (2, 2, 2)
        assert model.get_layer("block5_conv1").dilation_rate == (2, 2)
    if variant == "fcn":
        spec = model.compute_output_spec(keras.KerasTensor((1, 64, 64, 3)))
        assert tuple(spec["block1"].shape) == (1, 262, 262, 64)


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory):
    """keras.applications VGG16 (no top) with random weights, saved to a file."""
    reference = keras.applications.VGG16(weights=None, include_top=False)
    rng = np.random.default_rng(0)
    for layer in reference.layers:
        if layer.weights:
            layer.set_weights(
                [rng.normal(0.0, 0.05, tuple(w.shape)).astype("float32") for w in layer.weights]
            )
    path = str(tmp_path_factory.mktemp("vgg") / "vgg16_notop.weights.h5")
    reference.save_weights(path)
    return reference, path


def test_load_weights_from_file_matches_keras_applications(reference_weights):
    reference, path = reference_weights
    names = [f"block{b}_conv{d}" for b, d in zip(range(1, 6), DEPTHS)]
    names += [f"block{b}_pool" for b in range(1, 6)]
    probe = keras.Model(reference.input, [reference.get_layer(n).output for n in names])
    x = random_array((1, 35, 33, 3), seed=1, scale=50.0)
    expected = dict(
        zip(
            [f"block{b}" for b in range(1, 6)] + [f"pool{b}" for b in range(1, 6)],
            to_numpy(probe(x)),
        )
    )
    model = VGG16(weights=path)
    got = to_numpy(model(x))
    for key, want in expected.items():
        scale = np.abs(want).max()
        assert scale > 0
        np.testing.assert_allclose(got[key], want, rtol=1e-4, atol=1e-4 * scale, err_msg=key)
    assert model.count_params() == reference.count_params()


def test_load_weights_into_bn_variant(reference_weights):
    reference, path = reference_weights
    model = VGG16(variant="bn", weights=path)
    for layer in reference.layers:
        if not layer.weights:
            continue
        for want, got in zip(layer.weights, model.get_layer(layer.name).weights):
            np.testing.assert_array_equal(to_numpy(got), to_numpy(want))
    # BatchNorm has no keras.applications counterpart and keeps its init.
    bn = model.get_layer("block3_conv2_bn")
    np.testing.assert_array_equal(to_numpy(bn.gamma), np.ones(256))
    np.testing.assert_array_equal(to_numpy(bn.moving_variance), np.ones(256))
    assert bn.momentum == 0.9 and bn.epsilon == 1e-5


def test_imagenet_download_failure_says_how_to_pass_a_file(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure")

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    with pytest.raises(OSError, match="weights='/path/to/vgg16_weights_tf_dim_ordering"):
        VGG16(weights="imagenet")


def test_bad_weights_file(tmp_path):
    path = tmp_path / "broken.weights.h5"
    path.write_bytes(b"not a weights file")
    with pytest.raises(ValueError, match="this file is not HDF5"):
        VGG16(weights=str(path))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"variant": "vgg19"}, ValueError, r"variant='vgg19'"),
        ({"weights": "/no/such/vgg.h5"}, ValueError, r"weights='/no/such/vgg.h5'"),
        ({"weights": 1.5}, TypeError, r"weights=1.5"),
        ({"data_format": "NHWC"}, ValueError, r"data_format='NHWC'"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        VGG16(**kwargs)


def test_public_names():
    assert kseg.backbones.VGG16 is VGG16
    assert "| pool5" in VGG16.__doc__


@pytest.mark.channels_first_conv
def test_channels_first_matches_channels_last(variants):
    # deeplab_v1 has the asymmetric ceil-mode padding, the most layout-sensitive part.
    last = variants["deeplab_v1"]
    first = VGG16(variant="deeplab_v1", data_format="channels_first")
    assert first.input_shape == (None, 3, None, None)
    first.set_weights(last.get_weights())
    x = random_array((1, 19, 14, 3), seed=3, scale=20.0)
    want = to_numpy(last(x))
    got = to_numpy(first(np.transpose(x, (0, 3, 1, 2))))
    for key in want:
        np.testing.assert_allclose(
            np.transpose(got[key], (0, 2, 3, 1)), want[key], rtol=1e-5, atol=1e-4, err_msg=key
        )
