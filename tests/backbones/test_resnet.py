"""Tests for kseg.backbones.resnet: stride/channel contract, dilation, weight loading."""

import math
import os

import keras
import numpy as np
import pytest

import kseg
from kseg.backbones import ResNet, ResNet50, ResNet101, feature_info
from kseg.backbones._weights import _reference
from kseg.backbones.resnet import _stage_plan
from tests.helpers import random_array, to_numpy

# The contract, written out independently of the implementation:
# key -> (keras.applications layer, channels, {output_stride: true stride}).
CONTRACT = {
    "stem": ("conv1_relu", 64, {32: 2, 16: 2, 8: 2}),
    "stage1": ("conv2_block3_out", 256, {32: 4, 16: 4, 8: 4}),
    "stage2": ("conv3_block4_out", 512, {32: 8, 16: 8, 8: 8}),
    "stage3": ("conv4_block6_out", 1024, {32: 16, 16: 16, 8: 8}),
    "stage4": ("conv5_block3_out", 2048, {32: 32, 16: 16, 8: 8}),
}


def _randomize(model, seed=0):
    """Gives every weight (BN moving statistics included) non-trivial values."""
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
        elif layer.weights:
            layer.set_weights(
                [rng.normal(0.0, 0.05, tuple(w.shape)).astype("float32") for w in layer.weights]
            )


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory):
    """keras.applications ResNet-50 (no top) with random weights, saved to a file."""
    reference = keras.applications.ResNet50(weights=None, include_top=False)
    _randomize(reference)
    path = str(tmp_path_factory.mktemp("resnet") / "resnet50_notop.weights.h5")
    reference.save_weights(path)
    return reference, path


@pytest.fixture(scope="module")
def resnet50s(reference_weights):
    """One ResNet-50 per output stride, built once for the module; OS32 and OS8
    load the reference weights file."""
    _, path = reference_weights
    return {
        32: ResNet50(output_stride=32, weights=path),
        16: ResNet50(output_stride=16),
        8: ResNet50(output_stride=8, weights=path),
    }


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("size", [(64, 64), (65, 47), (97, 131)])
def test_stride_channel_contract(resnet50s, output_stride, size):
    model = resnet50s[output_stride]
    info = feature_info(model)
    assert info.output_stride == output_stride
    assert info.keys() == tuple(CONTRACT)
    spec = model.compute_output_spec(keras.KerasTensor((1, *size, 3)))
    assert sorted(spec) == sorted(CONTRACT)
    for key, (layer, channels, strides) in CONTRACT.items():
        stride = strides[output_stride]
        assert info[key].layer == layer
        assert info.channels(key) == channels
        assert info.stride(key) == stride
        expected = (1, math.ceil(size[0] / stride), math.ceil(size[1] / stride), channels)
        assert tuple(spec[key].shape) == expected, key


def test_roles(resnet50s):
    info = feature_info(resnet50s[16])
    assert (info.low_level, info.aux, info.high_level) == ("stage1", "stage3", "stage4")
    assert info.stride(info.low_level) == 4
    assert info.channels(info.aux) == 1024
    assert info.channels(info.high_level) == 2048
    assert info.family == "resnet" and info.preprocessing == "caffe"


def _rates(model, stage, n):
    return tuple(
        model.get_layer(f"conv{stage}_block{i}_2_conv").dilation_rate[0] for i in range(1, n + 1)
    )


def _first_strides(model, stage):
    return (
        model.get_layer(f"conv{stage}_block1_1_conv").strides[0],
        model.get_layer(f"conv{stage}_block1_0_conv").strides[0],
    )


@pytest.mark.parametrize(
    "output_stride, rates3, rates4, strides",
    [
        (32, (1,) * 6, (1, 1, 1), (1, 2, 2, 2)),
        (16, (1,) * 6, (2, 2, 2), (1, 2, 2, 1)),
        (8, (2,) * 6, (4, 4, 4), (1, 2, 1, 1)),
    ],
)
def test_dilation_applied(resnet50s, output_stride, rates3, rates4, strides):
    model = resnet50s[output_stride]
    assert _rates(model, 4, 6) == rates3
    assert _rates(model, 5, 3) == rates4
    assert tuple(_first_strides(model, s)[0] for s in (2, 3, 4, 5)) == strides
    assert tuple(_first_strides(model, s)[1] for s in (2, 3, 4, 5)) == strides
    # The 3x3 convs never stride; "same" with stride 1 pads symmetrically.
    assert all(layer.strides == (1, 1) for layer in model.layers if layer.name.endswith("_2_conv"))
    assert feature_info(model)["stage4"].dilation == rates4


@pytest.mark.parametrize(
    "output_stride, multi_grid, mode, rates3, rates4",
    [
        (16, (1, 2, 4), "full", (1,) * 6, (2, 4, 8)),
        (8, (1, 2, 4), "full", (2,) * 6, (4, 8, 16)),
        (32, (1, 2, 4), "full", (1,) * 6, (1, 2, 4)),
        (8, (1, 2, 1), "full", (2,) * 6, (4, 8, 4)),
        (8, None, "contract", (1,) + (2,) * 5, (2, 4, 4)),
        (16, None, "contract", (1,) * 6, (1, 2, 2)),
        (32, None, "contract", (1,) * 6, (1, 1, 1)),
        (8, (1, 2, 4), "contract", (1,) + (2,) * 5, (4, 8, 16)),
    ],
)
def test_multi_grid_and_first_block_rates(output_stride, multi_grid, mode, rates3, rates4):
    plan = _stage_plan((3, 4, 6, 3), output_stride, multi_grid, mode)
    assert plan[2][1] == rates3
    assert plan[3][1] == rates4
    assert [p[0] for p in plan] == [
        1,
        2,
        2 if output_stride > 8 else 1,
        2 if output_stride > 16 else 1,
    ]


def test_multi_grid_and_contract_reach_the_layers():
    # A shallow, narrow trunk from the same builder keeps the build fast.
    model = ResNet(
        (1, 1, 2, 3), output_stride=8, multi_grid=(1, 2, 4), dilate_first_block="contract", width=4
    )
    assert _rates(model, 4, 2) == (1, 2)
    assert _rates(model, 5, 3) == (4, 8, 16)
    assert feature_info(model)["stage4"].dilation == (4, 8, 16)
    assert feature_info(model)["stage3"].dilation == (1, 2)


def test_load_weights_from_file_matches_keras_applications(reference_weights, resnet50s):
    reference, _ = reference_weights
    names = [spec[0] for spec in CONTRACT.values()]
    probe = keras.Model(reference.input, [reference.get_layer(n).output for n in names])
    x = random_array((1, 65, 47, 3), seed=1, scale=50.0)
    expected = to_numpy(probe(x, training=False))
    got = to_numpy(resnet50s[32](x, training=False))
    for key, want in zip(CONTRACT, expected):
        scale = np.abs(want).max()
        assert scale > 0
        np.testing.assert_allclose(got[key], want, rtol=1e-4, atol=1e-4 * scale, err_msg=key)


def test_load_weights_into_dilated(reference_weights, resnet50s):
    reference, _ = reference_weights
    model = resnet50s[8]
    copied = 0
    for layer in reference.layers:
        if not layer.weights:
            continue
        for want, got in zip(layer.weights, model.get_layer(layer.name).weights):
            np.testing.assert_array_equal(to_numpy(got), to_numpy(want))
            copied += 1
    assert copied == len(model.weights) == len(reference.weights)
    features = model(random_array((1, 33, 21, 3), scale=50.0), training=False)
    shapes = {k: tuple(v.shape) for k, v in features.items()}
    assert shapes == {
        "stem": (1, 17, 11, 64),
        "stage1": (1, 9, 6, 256),
        "stage2": (1, 5, 3, 512),
        "stage3": (1, 5, 3, 1024),
        "stage4": (1, 5, 3, 2048),
    }
    assert all(np.isfinite(to_numpy(v)).all() for v in features.values())


def test_parameter_count_resnet50(reference_weights, resnet50s):
    reference, _ = reference_weights
    assert resnet50s[8].count_params() == reference.count_params()
    assert len(resnet50s[8].layers) == len(reference.layers)


@pytest.mark.large
def test_parameter_count_resnet101():
    reference = keras.applications.ResNet101(weights=None, include_top=False)
    model = ResNet101(output_stride=8)
    assert model.count_params() == reference.count_params()
    assert feature_info(model)["stage3"].layer == "conv4_block23_out"


def test_imagenet_download_failure_says_how_to_pass_a_file():
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure")

    # The shared loader that ResNet and VGG16 call (the VGG16 test goes
    # through the public builder).
    with pytest.raises(OSError, match="pass its path: `weights='/path/to/resnet50_weights"):
        _reference(offline, "imagenet", "resnet50")


def test_save_and_reload(tmp_path):
    model = ResNet((1, 1, 1, 1), output_stride=8, width=4)
    x = random_array((1, 33, 21, 3))
    path = os.path.join(tmp_path, "backbone.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    want, got = to_numpy(model(x)), to_numpy(reloaded(x))
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5)


def test_feature_info_rejects_other_models():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="Expected a backbone built by `kseg.backbones`"):
        feature_info(model)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"output_stride": 12}, ValueError, r"output_stride=12"),
        ({"multi_grid": (1, 2)}, ValueError, r"multi_grid=\(1, 2\)"),
        ({"multi_grid": (1, 0, 2)}, ValueError, r"multi_grid=0"),
        ({"dilate_first_block": "half"}, ValueError, r"dilate_first_block='half'"),
        ({"weights": "/no/such/file.h5"}, ValueError, r"weights='/no/such/file.h5'"),
        ({"weights": 3}, TypeError, r"weights=3"),
        ({"bn_momentum": 2.0}, ValueError, r"bn_momentum=2.0"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ResNet50(**kwargs)


def test_bad_blocks_and_weights_for_unknown_depth(tmp_path):
    with pytest.raises(ValueError, match=r"blocks=\(3, 4\)"):
        ResNet((3, 4))
    path = tmp_path / "w.weights.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(ValueError, match=r"blocks=\(1, 1, 1, 1\)"):
        ResNet((1, 1, 1, 1), weights=str(path))
    with pytest.raises(ValueError, match=r"width=32"):
        ResNet((3, 4, 6, 3), weights=str(path), width=32)
    with pytest.raises(ValueError, match=r"width=0"):
        ResNet((1, 1, 1, 1), width=0)


def test_public_names():
    assert kseg.backbones.ResNet50 is ResNet50
    assert kseg.backbones.ResNet101 is ResNet101
    assert "output_stride" in ResNet50.__doc__ and "| `stage4`" in ResNet50.__doc__


@pytest.mark.large
def test_load_weights_file_with_classifier_top(tmp_path):
    reference = keras.applications.ResNet50(weights=None, include_top=True)
    path = str(tmp_path / "resnet50_top.weights.h5")
    reference.save_weights(path)
    model = ResNet50(weights=path)
    for name in ("conv1_conv", "conv4_block6_2_bn", "conv5_block3_3_conv"):
        for want, got in zip(reference.get_layer(name).weights, model.get_layer(name).weights):
            np.testing.assert_array_equal(to_numpy(got), to_numpy(want))


@pytest.mark.channels_first_conv
def test_channels_first_matches_channels_last():
    last = ResNet((1, 1, 1, 1), output_stride=8, width=4)
    first = ResNet((1, 1, 1, 1), output_stride=8, width=4, data_format="channels_first")
    first.set_weights(last.get_weights())
    x = random_array((1, 37, 29, 3), scale=20.0)
    want = to_numpy(last(x))
    got = to_numpy(first(np.transpose(x, (0, 3, 1, 2))))
    for key in want:
        np.testing.assert_allclose(
            np.transpose(got[key], (0, 2, 3, 1)), want[key], rtol=1e-5, atol=1e-4, err_msg=key
        )
