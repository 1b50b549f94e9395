"""Tests for kseg.metrics.ConfusionMatrix: counting rules, exactness, streaming state."""

import keras
import numpy as np
import pytest

from kseg.metrics import ConfusionMatrix
from kseg.metrics.confusion_matrix import _bucket_size
from tests.helpers import BACKEND, to_numpy


def reference_confusion(labels, preds, num_classes, ignore_index=255):
    """Independent NumPy reference: loop-free histogram of (label, prediction) pairs."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    preds = np.asarray(preds).reshape(-1).astype(np.int64)
    keep = (labels >= 0) & (labels < num_classes) & (preds >= 0) & (preds < num_classes)
    if ignore_index is not None:
        keep &= labels != ignore_index
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels[keep], preds[keep]), 1)
    return cm


def messy_labels(rng, shape, num_classes, present=None):
    """Labels with ignored pixels (255), out-of-range values (-1, K, 100) and absent classes."""
    present = np.arange(num_classes) if present is None else np.asarray(present)
    labels = rng.choice(present, size=shape).astype("int32")
    u = rng.random(shape)
    labels[u < 0.15] = 255
    labels[(u >= 0.15) & (u < 0.2)] = -1
    labels[(u >= 0.2) & (u < 0.23)] = num_classes
    labels[(u >= 0.23) & (u < 0.25)] = 100
    return labels


def test_hand_worked_counts():
    m = ConfusionMatrix(num_classes=3)
    m.update_state(np.array([[[0, 1], [2, 255]]]), np.array([[[0, 2], [2, 1]]]))
    expected = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1]])
    np.testing.assert_array_equal(m.exact_counts(), expected)
    np.testing.assert_array_equal(to_numpy(m.result()), expected.astype("float32"))


@pytest.mark.parametrize("label_rank4", [False, True])
def test_random_logits_against_numpy(label_rank4):
    rng = np.random.default_rng(1)
    k = 5
    labels = messy_labels(rng, (2, 9, 11), k, present=[0, 1, 3])  # classes 2 and 4 absent
    logits = rng.standard_normal((2, 9, 11, k)).astype("float32")
    logits[..., 4] -= 10.0  # class 4 never predicted either
    m = ConfusionMatrix(num_classes=k)
    y_true = labels[..., None] if label_rank4 else labels
    m.update_state(y_true, logits)
    expected = reference_confusion(labels, logits.argmax(-1), k)
    np.testing.assert_array_equal(m.exact_counts(), expected)
    assert expected[4].sum() == 0 and expected[:, 4].sum() == 0


@pytest.mark.parametrize("pred_shape", ["bhw", "bhw1"])
def test_integer_predictions_out_of_range_are_skipped(pred_shape):
    rng = np.random.default_rng(2)
    k = 4
    labels = messy_labels(rng, (2, 7, 6), k)
    preds = rng.integers(-2, k + 2, size=(2, 7, 6)).astype("int32")
    preds[0, 0, 0] = 255
    m = ConfusionMatrix(num_classes=k)
    m.update_state(labels, preds[..., None] if pred_shape == "bhw1" else preds)
    np.testing.assert_array_equal(m.exact_counts(), reference_confusion(labels, preds, k))


def test_ignore_index_inside_the_class_range():
    labels = np.array([[[0, 1, 2, 2]]])
    preds = np.array([[[0, 0, 2, 1]]])
    m = ConfusionMatrix(num_classes=3, ignore_index=0)
    m.update_state(labels, preds)
    expected = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 1]])
    np.testing.assert_array_equal(m.exact_counts(), expected)
    m2 = ConfusionMatrix(num_classes=3, ignore_index=None)
    m2.update_state(labels, preds)
    np.testing.assert_array_equal(m2.exact_counts(), reference_confusion(labels, preds, 3, None))


def test_streaming_updates_and_reset():
    rng = np.random.default_rng(3)
    k = 4
    m = ConfusionMatrix(num_classes=k)
    total = np.zeros((k, k), np.int64)
    for step in range(3):
        labels = messy_labels(rng, (1 + step, 5, 4), k)
        logits = rng.standard_normal((1 + step, 5, 4, k)).astype("float32")
        m.update_state(labels, logits)
        total += reference_confusion(labels, logits.argmax(-1), k)
        np.testing.assert_array_equal(m.exact_counts(), total)
    m.reset_state()
    np.testing.assert_array_equal(m.exact_counts(), np.zeros((k, k)))


def test_channels_first_scores():
    rng = np.random.default_rng(4)
    labels = messy_labels(rng, (2, 1, 5, 6), 3)
    logits = rng.standard_normal((2, 3, 5, 6)).astype("float32")
    m = ConfusionMatrix(num_classes=3, data_format="channels_first")
    m.update_state(labels, logits)
    np.testing.assert_array_equal(
        m.exact_counts(), reference_confusion(labels[:, 0], logits.argmax(1), 3)
    )


def test_integer_sample_weight_counts_pixels_several_times():
    labels = np.array([[[0, 1]], [[1, 1]]])
    preds = np.array([[[0, 0]], [[1, 0]]])
    m = ConfusionMatrix(num_classes=2)
    m.update_state(labels, preds, sample_weight=np.array([3, 0]))  # per image
    np.testing.assert_array_equal(m.exact_counts(), [[3, 0], [3, 0]])
    m.reset_state()
    weights = np.array([[[1, 2]], [[5, 0]]], dtype="float32")  # per pixel
    m.update_state(labels, preds, sample_weight=weights)
    np.testing.assert_array_equal(m.exact_counts(), [[1, 0], [2, 5]])


def test_counts_beyond_2_to_40_are_exact():
    """Two-word accumulation: far past int32 (2**31) and float32 (2**24) limits."""
    k = 3
    m = ConfusionMatrix(num_classes=k)
    step = np.array(
        [[2**31 - 1, 2**30, 1], [2**30 - 1, 0, 2**31 - 2], [7, 2**29 + 3, 2**31 - 1]],
        dtype="int32",
    )
    calls = 520  # 520 * (2**31 - 1) > 2**40
    for _ in range(calls):
        m._accumulate(step)
    expected = step.astype(object) * calls  # Python ints: exact
    got = m.exact_counts()
    assert got.dtype == np.int64
    for i in range(k):
        for j in range(k):
            assert int(got[i, j]) == expected[i, j]
    assert int(got.max()) > 2**40
    # The test could fail with a naive counter: neither int32 nor float32 holds this.
    assert int(np.float32(expected[0, 0])) != expected[0, 0]
    # The float32 view of the state is right up to float32 rounding.
    np.testing.assert_allclose(to_numpy(m.result()), got.astype(np.float64), rtol=1e-6)


def test_public_update_carries_into_the_high_word():
    """Weighted updates through update_state itself cross 2**31 without overflow."""
    m = ConfusionMatrix(num_classes=2)
    weight = 2**30 + 12345
    for _ in range(5):
        m.update_state(np.array([[[0, 1]]]), np.array([[[0, 0]]]), sample_weight=np.array([weight]))
    np.testing.assert_array_equal(m.exact_counts(), [[5 * weight, 0], [5 * weight, 0]])
    assert 5 * weight > 2**32


def test_spatial_size_mismatch_raises():
    m = ConfusionMatrix(num_classes=3)
    with pytest.raises(ValueError, match="spatial size of `y_true`"):
        m.update_state(np.zeros((1, 4, 4), "int32"), np.zeros((1, 8, 8, 3), "float32"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(num_classes=1)
    with pytest.raises(TypeError, match="num_classes"):
        ConfusionMatrix(num_classes=2.5)
    with pytest.raises(ValueError, match="data_format"):
        ConfusionMatrix(num_classes=3, data_format="nhwc")
    m = ConfusionMatrix(num_classes=3)
    with pytest.raises(ValueError, match="num_classes=3 channels"):
        m.update_state(np.zeros((1, 4, 4), "int32"), np.zeros((1, 4, 4, 5), "float32"))
    with pytest.raises(ValueError, match="Expected `y_true`"):
        m.update_state(np.zeros((4, 4), "int32"), np.zeros((4, 4), "int32"))


def test_config_round_trip_and_serialization():
    m = ConfusionMatrix(num_classes=4, ignore_index=0, name="cm")
    config = m.get_config()
    assert config["num_classes"] == 4 and config["ignore_index"] == 0
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(m))
    assert isinstance(revived, ConfusionMatrix)
    assert revived.get_config() == config


def test_state_variables_sum_across_replicas():
    m = ConfusionMatrix(num_classes=3)
    assert len(m.variables) == 2
    assert all(v.aggregation == "sum" for v in m.variables)
    assert all(v.dtype == "int32" for v in m.variables)


def test_argmax_ties_and_nan_follow_numpy():
    """Scores with many ties and a few NaN: the first maximum (first NaN) wins."""
    rng = np.random.default_rng(5)
    k = 9
    scores = rng.integers(0, 3, size=(2, 6, 7, k)).astype("float32")
    scores[0, 0, 0, [2, 5]] = np.nan
    scores[1, 2, 3, 0] = np.nan
    labels = messy_labels(rng, (2, 6, 7), k)
    m = ConfusionMatrix(num_classes=k)
    m.update_state(labels, scores)
    np.testing.assert_array_equal(
        m.exact_counts(), reference_confusion(labels, scores.argmax(-1), k)
    )


@pytest.mark.parametrize("size", [(1, 1, 1), (2, 5, 7), (1, 300, 301), (3, 129, 170)])
def test_pixel_counts_that_need_padding(size):
    """Eager TF/JAX updates pad the pixels to a bucket length; padding is never counted."""
    rng = np.random.default_rng(11)
    k = 4
    labels = messy_labels(rng, size, k)
    logits = rng.standard_normal(size + (k,)).astype("float32")
    weights = rng.integers(0, 4, size=size).astype("float32")
    m = ConfusionMatrix(num_classes=k)
    m.update_state(labels, logits)
    expected = reference_confusion(labels, logits.argmax(-1), k)
    np.testing.assert_array_equal(m.exact_counts(), expected)
    m.reset_state()
    m.update_state(labels, logits.argmax(-1), sample_weight=weights)
    keep = (labels >= 0) & (labels < k)
    weighted = np.zeros((k, k), np.int64)
    np.add.at(weighted, (labels[keep], logits.argmax(-1)[keep]), weights[keep].astype(np.int64))
    np.testing.assert_array_equal(m.exact_counts(), weighted)


def test_bucket_sizes():
    assert [_bucket_size(n) for n in (1, 256, 257, 65536, 65537, 524288)] == [
        256, 256, 512, 65536, 131072, 524288,
    ]  # fmt: skip


@pytest.mark.parametrize("as_tensor", [False, True])
def test_traced_update_equals_eager(as_tensor):
    """The update inside the backend's compiler (what fit/evaluate run) vs NumPy."""
    rng = np.random.default_rng(12)
    k = 5
    labels = messy_labels(rng, (2, 9, 10), k)
    logits = rng.standard_normal((2, 9, 10, k)).astype("float32")
    expected = reference_confusion(labels, logits.argmax(-1), k)
    m = ConfusionMatrix(num_classes=k)
    y_true, y_pred = labels, logits
    if as_tensor:
        y_true, y_pred = keras.ops.convert_to_tensor(labels), keras.ops.convert_to_tensor(logits)
    if BACKEND == "jax":
        import jax

        state = [v.value for v in m.variables]
        new_state = jax.jit(m.stateless_update_state)(state, y_true, y_pred)
        for variable, value in zip(m.variables, new_state):
            variable.assign(value)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        for jit_compile in (False, True):
            m.reset_state()
            tf.function(m.update_state, jit_compile=jit_compile)(y_true, y_pred)
            np.testing.assert_array_equal(m.exact_counts(), expected)
    else:
        m.update_state(y_true, y_pred)
    np.testing.assert_array_equal(m.exact_counts(), expected)
