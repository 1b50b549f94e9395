import numpy as np
import pytest

from kseg.layers.preprocessing import ImageNormalization
from tests.helpers import run_layer_test, to_numpy


def _image():
    return np.random.default_rng(0).uniform(0, 255, (2, 5, 6, 3)).astype("float32")


def test_caffe_mode_matches_keras_applications_convention():
    x = _image()
    # keras.applications "caffe" mode: RGB -> BGR, subtract BGR ImageNet means.
    expected = x[..., ::-1] - np.array([103.939, 116.779, 123.68], "float32")
    np.testing.assert_allclose(to_numpy(ImageNormalization("caffe")(x)), expected, atol=1e-4)


def test_torch_mode():
    x = _image()
    mean = np.array([0.485, 0.456, 0.406]) * 255
    std = np.array([0.229, 0.224, 0.225]) * 255
    np.testing.assert_allclose(
        to_numpy(ImageNormalization("torch")(x)), (x - mean) / std, rtol=1e-4, atol=1e-4
    )


def test_unit_and_identity_and_channels_first():
    x = _image()
    np.testing.assert_allclose(to_numpy(ImageNormalization("unit")(x)), x / 255, rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(ImageNormalization(None)(x)), x)
    xcf = np.transpose(x, (0, 3, 1, 2))
    out = to_numpy(ImageNormalization("caffe", data_format="channels_first")(xcf))
    ref = to_numpy(ImageNormalization("caffe")(x))
    np.testing.assert_allclose(out, np.transpose(ref, (0, 3, 1, 2)), atol=1e-4)


def test_layer_contract():
    run_layer_test(
        ImageNormalization, {"mode": "torch"}, input_data=_image(), expected_output_shape=(2, 5, 6, 3)
    )


def test_errors():
    with pytest.raises(ValueError, match="mode"):
        ImageNormalization("imagenet")
    with pytest.raises(ValueError, match="3 \\(RGB\\) or 1 \\(grey\\) channels"):
        ImageNormalization("caffe")(np.zeros((1, 4, 4, 4), "float32"))
    with pytest.raises(ValueError, match="mode='custom'"):
        ImageNormalization("torch", mean=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="std"):
        ImageNormalization(std=(1.0, 0.0))
    with pytest.raises(ValueError, match="same number of values"):
        ImageNormalization(mean=(1.0, 2.0), std=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="one value per channel"):
        ImageNormalization(mean=(1.0, 2.0, 3.0))(np.zeros((1, 4, 4, 4), "float32"))


def _channels(c, seed=1):
    return np.random.default_rng(seed).uniform(0, 255, (2, 5, 6, c)).astype("float32")


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_unit_mode_keeps_any_channel_count(channels):
    x = _channels(channels)
    out = to_numpy(ImageNormalization("unit")(x))
    assert out.shape == x.shape
    np.testing.assert_allclose(out, x / 255.0, rtol=1e-6)


def test_presets_on_grey_images_use_the_average_rgb_statistics():
    x = _channels(1)
    # "caffe": mean of (123.68, 116.779, 103.939); "torch": mean of the means and of the stds.
    caffe = x - 114.7993333
    torch = (x - 114.495) / 57.63
    np.testing.assert_allclose(to_numpy(ImageNormalization("caffe")(x)), caffe, atol=1e-4)
    np.testing.assert_allclose(to_numpy(ImageNormalization("torch")(x)), torch, rtol=1e-5, atol=1e-5)
    xcf = np.transpose(x, (0, 3, 1, 2))
    out = to_numpy(ImageNormalization("torch", data_format="channels_first")(xcf))
    np.testing.assert_allclose(out, np.transpose(torch, (0, 3, 1, 2)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["caffe", "torch"])
def test_presets_refuse_other_channel_counts_and_name_the_fix(mode):
    with pytest.raises(ValueError, match="mode='unit'.*`mean=` and `std=`"):
        ImageNormalization(mode)(_channels(4))


def test_custom_statistics_for_any_channel_count():
    x = _channels(4)
    mean = np.array([120.0, 110.0, 100.0, 90.0], "float32")
    std = np.array([60.0, 50.0, 40.0, 30.0], "float32")
    out = to_numpy(ImageNormalization(mean=mean, std=std)(x))
    np.testing.assert_allclose(out, (x - mean) / std, rtol=1e-5, atol=1e-5)
    # One value broadcasts to every channel; a missing std is 1.
    out = to_numpy(ImageNormalization("custom", mean=100.0)(x))
    np.testing.assert_allclose(out, x - 100.0, atol=1e-4)
    out = to_numpy(ImageNormalization(mean=mean, std=50.0)(x))
    np.testing.assert_allclose(out, (x - mean) / 50.0, rtol=1e-5, atol=1e-5)
    xcf = np.transpose(x, (0, 3, 1, 2))
    layer = ImageNormalization(mean=mean, std=std, data_format="channels_first")
    np.testing.assert_allclose(
        to_numpy(layer(xcf)), np.transpose((x - mean) / std, (0, 3, 1, 2)), rtol=1e-5, atol=1e-5
    )


def test_custom_layer_contract():
    run_layer_test(
        ImageNormalization,
        {"mean": [1.0, 2.0, 3.0, 4.0], "std": [2.0, 2.0, 4.0, 4.0]},
        input_data=_channels(4),
        expected_output_shape=(2, 5, 6, 4),
    )
