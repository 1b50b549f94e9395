"""`kseg.inference.evaluate`: metrics fed with the predictions of every batch."""

import keras
import numpy as np
import pytest

import kseg
from kseg import inference
from tests.inference.helpers import K, pointwise_model, pointwise_numpy, random_images, softmax


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


def test_evaluate_with_crf_refines_the_averaged_probabilities():
    # The CRF takes each image's probabilities after the flip average, before the metrics.
    from tests.postprocess.test_dense_crf import numpy_dense_crf

    model = pointwise_model(seed=20)
    images = random_images((2, 6, 7, 3), seed=21)
    masks = np.random.default_rng(22).integers(0, K, (2, 6, 7)).astype(np.int32)
    probs = softmax(pointwise_numpy(model, images))  # a pointwise model: flipping changes nothing
    counter = _CountingMetric()
    for crf, options in ((True, {}), ({"iterations": 3, "bilateral_rgb_std": 50.0}, None)):
        options = crf if options is None else options
        params = {"iterations": options.get("iterations", 10)}
        if "bilateral_rgb_std" in options:
            params["rgb_b"] = options["bilateral_rgb_std"]
        inference.evaluate(model, [(images, masks)], counter, flip=True, crf=crf)
        got = counter.updates[0][1]
        expected = np.stack([numpy_dense_crf(images[b], probs[b], **params) for b in range(2)])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert np.abs(got - probs).max() > 0.1  # the CRF changed something
    # crf=False is no CRF at all.
    inference.evaluate(model, [(images, masks)], counter, crf=False)
    np.testing.assert_allclose(counter.updates[0][1], probs, atol=1e-5)


def test_evaluate_binary_model_with_crf_refines_one_minus_p_and_p():
    from tests.postprocess.test_dense_crf import numpy_dense_crf

    model = pointwise_model(seed=23, num_outputs=1)
    images = random_images((1, 5, 6, 3), seed=24)
    p = 1.0 / (1.0 + np.exp(-pointwise_numpy(model, images)))
    counter = _CountingMetric()
    inference.evaluate(model, [(images, np.zeros((1, 5, 6), np.int32))], counter, crf=True)
    expected = numpy_dense_crf(images[0], np.concatenate([1 - p[0], p[0]], -1)).argmax(-1)
    np.testing.assert_array_equal(counter.updates[0][1], expected[None])


def test_evaluate_refuses_a_bad_crf_option():
    model = pointwise_model(seed=25)
    batch = (random_images((1, 4, 4, 3), seed=26), np.zeros((1, 4, 4), np.int32))
    with pytest.raises(TypeError, match=r"Received: crf='yes'"):
        inference.evaluate(model, [batch], _CountingMetric(), crf="yes")
    with pytest.raises(ValueError, match=r"Received: method='fast'"):
        inference.evaluate(model, [batch], _CountingMetric(), crf={"method": "fast"})
