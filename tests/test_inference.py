import keras
import numpy as np
import pytest

import kseg
from kseg import inference
from tests.helpers import random_array

K = 4


def _pointwise_model(seed=0, dict_output=False):
    """A 1x1-conv model: every output pixel depends only on its input pixel."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 64.0, offset=-2.0)(inputs)
    logits = keras.layers.Conv2D(K, 1, name="main_conv")(x)
    if dict_output:
        aux = keras.layers.Conv2D(K, 1, name="aux_conv")(x)
        return keras.Model(inputs, {"aux": aux, "main": logits})
    return keras.Model(inputs, logits)


def _pointwise_numpy(model, images):
    """NumPy logits of `_pointwise_model`."""
    conv = model.get_layer("main_conv")
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in conv.weights)
    x = images / 64.0 - 2.0
    return np.einsum("bhwc,ck->bhwk", x, kernel[0, 0]) + bias


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


@pytest.mark.parametrize(
    "shape,crop,stride",
    [
        ((2, 13, 19, 3), 8, 5),  # several overlapping windows, last ones moved back
        ((1, 16, 16, 3), 8, 8),  # exact tiling
        ((1, 6, 7, 3), 8, None),  # smaller than the crop: padded then cropped back
        ((1, 20, 11, 3), (9, 6), (4, 5)),
    ],
)
def test_sliding_window_equals_full_image(shape, crop, stride):
    model = _pointwise_model()
    images = _images(shape)
    got = inference.sliding_window_logits(model, images, crop, stride=stride, batch_size=3)
    np.testing.assert_allclose(got, _pointwise_numpy(model, images), rtol=1e-4, atol=1e-4)


def test_sliding_window_averages_overlaps():
    """A model whose logits are its window's position reveals the per-pixel window count."""

    class WindowId:
        def __init__(self):
            self.calls = []

        def __call__(self, x):
            n = x.shape[0]
            self.calls.append(n)
            out = np.zeros(x.shape[:3] + (1,), np.float32)
            for i in range(n):
                out[i] = x[i, 0, 0, 0]  # the window's top-left value
            return out

    images = np.zeros((1, 6, 6, 3), np.float32)
    images[0, :, :, 0] = np.arange(36).reshape(6, 6)
    model = WindowId()
    got = inference.sliding_window_logits(model, images, 4, stride=2, batch_size=10)[0, ..., 0]
    # Windows start at rows/cols {0, 2}; their top-left values are 0, 2, 12, 14.
    expected = np.zeros((6, 6))
    count = np.zeros((6, 6))
    for t in (0, 2):
        for s in (0, 2):
            expected[t : t + 4, s : s + 4] += images[0, t, s, 0]
            count[t : t + 4, s : s + 4] += 1
    np.testing.assert_allclose(got, expected / count, rtol=1e-6)
    assert model.calls == [4]


def test_padding_uses_pad_value():
    seen = []

    def model(x):
        seen.append(np.array(x))
        return np.zeros(x.shape[:3] + (2,), np.float32)

    images = np.full((1, 3, 2, 3), 7.0, np.float32)
    inference.sliding_window_logits(model, images, (4, 4), pad_value=(1.0, 2.0, 3.0))
    window = seen[0][0]
    np.testing.assert_array_equal(window[:3, :2], images[0])
    np.testing.assert_array_equal(window[3, 0], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(window[0, 3], [1.0, 2.0, 3.0])


def test_flip_tta_equals_hand_average():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    outputs = keras.layers.Conv2D(K, 3, padding="same")(x)
    model = keras.Model(inputs, outputs)
    images = _images((2, 9, 10, 3))
    plain = keras.ops.convert_to_numpy(model.predict(images, verbose=0))
    flipped = keras.ops.convert_to_numpy(model.predict(images[:, :, ::-1].copy(), verbose=0))
    expected = (_softmax(plain) + _softmax(flipped)[:, :, ::-1]) / 2
    got = inference.predict_probabilities(model, images, flip=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(_softmax(plain), expected, atol=1e-3)  # the flip matters here
    # Flip with a sliding window of the whole size is the same.
    got = inference.predict_probabilities(model, images, flip=True, crop_size=(9, 10))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_multi_scale_equals_torch_reference():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    model = _pointwise_model(seed=2)
    images = _images((1, 8, 12, 3), seed=3)

    def resize(x, size):
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).double()
        y = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
        return y.numpy().transpose(0, 2, 3, 1)

    expected = 0
    for scale in (0.5, 1.0, 1.5):
        size = (round(8 * scale), round(12 * scale))
        logits = _pointwise_numpy(model, resize(images, size))
        expected = expected + _softmax(resize(logits, (8, 12)))
    expected = expected / 3
    got = inference.predict_probabilities(model, images, scales=(0.5, 1.0, 1.5))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_dict_output_and_predict():
    model = _pointwise_model(dict_output=True)
    images = _images((2, 5, 6, 3))
    expected = np.argmax(_pointwise_numpy(model, images), -1)
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

    probs = inference.predict_probabilities(model, _images((1, 8, 8, 3)), crop_size=4)
    assert probs.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(probs, 1 / 3, rtol=1e-6)


@pytest.mark.channels_first_conv
def test_channels_first_model():
    inputs = keras.Input((3, None, None))
    outputs = keras.layers.Conv2D(K, 1, data_format="channels_first")(inputs)
    model = keras.Model(inputs, outputs)
    images = _images((1, 6, 5, 3))
    direct = keras.ops.convert_to_numpy(model.predict(images.transpose(0, 3, 1, 2), verbose=0))
    got = inference.predict_probabilities(
        model, images, crop_size=4, stride=2, data_format="channels_first"
    )
    np.testing.assert_allclose(got, _softmax(direct.transpose(0, 2, 3, 1)), rtol=1e-4, atol=1e-5)


class _CountingMetric:
    name = "counting"

    def __init__(self):
        self.reset_state()

    def reset_state(self):
        self.updates = []

    def update_state(self, y_true, y_pred):
        self.updates.append((np.array(y_true), np.array(y_pred)))

    def result(self):
        return np.float32(len(self.updates))


def test_evaluate_with_keras_metric_and_tf_dataset():
    tf = pytest.importorskip("tensorflow")
    model = _pointwise_model(seed=4)
    images = _images((3, 6, 7, 3), seed=5)
    masks = np.random.default_rng(6).integers(0, K, (3, 6, 7)).astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).batch(2)
    miou = keras.metrics.MeanIoU(K, sparse_y_pred=False, name="miou")
    counter = _CountingMetric()
    results = inference.evaluate(model, dataset, [miou, counter], crop_size=4)
    pred = np.argmax(_pointwise_numpy(model, images), -1)
    cm = np.zeros((K, K))
    np.add.at(cm, (masks.ravel(), pred.ravel()), 1)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1) - tp
    expected = np.mean(tp[denom > 0] / denom[denom > 0])
    assert set(results) == {"miou", "counting"}
    np.testing.assert_allclose(results["miou"], expected, rtol=1e-5)
    assert results["counting"] == 2.0
    np.testing.assert_array_equal(counter.updates[0][0], masks[:2])
    assert counter.updates[0][1].shape == (2, 6, 7, K)
    # kseg's own metric gives the same mean IoU.
    kseg_miou = kseg.metrics.MeanIoU(K)
    results = inference.evaluate(model, dataset, kseg_miou, crop_size=4, flip=False)
    np.testing.assert_allclose(results["mean_iou"], expected, rtol=1e-5)
    # Metrics are reset by default; `steps` limits the batches.
    results = inference.evaluate(model, [(images, masks)] * 3, counter, steps=2)
    assert results["counting"] == 2.0


def test_bad_arguments():
    model = _pointwise_model()
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


def _pointwise_model_channels(channels, num_outputs, seed=0):
    """A 1x1-conv model on `channels` input channels (plain Keras layers, no normalisation)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, channels))
    x = keras.layers.Rescaling(1 / 64.0, offset=-2.0)(inputs)
    return keras.Model(inputs, keras.layers.Conv2D(num_outputs, 1, name="main_conv")(x))


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z.astype(np.float64)))


def _torch_resize(x, size):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).double()
    y = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return y.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_binary_probabilities_are_sigmoid_averaged_over_scales_and_flips(channels):
    model = _pointwise_model_channels(channels, 1, seed=7)
    images = _images((2, 8, 12, channels), seed=8)
    expected = 0
    for scale in (0.5, 1.0):
        size = (round(8 * scale), round(12 * scale))
        for flipped in (False, True):
            x = images[:, :, ::-1] if flipped else images
            logits = _pointwise_numpy(model, _torch_resize(x, size))
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
    model = _pointwise_model_channels(1, 1, seed=9)
    images = _images((1, 11, 9, 1), seed=10)
    logits = _pointwise_numpy(model, images)
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

    mask = inference.predict(model, _images((1, 3, 3, 3)))
    expected = np.ones((1, 3, 3), np.int32)
    expected[0, 0, 0] = 0
    np.testing.assert_array_equal(mask, expected)


def test_evaluate_binary_model_scores_two_classes():
    model = _pointwise_model_channels(1, 1, seed=11)
    images = _images((3, 6, 7, 1), seed=12)
    masks = np.random.default_rng(13).integers(0, 2, (3, 6, 7)).astype(np.int32)
    masks[0, 0, :3] = 255
    pred = (_pointwise_numpy(model, images)[..., 0] > 0).astype(np.int64)
    keep = masks != 255
    cm = np.zeros((2, 2))
    np.add.at(cm, (masks[keep], pred[keep]), 1)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1) - tp
    expected = np.mean(tp[denom > 0] / denom[denom > 0])
    counter = _CountingMetric()
    results = inference.evaluate(
        model,
        [(images[:2], masks[:2]), (images[2:], masks[2:])],
        [kseg.metrics.MeanIoU(2), counter],
        crop_size=4,
    )
    np.testing.assert_allclose(results["mean_iou"], expected, rtol=1e-6)
    # The metrics receive the 0/1 class map.
    y_pred = counter.updates[0][1]
    assert y_pred.shape == (2, 6, 7)
    np.testing.assert_array_equal(y_pred, pred[:2])


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_any_channel_count(channels):
    model = _pointwise_model_channels(channels, K, seed=channels)
    images = _images((2, 7, 9, channels), seed=channels)
    expected = _softmax(_pointwise_numpy(model, images))
    got = inference.predict_probabilities(model, images, crop_size=4, stride=3)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    single = inference.predict_probabilities(model, images[0], crop_size=5)
    np.testing.assert_allclose(single, expected[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "channels,pad_value,expected",
    [
        (3, None, inference.IMAGENET_MEAN_RGB),
        (1, None, [0.0]),
        (4, None, [0.0] * 4),
        (4, 9.0, [9.0] * 4),
        (4, (1.0, 2.0, 3.0, 4.0), [1.0, 2.0, 3.0, 4.0]),
        (1, (5.0,), [5.0]),
    ],
)
def test_pad_value_per_channel_count(channels, pad_value, expected):
    seen = []

    def model(x):
        seen.append(np.array(x))
        return np.zeros(x.shape[:3] + (2,), np.float32)

    images = np.full((1, 3, 2, channels), 7.0, np.float32)
    inference.predict(model, images, crop_size=4, pad_value=pad_value)
    window = seen[0][0]
    assert window.shape == (4, 4, channels)
    np.testing.assert_array_equal(window[:3, :2], images[0])
    np.testing.assert_allclose(window[3, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(window[0, 3], expected, rtol=1e-6)


def test_pad_value_of_the_wrong_length():
    model = _pointwise_model_channels(4, K)
    with pytest.raises(ValueError, match=r"Received: pad_value=\(1.0, 2.0, 3.0\)"):
        inference.predict(model, _images((1, 3, 3, 4)), crop_size=4, pad_value=(1.0, 2.0, 3.0))


def test_channel_count_must_match_the_model():
    model = _pointwise_model_channels(4, K)
    with pytest.raises(ValueError, match=r"with 4 channels.*Received: images.shape=\(5, 6, 3\)"):
        inference.predict(model, _images((5, 6, 3)))
    with pytest.raises(ValueError, match=r"with 4 channels.*Received: images.shape=\(1, 5, 6, 1\)"):
        inference.sliding_window_logits(model, _images((1, 5, 6, 1)), 4)
