"""Size buckets of kseg.inference: a bounded number of input shapes, and when results are exact."""

import math

import keras
import numpy as np
import pytest

import kseg
from kseg import inference
from tests.inference.helpers import K, pointwise_model, pointwise_numpy, random_images, softmax


class _Recorder:
    """Wraps a model (or a NumPy function) and records every batch it is given."""

    def __init__(self, model):
        self.model = model
        self.batches = []

    @property
    def shapes(self):
        return {tuple(x.shape) for x in self.batches}

    def __call__(self, x):
        self.batches.append(np.array(x))
        if hasattr(self.model, "predict_on_batch"):
            return self.model.predict_on_batch(x)
        return self.model(x)


def _numpy_model(x):
    """A pointwise NumPy model (no compilation): logits from the channel values."""
    return np.asarray(x)[..., :1].repeat(K, axis=-1) * np.arange(1, K + 1, dtype=np.float32) / 255


def test_bucket_length_ladder():
    # Multiples of 32 up to 2 * 32 * 4 = 256, then 4 lengths per octave.
    expected = [32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024]
    assert sorted({inference.bucket_length(n) for n in range(1, 1025)}) == expected
    for n, b in [(1, 32), (32, 32), (33, 64), (256, 256), (257, 320), (513, 640), (1025, 1280)]:
        assert inference.bucket_length(n) == b
    # (min_step, per_octave) = (8, 2): multiples of 8 up to 32, then 2 per octave.
    got = sorted({inference.bucket_length(n, 8, 2) for n in range(1, 257)})
    assert got == [8, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    # The documented bound 2P + P * ceil(log2(L / (2 * min_step * P))), and < 25 % growth.
    for size in (256, 512, 1024, 2048):
        lengths = {inference.bucket_length(n) for n in range(1, size + 1)}
        assert len(lengths) == 8 + 4 * math.ceil(math.log2(size / 256))
    for n in range(257, 2049):
        assert n <= inference.bucket_length(n) < 1.25 * n


def test_bad_size_buckets():
    images = random_images((1, 5, 6, 3))
    for bad in [(0, 4), (32, 3), (32,), "yes", (32.0, 4), 7]:
        with pytest.raises(ValueError, match="Received: size_buckets="):
            inference.predict(_numpy_model, images, size_buckets=bad)
    with pytest.raises(ValueError, match="Received: size_buckets="):
        inference.predict(_numpy_model, images, crop_size=4, size_buckets=(32, 6))
    with pytest.raises(ValueError, match="Received: length=0"):
        inference.bucket_length(0)
    with pytest.raises(ValueError, match=r"Received: \(min_step, per_octave\)=\(0, 4\)"):
        inference.bucket_length(5, 0, 4)
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        inference.sliding_window_logits(_numpy_model, images, 4, batch_size=0)


def test_whole_image_buckets_are_exact_for_a_pointwise_model():
    model = pointwise_model(seed=1)
    recorder = _Recorder(model)
    images = random_images((3, 13, 37, 3), seed=2)
    got = inference.predict_probabilities(recorder, images, size_buckets=True)
    np.testing.assert_allclose(got, softmax(pointwise_numpy(model, images)), rtol=1e-4, atol=1e-5)
    # Height 13 -> 32, width 37 -> 64, batch 3 -> 4, padded with the ImageNet mean.
    (batch,) = recorder.batches
    assert batch.shape == (4, 32, 64, 3)
    np.testing.assert_array_equal(batch[:3, :13, :37], images)
    np.testing.assert_allclose(batch[0, 20, 50], inference.IMAGENET_MEAN_RGB, rtol=1e-6)
    np.testing.assert_allclose(batch[3, 0, 0], inference.IMAGENET_MEAN_RGB, rtol=1e-6)
    # The same as the unbucketed call, with scales and flips too.
    kwargs = {"scales": (0.5, 1.25), "flip": True}
    plain = inference.predict_probabilities(model, images, size_buckets=False, **kwargs)
    bucketed = inference.predict_probabilities(model, images, size_buckets=(16, 2), **kwargs)
    np.testing.assert_allclose(bucketed, plain, rtol=1e-5, atol=1e-6)


def test_sliding_window_buckets_give_the_same_result():
    """A spatial (3x3) model: windows keep the crop size, only the batch is padded."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(K, 3, padding="same")(x))
    images = random_images((1, 8, 14, 3), seed=4)  # 3 windows of 8 x 8 (columns 0, 4, 6)
    plain, bucketed = _Recorder(model), _Recorder(model)
    a = inference.sliding_window_logits(
        plain, images, 8, stride=4, batch_size=8, size_buckets=False
    )
    b = inference.sliding_window_logits(bucketed, images, 8, stride=4, batch_size=8)
    assert plain.shapes == {(3, 8, 8, 3)} and bucketed.shapes == {(4, 8, 8, 3)}
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    # By hand: the three windows' logits averaged where they overlap.
    windows = keras.ops.convert_to_numpy(model.predict_on_batch(plain.batches[0]))
    total = np.zeros((8, 14, K))
    count = np.zeros((8, 14, 1))
    for logits, left in zip(windows, (0, 4, 6)):
        total[:, left : left + 8] += logits
        count[:, left : left + 8] += 1
    np.testing.assert_allclose(a[0], total / count, rtol=1e-5, atol=1e-6)


def _twenty_sizes():
    """20 images of 20 different sizes between 20 and 80 px."""
    return [random_images((1, 20 + 3 * i, 80 - 2 * i, 1), seed=i) for i in range(20)]


def test_twenty_sizes_reach_the_model_in_a_bounded_number_of_shapes():
    images = _twenty_sizes()
    plain, whole, slide = (_Recorder(_numpy_model) for _ in range(3))
    for x in images:
        expected = softmax(_numpy_model(x))
        np.testing.assert_allclose(inference.predict_probabilities(plain, x), expected, rtol=1e-5)
        got = inference.predict_probabilities(whole, x, size_buckets=True)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        got = inference.predict_probabilities(slide, x, crop_size=48, stride=32, batch_size=4)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert len(plain.shapes) == 20  # one compilation per image without buckets
    # Sides 20..80 -> {32, 64, 96}: at most 3 x 3 shapes.
    assert len(whole.shapes) <= 9
    assert {s[1] for s in whole.shapes} <= {32, 64, 96}
    assert {s[2] for s in whole.shapes} <= {32, 64, 96}
    # Sliding windows: the crop, and batches of 1, 2 or 4 windows.
    assert slide.shapes <= {(1, 48, 48, 1), (2, 48, 48, 1), (4, 48, 48, 1)}
    assert len(slide.shapes) >= 2  # (the image sizes give several window counts)


def test_scales_do_not_multiply_the_shapes():
    tta = _Recorder(_numpy_model)
    for x in _twenty_sizes()[::4]:
        inference.predict(tta, x, scales=(0.5, 1.0, 1.5), flip=True, size_buckets=True)
    # Scaled sides 10..120 -> {32, 64, 96, 128}: at most 4 x 4 shapes, whatever the scales.
    assert {s[1] for s in tta.shapes} | {s[2] for s in tta.shapes} <= {32, 64, 96, 128}
    assert len(tta.shapes) <= 16


def test_whole_image_batch_is_padded_to_a_power_of_two():
    recorder = _Recorder(_numpy_model)
    for n in range(1, 9):
        x = random_images((n, 32, 32, 1), seed=n)
        got = inference.predict_probabilities(recorder, x, size_buckets=True)
        np.testing.assert_allclose(got, softmax(_numpy_model(x)), rtol=1e-5, atol=1e-6)
    assert [b.shape[0] for b in recorder.batches] == [1, 2, 4, 4, 8, 8, 8, 8]
    np.testing.assert_array_equal(recorder.batches[2][3], np.zeros((32, 32, 1)))  # pad value 0


def test_evaluate_and_lower_resolution_outputs_with_buckets():
    def half(x):  # logits at half the resolution, one value per image
        x = np.asarray(x)
        out = np.zeros((x.shape[0], x.shape[1] // 2, x.shape[2] // 2, 3), np.float32)
        out[..., 0] = x[:, :1, :1, 0] / 10.0
        return out

    recorder = _Recorder(half)
    images = random_images((2, 21, 10, 3), seed=5)
    masks = np.zeros((2, 21, 10), np.int32)
    counter = _Counter()
    inference.evaluate(recorder, [(images, masks)], counter, size_buckets=True)
    assert recorder.shapes == {(2, 32, 32, 3)}
    probs = counter.updates[0]
    assert probs.shape == (2, 21, 10, 3)
    # Every pixel of image b has the softmax of (images[b, 0, 0, 0] / 10, 0, 0).
    for b in range(2):
        expected = softmax(np.array([images[b, 0, 0, 0] / 10.0, 0.0, 0.0]))
        np.testing.assert_allclose(probs[b], np.broadcast_to(expected, (21, 10, 3)), rtol=1e-5)


class _Counter:
    name = "counter"

    def __init__(self):
        self.updates = []

    def reset_state(self):
        self.updates = []

    def update_state(self, y_true, y_pred):
        self.updates.append(np.array(y_pred))

    def result(self):
        return np.float32(len(self.updates))


def test_whole_image_buckets_change_a_zoo_model():
    """Padding changes what a spatial model sees; documented, hence off by default.

    Measured with this tiny DeepLabV3+ (random weights, images 37 x 45 and
    50 x 61): the probabilities move by up to 0.09-0.39 (0.007-0.037 on
    average) and the class changes at 4-20 % of the pixels, depending on the
    backend's initial weights. An image whose sides are bucket lengths is
    not padded, so its result is the same.
    """
    keras.utils.set_random_seed(0)
    backbone = kseg.backbones.ResNet(blocks=(1, 1, 1, 1), width=4, output_stride=16)
    model = kseg.models.DeepLabV3Plus(
        num_classes=K, backbone=backbone, aspp_filters=8, low_level_filters=4, decoder_filters=8
    )
    images = random_images((1, 37, 45, 3), seed=6)
    plain = inference.predict_probabilities(model, images)
    bucketed = inference.predict_probabilities(model, images, size_buckets=True)
    assert bucketed.shape == plain.shape == (1, 37, 45, K)
    assert np.abs(bucketed - plain).max() > 1e-2
    # Padding by hand to 64 x 64 with the mean colour and cropping gives the bucketed result.
    padded = np.empty((1, 64, 64, 3), np.float32)
    padded[...] = inference.IMAGENET_MEAN_RGB
    padded[:, :37, :45] = images
    by_hand = softmax(keras.ops.convert_to_numpy(model.predict_on_batch(padded))[:, :37, :45])
    np.testing.assert_allclose(bucketed, by_hand, rtol=1e-4, atol=1e-5)
    # Sides already on the ladder: nothing is padded, the result is the same.
    images = random_images((1, 64, 64, 3), seed=7)
    plain = inference.predict_probabilities(model, images)
    bucketed = inference.predict_probabilities(model, images, size_buckets=True)
    np.testing.assert_allclose(bucketed, plain, rtol=1e-5, atol=1e-6)
