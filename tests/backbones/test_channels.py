"""Pretrained RGB backbones for 1, 2, 4+ channels: the first convolution adapted (smp's rule)."""

import keras
import numpy as np
import pytest

import kseg
from kseg.backbones import BackboneInfo, FeatureSpec, with_input_channels
from kseg.backbones._channels import adapt_kernel
from kseg.models._base import normalization_layer
from tests.helpers import BACKEND, infer, to_numpy

# A 1x1 kernel from 3 input channels (R, G, B) to 2 outputs.
KERNEL = np.array([[[[1.0, 10.0], [2.0, 20.0], [4.0, 40.0]]]])


def test_one_channel_sums_the_rgb_slices():
    np.testing.assert_array_equal(adapt_kernel(KERNEL, 1), [[[[7.0, 70.0]]]])


def test_more_channels_repeat_the_slices_rescaled_by_three_over_the_count():
    # Four channels read R, G, B, R, each scaled by 3 / 4; two read R, G scaled by 3 / 2.
    expected4 = np.array([[[[0.75, 7.5], [1.5, 15.0], [3.0, 30.0], [0.75, 7.5]]]])
    np.testing.assert_array_equal(adapt_kernel(KERNEL, 4), expected4)
    np.testing.assert_array_equal(adapt_kernel(KERNEL, 2), [[[[1.5, 15.0], [3.0, 30.0]]]])


@pytest.fixture(scope="module")
def resnet():
    model = kseg.backbones.ResNet((1, 1, 1, 1), width=4, input_shape=(None, None, 3))
    # BatchNorm statistics away from 0 / 1, so the comparison sees every layer.
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 1.5, c), rng.uniform(-0.1, 0.1, c),
                 rng.uniform(-0.1, 0.1, c), rng.uniform(0.5, 1.5, c)]
            )
    return model


def _image(channels, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (1, 33, 47, channels)).astype("float32")


def test_a_grey_image_gives_what_the_rgb_network_gives_for_it(resnet):
    grey = _image(1)
    one = with_input_channels(resnet, 1)
    assert one.input.shape[-1] == 1 and kseg.backbones.feature_info(one) is resnet.feature_info
    got, want = infer(one, grey), infer(resnet, np.repeat(grey, 3, axis=-1))
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4 * np.abs(want[key]).max())


def test_six_channels_of_an_rgb_image_twice_give_the_rgb_response(resnet):
    rgb = _image(3)
    six = with_input_channels(resnet, 6)
    got, want = infer(six, np.concatenate([rgb, rgb], axis=-1)), infer(resnet, rgb)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4 * np.abs(want[key]).max())


def _preprocessing_backbone():
    """A backbone holding keras.applications-style preprocessing and a nested stem."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling([0.5, 0.25, 0.125], name="scale")(inputs)
    x = keras.layers.Normalization(mean=[1.0, 2.0, 6.0], variance=[4.0, 4.0, 4.0], name="fixed")(x)
    learned = keras.layers.Normalization(name="learned")
    x = learned(x)
    stem = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(2, 1)], name="stem")
    out = stem(x)
    model = keras.Model(inputs, {"level1": out})
    learned.set_weights(
        [np.array([3.0, 3.0, 3.0]), np.array([9.0, 9.0, 9.0]), np.array(0)][: len(learned.weights)]
    )
    model.feature_info = BackboneInfo(
        family="test", variant="test", output_stride=1,
        features=(FeatureSpec("level1", "stem", 2, 1),),
        low_level=None, aux=None, high_level="level1", preprocessing=None,
    )
    return model


def test_preprocessing_held_inside_and_a_nested_stem_are_adapted():
    model = _preprocessing_backbone()
    one, four = with_input_channels(model, 1), with_input_channels(model, 4)
    # The per-channel constants: averaged for one channel, repeated (R, G, B, R) for four.
    assert one.get_layer("fixed").get_config()["mean"] == [3.0]
    assert four.get_layer("fixed").get_config()["mean"] == [1.0, 2.0, 6.0, 1.0]
    assert four.get_layer("scale").get_config()["scale"] == [0.5, 0.25, 0.125, 0.5]
    assert tuple(four.get_layer("stem").layers[0].kernel.shape) == (1, 1, 4, 2)
    # A grey image: the RGB model's response to it, where the constants agree per channel.
    uniform = _preprocessing_backbone()
    config = uniform.get_config()
    for entry in config["layers"]:
        if entry["name"] == "scale":
            entry["config"]["scale"] = [0.5, 0.5, 0.5]
        if entry["name"] == "fixed":
            entry["config"]["mean"] = [2.0, 2.0, 2.0]
    rgb = keras.Model.from_config(config)
    rgb.set_weights(uniform.get_weights())
    rgb.feature_info = uniform.feature_info
    grey = _image(1) * 255
    got = to_numpy(with_input_channels(rgb, 1)(grey)["level1"])
    want = to_numpy(rgb(np.repeat(grey, 3, axis=-1))["level1"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_adapting_needs_an_rgb_backbone_and_a_channel_count(resnet):
    with pytest.raises(ValueError, match="channels=0"):
        with_input_channels(resnet, 0)
    grey = kseg.backbones.ResNet((1, 1, 1, 1), width=4, input_shape=(None, None, 1))
    with pytest.raises(ValueError, match="3-channel"):
        with_input_channels(grey, 2)
    assert with_input_channels(resnet, 3) is resnet


def test_auto_normalization_follows_the_adapted_channels():
    # caffe weights read B, G, R: four channels take the BGR means in turn, std 1.
    layer = normalization_layer("auto", (None, None, 4), "caffe", pretrained=True)
    np.testing.assert_allclose(layer.mean, [103.939, 116.779, 123.68, 103.939])
    np.testing.assert_allclose(layer.std, [1.0] * 4)
    torch = normalization_layer("auto", (None, None, 2), "torch", pretrained=True)
    np.testing.assert_allclose(torch.mean, [123.675, 116.28])
    np.testing.assert_allclose(torch.std, [58.395, 57.12])
    assert normalization_layer("auto", (None, None, 1), "caffe", pretrained=True).mode == "caffe"
    assert normalization_layer("auto", (None, None, 5), "tf", pretrained=True).mode == "tf"
    # From scratch there are no statistics to follow.
    assert normalization_layer("auto", (None, None, 4), "caffe").mode == "unit"


@pytest.fixture(scope="module")
def mobilenetv2_file(tmp_path_factory):
    """A keras.applications MobileNetV2 weights file (random weights: nothing downloads)."""
    source = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    path = str(tmp_path_factory.mktemp("weights") / "mobilenetv2.weights.h5")
    source.save_weights(path)
    return path


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="the builder's wiring does not depend on the backend; the adapted network's "
    "outputs are compared on every backend above",
)
def test_grey_deeplabv3plus_from_imagenet_style_weights_matches_the_rgb_model(mobilenetv2_file):
    """`backbone_weights` for one channel: the RGB model's logits for the grey image."""
    kwargs = dict(num_classes=3, backbone="mobilenetv2", backbone_weights=mobilenetv2_file)
    keras.utils.set_random_seed(1)
    rgb = kseg.models.DeepLabV3Plus(input_shape=(None, None, 3), **kwargs)
    grey = kseg.models.DeepLabV3Plus(input_shape=(None, None, 1), **kwargs)
    head = [layer.name for layer in rgb.layers if layer.name not in ("image", "mobilenetv2")]
    for name in head:  # the same head, so that only the encoder's input differs
        grey.get_layer(name).set_weights(rgb.get_layer(name).get_weights())
    assert grey.get_layer("normalize").mode == "tf"
    image = _image(1, seed=2) * 255
    got, want = infer(grey, image), infer(rgb, np.repeat(image, 3, axis=-1))
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    first = grey.get_layer("mobilenetv2").get_layer("Conv1")
    source = rgb.get_layer("mobilenetv2").get_layer("Conv1")
    np.testing.assert_allclose(
        to_numpy(first.kernel), to_numpy(source.kernel).sum(axis=2, keepdims=True), rtol=1e-6
    )


@pytest.mark.large
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the adapted graph does not depend on it")
@pytest.mark.parametrize("name", ["convnexttiny", "efficientnetb0", "efficientnetv2b0"])
def test_applications_with_preprocessing_inside_adapt(name):
    model = kseg.backbones.Application(name)
    for channels in (1, 4):
        adapted = with_input_channels(model, channels)
        out = adapted(_image(channels) * 255)
        assert all(np.all(np.isfinite(to_numpy(v))) for v in out.values())
