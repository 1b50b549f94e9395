"""`kseg.inference.sliding_window_logits`: windows, overlaps and padding."""

import numpy as np
import pytest

from kseg import inference
from tests.inference.helpers import K, pointwise_model, pointwise_numpy, random_images


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
    model = pointwise_model()
    images = random_images(shape)
    got = inference.sliding_window_logits(model, images, crop, stride=stride, batch_size=3)
    np.testing.assert_allclose(got, pointwise_numpy(model, images), rtol=1e-4, atol=1e-4)


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
    model = pointwise_model(channels=4, num_outputs=K)
    with pytest.raises(ValueError, match=r"Received: pad_value=\(1.0, 2.0, 3.0\)"):
        inference.predict(
            model, random_images((1, 3, 3, 4)), crop_size=4, pad_value=(1.0, 2.0, 3.0)
        )
