"""keras.applications encoders: layer names, true strides, channels, dilation, weights, inputs.

The stride tests build each encoder on a 97x131 input, where a feature taken
from the wrong stage (a wrong layer name) has a different size or channel
count, and compare with the tables in `families.py`, written out from the papers and
keras.applications (not read from the code under test). The built graph does
not depend on the backend, so those tests run in the TensorFlow session only;
the forward pass and the input normalisation run on every backend.
"""

import keras
import numpy as np
import pytest

import kseg
from kseg.backbones import applications
from tests.backbones.families import CHANNELS, FAMILIES, SMALLEST, family_of, rows
from tests.helpers import BACKEND, to_numpy

tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="the built graph does not depend on the backend"
)

H, W = 97, 131


def _expected(name, output_stride):
    """`{key: (rows, cols, channels)}` of the encoder at `output_stride`."""
    family = family_of(name)
    out = {}
    for level, channels in enumerate(CHANNELS[name], start=1):
        if channels is None:
            continue
        stride = min(2**level, output_stride)
        out[f"level{level}"] = (rows(family, H, stride), rows(family, W, stride), channels)
    return out


# The families whose dilation the default suite checks: one per way the rewrite
# works (explicit padding before a strided depthwise conv; padding before every
# 3x3 conv and 1x1/2 pools; strided "same" max-pools; downsampling convs inside
# nested Sequentials). EfficientNet, EfficientNetV2 and MobileNetV3 dilate like
# MobileNetV2; with the larger members they run with `-m large`.
DILATED_BY_DEFAULT = ("mobilenetv2", "resnet50v2", "xception", "convnexttiny")


def _names(large):
    smallest = set(SMALLEST.values())
    if not large:
        return sorted(smallest)
    return [name for name in CHANNELS if name not in DILATED_BY_DEFAULT]


def _check(model, name, output_stride):
    expected = _expected(name, output_stride)
    got = {key: tuple(tensor.shape[1:]) for key, tensor in model.output.items()}
    assert got == expected
    info = kseg.backbones.feature_info(model)
    assert info.family == family_of(name) and info.variant == name
    assert info.output_stride == output_stride
    assert info.keys() == tuple(expected)
    for key in expected:
        nominal = 2 ** int(key[len("level") :])
        assert info.stride(key) == min(nominal, output_stride)
        assert info.channels(key) == expected[key][2]
        assert info[key].dilation == (max(nominal // output_stride, 1),)
    # Roles: stride 4, stride 16 and the deepest feature.
    assert (info.low_level, info.aux, info.high_level) == ("level2", "level4", "level5")
    assert info.preprocessing == FAMILIES[family_of(name)][1]


def _assert_same_weights(model, reference):
    """Every weight of `model` equals the reference's, in the same order."""
    assert len(model.weights) == len(reference.weights)
    for weight, ref in zip(model.weights, reference.weights):
        np.testing.assert_array_equal(to_numpy(weight), to_numpy(ref), err_msg=weight.path)


def _features_and_dilation(name, dilate=True):
    family = family_of(name)
    strides = FAMILIES[family][0]
    keras.utils.set_random_seed(0)
    reference = kseg.backbones.Application(name, input_shape=(H, W, 3))
    _check(reference, name, 32)
    # The smallest dilated output stride (8, or 16 for Xception) dilates every
    # stage that any output stride dilates.
    if strides[0] < 32 and dilate:
        keras.utils.set_random_seed(0)
        dilated = kseg.backbones.Application(
            name, input_shape=(H, W, 3), output_stride=strides[0]
        )
        _check(dilated, name, strides[0])
        _assert_same_weights(dilated, reference)
    for output_stride in sorted({8, 16} - set(strides)):
        with pytest.raises(ValueError, match=rf"{family} encoders .*output stride") as error:
            kseg.backbones.Application(name, output_stride=output_stride)
        assert str(strides) in str(error.value)


@tensorflow_only
@pytest.mark.parametrize("name", _names(large=False))
def test_features_strides_and_dilation(name):
    _features_and_dilation(name, dilate=name in DILATED_BY_DEFAULT)


@tensorflow_only
@pytest.mark.large
@pytest.mark.parametrize("name", _names(large=True))
def test_features_strides_and_dilation_large(name):
    _features_and_dilation(name)


def _depthwise_reference(x, kernel, rate):
    """NumPy depthwise 3x3 convolution, stride 1, dilation `rate`, zero padding `rate`."""
    k = kernel.shape[0]
    pad = rate * (k - 1) // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.zeros(x.shape[:3] + (kernel.shape[2] * kernel.shape[3],), "float64")
    for i in range(k):
        for j in range(k):
            window = padded[:, i * rate : i * rate + x.shape[1], j * rate : j * rate + x.shape[2]]
            out += window * kernel[i, j, :, 0]
    return out


def test_deeplabv3plus_mobilenetv2_forward():
    """DeepLabV3+ on MobileNetV2 at output stride 16, and its dilated convolution.

    The encoder's last depthwise conv runs at dilation 2; its output is
    recomputed in NumPy from its input and kernel. Block 13's formerly strided
    conv (explicit padding 1 before it) keeps the stride-16 size.
    """
    model = kseg.models.DeepLabV3Plus(num_classes=3, backbone="mobilenetv2", output_stride=16)
    image = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    logits = to_numpy(model(image, training=False))
    assert logits.shape == (2, 64, 64, 3)
    assert np.all(np.isfinite(logits))
    assert model.get_layer("normalize").mode == "tf"

    encoder = model.get_layer("mobilenetv2")
    info = kseg.backbones.feature_info(encoder)
    strides = {key: info.stride(key) for key in info.keys()}
    assert strides == {"level1": 2, "level2": 4, "level3": 8, "level4": 16, "level5": 16}
    assert info.output_stride == 16 and info["level5"].dilation == (2,)
    conv = encoder.get_layer("block_16_depthwise")
    assert tuple(conv.dilation_rate) == (2, 2) and tuple(conv.strides) == (1, 1)
    strided = encoder.get_layer("block_13_depthwise")
    assert tuple(strided.strides) == (1, 1) and tuple(strided.dilation_rate) == (1, 1)
    probe = keras.Model(encoder.input, [conv.input, conv.output, encoder.output["level5"]])
    x, y, level5 = (to_numpy(t) for t in probe(image / 127.5 - 1.0))
    assert x.shape[1:3] == (4, 4) and level5.shape[1:3] == (4, 4)
    expected = _depthwise_reference(x.astype("float64"), to_numpy(conv.kernel), 2)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_mobile_setting_keeps_the_1x1_and_image_pooling_branches():
    """MobileNetV2's DeepLab head without atrous branches (Sandler et al. 2018, 6.3)."""
    model = kseg.models.DeepLabV3Plus(num_classes=3, backbone="mobilenetv2", atrous_rates=())
    aspp = model.get_layer("aspp")
    assert aspp.atrous_rates == () and [b.name for b in aspp.branches] == ["aspp0"]
    # 1x1 conv (no bias) + BN (4 x 256) for the 1x1 and pooling branches on 320 channels,
    # and the projection of their 512 concatenated channels.
    expected = 2 * (320 * 256 + 4 * 256) + (512 * 256 + 4 * 256)
    assert aspp.count_params() == expected
    image = np.random.default_rng(0).uniform(0, 255, (1, 33, 47, 3)).astype("float32")
    logits = to_numpy(model(image, training=False))
    assert logits.shape == (1, 33, 47, 3) and np.all(np.isfinite(logits))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_preprocessing_matches_keras_applications(family):
    """The family's preset equals keras.applications' `preprocess_input`."""
    mode, module = FAMILIES[family][1:]
    image = np.random.default_rng(0).uniform(0, 255, (2, 5, 7, 3)).astype("float32")
    expected = np.asarray(module.preprocess_input(image.copy()))
    got = to_numpy(kseg.layers.ImageNormalization(mode)(image))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_tf_preset_takes_any_channel_count():
    image = np.full((1, 2, 2, 4), 255.0, "float32")
    out = to_numpy(kseg.layers.ImageNormalization("tf")(image))
    np.testing.assert_allclose(out, np.ones_like(out))


@tensorflow_only
@pytest.mark.parametrize(
    "name",
    [
        SMALLEST[family] if family == "mobilenetv3"
        else pytest.param(SMALLEST[family], marks=pytest.mark.large)
        for family in FAMILIES
    ],
)
def test_weights_from_a_local_file(tmp_path, name):
    """A weights file saved from keras.applications loads into the encoder.

    The smallest member of each family (MobileNetV3Small by default, the others
    with -m large); that dilation keeps every weight is
    `test_features_strides_and_dilation`'s.
    """
    class_name = applications.TABLE[name][0]
    source = getattr(keras.applications, class_name)(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    path = str(tmp_path / f"{name}.weights.h5")
    source.save_weights(path)
    by_path = {weight.path: to_numpy(weight) for weight in source.weights}
    model = kseg.backbones.Application(name, weights=path)
    # The encoder's layers are the first ones of the keras.applications model, in order
    # (unnamed layers get other automatic names in each build, so pair them by position).
    pairs = [(a, b) for a, b in zip(model.layers, source.layers) if a.weights]
    assert len(pairs) >= 16  # VGG19's convolutions; the others have more
    for layer, ref in pairs:
        assert type(layer) is type(ref) and len(layer.weights) == len(ref.weights)
        for weight, ref_weight in zip(layer.weights, ref.weights):
            np.testing.assert_array_equal(to_numpy(weight), by_path[ref_weight.path])
    with pytest.raises(ValueError, match="no such file"):
        kseg.backbones.Application(name, weights=str(tmp_path / "missing.h5"))


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="mobilenetv2.*convnexttiny") as error:
        kseg.backbones.Application("mobilenet")
    assert "Received: name='mobilenet'" in str(error.value)
    with pytest.raises(ValueError, match="'efficientnetb0'.*Received: backbone='effnet'"):
        kseg.models.DeepLabV3Plus(num_classes=3, backbone="effnet")


@tensorflow_only
def test_builder_refuses_a_backbone_without_a_role():
    import dataclasses

    backbone = kseg.backbones.Application("mobilenetv3small")
    backbone.feature_info = dataclasses.replace(backbone.feature_info, low_level=None)
    with pytest.raises(ValueError, match="'low_level'.*mobilenetv3 backbone 'mobilenetv3small'"):
        kseg.models.DeepLabV3Plus(num_classes=3, backbone=backbone)


def test_builders_refuse_output_strides_the_family_lacks():
    with pytest.raises(ValueError, match=r"densenet encoders .*\(32,\)"):
        kseg.models.PSPNet(num_classes=3, backbone="densenet121", output_stride=8)
    with pytest.raises(ValueError, match=r"xception encoders .*\(16, 32\)"):
        kseg.models.DeepLabV3(num_classes=3, backbone="xception", output_stride=8)


def test_every_name_is_tabled_here():
    assert set(applications.NAMES) == set(CHANNELS)


def test_channels_first_is_refused():
    keras.config.set_image_data_format("channels_first")
    with pytest.raises(ValueError, match="channels_last"):
        kseg.backbones.Application("mobilenetv2")
