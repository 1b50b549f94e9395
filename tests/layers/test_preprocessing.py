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
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        ImageNormalization("caffe")(np.zeros((1, 4, 4, 4), "float32"))
