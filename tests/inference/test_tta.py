"""`kseg.inference.predict` and `predict_probabilities`: scales, flips, outputs, channels."""

import keras
import numpy as np
import pytest

from kseg import inference
from tests.helpers import random_array
from tests.inference.helpers import K, pointwise_model, pointwise_numpy, random_images, softmax


def test_flip_tta_equals_hand_average():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    outputs = keras.layers.Conv2D(K, 3, padding="same")(x)
    model = keras.Model(inputs, outputs)
    images = random_images((2, 9, 10, 3))
    plain = keras.ops.convert_to_numpy(model.predict(images, verbose=0))
    flipped = keras.ops.convert_to_numpy(model.predict(images[:, :, ::-1].copy(), verbose=0))
    expected = (softmax(plain) + softmax(flipped)[:, :, ::-1]) / 2
    got = inference.predict_probabilities(model, images, flip=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(softmax(plain), expected, atol=1e-3)  # the flip matters here
    # Flip with a sliding window of the whole size is the same.
    got = inference.predict_probabilities(model, images, flip=True, crop_size=(9, 10))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_multi_scale_equals_torch_reference():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    model = pointwise_model(seed=2)
    images = random_images((1, 8, 12, 3), seed=3)

    def resize(x, size):
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).double()
        y = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
        return y.numpy().transpose(0, 2, 3, 1)

    expected = 0
    for scale in (0.5, 1.0, 1.5):
        size = (round(8 * scale), round(12 * scale))
        logits = pointwise_numpy(model, resize(images, size))
        expected = expected + softmax(resize(logits, (8, 12)))
    expected = expected / 3
    got = inference.predict_probabilities(model, images, scales=(0.5, 1.0, 1.5))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_dict_output_and_predict():
    model = pointwise_model(dict_output=True)
    images = random_images((2, 5, 6, 3))
    expected = np.argmax(pointwise_numpy(model, images), -1)
    mask = inference.predict(model, images, crop_size=4, stride=3)
    assert mask.dtype == np.int32 and mask.shape == (2, 5, 6)
    np.testing.assert_array_equal(mask, expected)
    single = inference.predict_probabilities(model, images[0])
    assert single.shape == (5, 6, K)
    np.testing.assert_allclose(single.sum(-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="Received: output_key='logits'"):
        inference.predict(model, images, output_key="logits")


def test_lower_resolution_output_is_resized():
    def model(x):
        return np.ones((x.shape[0], x.shape[1] // 2, x.shape[2] // 2, 3), np.float32)

    probs = inference.predict_probabilities(model, random_images((1, 8, 8, 3)), crop_size=4)
    assert probs.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(probs, 1 / 3, rtol=1e-6)


@pytest.mark.channels_first_conv
def test_channels_first_model():
    inputs = keras.Input((3, None, None))
    outputs = keras.layers.Conv2D(K, 1, data_format="channels_first")(inputs)
    model = keras.Model(inputs, outputs)
    images = random_images((1, 6, 5, 3))
    direct = keras.ops.convert_to_numpy(model.predict(images.transpose(0, 3, 1, 2), verbose=0))
    got = inference.predict_probabilities(
        model, images, crop_size=4, stride=2, data_format="channels_first"
    )
    np.testing.assert_allclose(got, softmax(direct.transpose(0, 2, 3, 1)), rtol=1e-4, atol=1e-5)


def test_bad_arguments():
    model = pointwise_model()
    images = random_array((1, 4, 4, 3))
    with pytest.raises(ValueError, match="Received: images.shape=\\(1, 4, 4\\)"):
        inference.predict(model, images[..., 0])
    with pytest.raises(ValueError, match="Received: scales"):
        inference.predict(model, images, scales=(0.0,))
    with pytest.raises(ValueError, match="crop_size"):
        inference.predict(model, images, crop_size=0)
    with pytest.raises(ValueError, match="Received: data_format='nhwc'"):
        inference.predict(model, images, data_format="nhwc")


# Binary (one sigmoid logit) and any channel count.


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z.astype(np.float64)))


def _torch_resize(x, size):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).double()
    y = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return y.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_binary_probabilities_are_sigmoid_averaged_over_scales_and_flips(channels):
    model = pointwise_model(seed=7, channels=channels, num_outputs=1)
    images = random_images((2, 8, 12, channels), seed=8)
    expected = 0
    for scale in (0.5, 1.0):
        size = (round(8 * scale), round(12 * scale))
        for flipped in (False, True):
            x = images[:, :, ::-1] if flipped else images
            logits = pointwise_numpy(model, _torch_resize(x, size))
            probs = _sigmoid(_torch_resize(logits, (8, 12)))
            expected = expected + (probs[:, :, ::-1] if flipped else probs)
    expected = expected / 4
    got = inference.predict_probabilities(model, images, scales=(0.5, 1.0), flip=True)
    assert got.shape == (2, 8, 12, 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # Not a softmax over one channel (which is 1 everywhere).
    assert got.min() < 0.99
    mask = inference.predict(model, images, scales=(0.5, 1.0), flip=True)
    assert mask.dtype == np.int32 and mask.shape == (2, 8, 12)
    np.testing.assert_array_equal(mask, (expected[..., 0] > 0.5).astype(np.int32))
    assert set(np.unique(mask)) == {0, 1}


def test_binary_class_is_positive_logit_with_sliding_window():
    model = pointwise_model(seed=9, channels=1, num_outputs=1)
    images = random_images((1, 11, 9, 1), seed=10)
    logits = pointwise_numpy(model, images)
    probs = inference.predict_probabilities(model, images, crop_size=4, stride=3)
    np.testing.assert_allclose(probs, _sigmoid(logits), rtol=1e-4, atol=1e-6)
    mask = inference.predict(model, images, crop_size=4, stride=3)
    np.testing.assert_array_equal(mask, (logits[..., 0] > 0).astype(np.int32))
    # One image without its batch axis.
    single = inference.predict(model, images[0])
    np.testing.assert_array_equal(single, mask[0])


def test_binary_near_zero_logit_follows_its_sign():
    def model(x):
        out = np.full(x.shape[:3] + (1,), 1e-9, np.float32)
        out[:, 0, 0] = -1e-9
        return out

    mask = inference.predict(model, random_images((1, 3, 3, 3)))
    expected = np.ones((1, 3, 3), np.int32)
    expected[0, 0, 0] = 0
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_any_channel_count(channels):
    model = pointwise_model(seed=channels, channels=channels, num_outputs=K)
    images = random_images((2, 7, 9, channels), seed=channels)
    expected = softmax(pointwise_numpy(model, images))
    got = inference.predict_probabilities(model, images, crop_size=4, stride=3)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    single = inference.predict_probabilities(model, images[0], crop_size=5)
    np.testing.assert_allclose(single, expected[0], rtol=1e-4, atol=1e-5)


def test_channel_count_must_match_the_model():
    model = pointwise_model(channels=4, num_outputs=K)
    with pytest.raises(ValueError, match=r"with 4 channels.*Received: images.shape=\(5, 6, 3\)"):
        inference.predict(model, random_images((5, 6, 3)))
    with pytest.raises(ValueError, match=r"with 4 channels.*Received: images.shape=\(1, 5, 6, 1\)"):
        inference.sliding_window_logits(model, random_images((1, 5, 6, 1)), 4)
