"""`kseg.inference.evaluate`: metrics fed with the predictions of every batch."""

import keras
import numpy as np
import pytest

import kseg
from kseg import inference
from tests.inference.helpers import K, pointwise_model, pointwise_numpy, random_images


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
    model = pointwise_model(seed=4)
    images = random_images((3, 6, 7, 3), seed=5)
    masks = np.random.default_rng(6).integers(0, K, (3, 6, 7)).astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).batch(2)
    miou = keras.metrics.MeanIoU(K, sparse_y_pred=False, name="miou")
    counter = _CountingMetric()
    results = inference.evaluate(model, dataset, [miou, counter], crop_size=4)
    pred = np.argmax(pointwise_numpy(model, images), -1)
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


def test_evaluate_binary_model_scores_two_classes():
    model = pointwise_model(seed=11, channels=1, num_outputs=1)
    images = random_images((3, 6, 7, 1), seed=12)
    masks = np.random.default_rng(13).integers(0, 2, (3, 6, 7)).astype(np.int32)
    masks[0, 0, :3] = 255
    pred = (pointwise_numpy(model, images)[..., 0] > 0).astype(np.int64)
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


# Label checks: evaluate stops on labels that are not classes.


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
