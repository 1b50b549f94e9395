"""kseg.inference.evaluate stops on labels that are not classes (metric label checks)."""

import keras
import numpy as np
import pytest

import kseg
from kseg import inference

K = 4


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, keras.layers.Conv2D(K, 1)(inputs))


def _batches(bad_value=None):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 6, 7, 3)).astype("float32")
    masks = rng.integers(0, K, (4, 6, 7)).astype("int32")
    masks[0, 0, 0] = 255
    if bad_value is not None:
        masks[2, 1, :3] = bad_value  # in the second batch: 3 pixels
    return [(images[:2], masks[:2]), (images[2:], masks[2:])]


def test_evaluate_raises_on_out_of_range_labels():
    miou = kseg.metrics.MeanIoU(K)
    with pytest.raises(ValueError, match=r"'mean_iou' counted 3 pixel\(s\).*largest 33"):
        inference.evaluate(_model(), _batches(bad_value=33), [miou])
    assert miou.out_of_range_count() == 3 and miou.out_of_range_value() == 33


def test_evaluate_with_valid_labels_and_foreign_metrics():
    batches = _batches()
    counted = []

    class Counting(keras.metrics.Metric):  # no check_labels(): left alone
        def update_state(self, y_true, y_pred, sample_weight=None):
            counted.append(1)

        def result(self):
            return float(len(counted))

    results = inference.evaluate(_model(), batches, [kseg.metrics.MeanIoU(K), Counting()])
    assert 0.0 <= results["mean_iou"] <= 1.0
    assert len(counted) == 2
