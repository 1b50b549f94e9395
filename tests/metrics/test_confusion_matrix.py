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


def test_words_of_four_replicas_sum_without_overflow():
    """A strategy reads a `sum` metric by adding the replicas' int32 words: it stays exact.

    Four replicas each count about 1.5 * 2**31 pixels of one cell (in two updates of
    2**31 - 1 and 2**30 - 9 - i, so that a low word of 30 bits would be near its top
    on every replica); the words are summed in int32 as
    `tf.distribute` does for `aggregation="sum"` (NumPy int32 sums wrap the same
    way), put in a fresh metric, and read back.
    """
    replicas = [ConfusionMatrix(num_classes=2) for _ in range(4)]
    labels, preds = np.array([[[0, 1]]]), np.array([[[0, 1]]])
    for i, m in enumerate(replicas):
        m.update_state(labels, preds, sample_weight=np.array([2**31 - 1]))
        m.update_state(labels, preds, sample_weight=np.array([2**30 - 9 - i]))
    expected = sum(2**31 - 1 + 2**30 - 9 - i for i in range(4))  # Python int: exact
    assert expected > 2**33
    words = {}
    for name in ("count_high", "count_low"):
        values = [to_numpy(getattr(m, name).value).astype(np.int32) for m in replicas]
        with np.errstate(over="ignore"):
            words[name] = np.sum(np.stack(values), axis=0, dtype=np.int32)
    total = ConfusionMatrix(num_classes=2)
    total.count_high.assign(words["count_high"])
    total.count_low.assign(words["count_low"])
    np.testing.assert_array_equal(total.exact_counts(), [[expected, 0], [0, expected]])


def test_spatial_size_mismatch_raises():
    m = ConfusionMatrix(num_classes=3)
    with pytest.raises(ValueError, match="spatial size of `y_true`"):
        m.update_state(np.zeros((1, 4, 4), "int32"), np.zeros((1, 8, 8, 3), "float32"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(num_classes=0)
    with pytest.raises(TypeError, match="threshold"):
        ConfusionMatrix(num_classes=1, threshold="high")
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
    assert config["threshold"] == 0.0
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(m))
    assert isinstance(revived, ConfusionMatrix)
    assert revived.get_config() == config


def test_state_variables_sum_across_replicas():
    m = ConfusionMatrix(num_classes=3)
    assert len(m.variables) == 5
    assert all(v.dtype == "int32" for v in m.variables)
    counts = [v for v in m.variables if v is not m.out_of_range_label]
    assert all(v.aggregation == "sum" for v in counts)
    # A maximum cannot be summed: the kept label comes from the first replica.
    assert m.out_of_range_label.aggregation == "only_first_replica"


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


def reference_out_of_range(labels, num_classes, ignore_index=255, weights=None):
    """NumPy reference: (count, largest value) of labels that are neither classes nor ignored."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    weights = np.ones_like(labels) if weights is None else np.asarray(weights).reshape(-1)
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    bad &= weights > 0
    count = int(weights[bad].astype(np.int64).sum())
    return count, (int(labels[bad].max()) if bad.any() else None)


def test_out_of_range_labels_are_counted_hand_worked():
    # K = 21 and a batch labelled 21: two of four pixels are not classes.
    m = ConfusionMatrix(num_classes=21)
    labels = np.array([[[0, 21], [21, 255]]])
    m.update_state(labels, np.zeros((1, 2, 2), "int32"))
    assert m.exact_counts().sum() == 1
    assert m.out_of_range_count() == 2
    assert m.out_of_range_value() == 21
    assert isinstance(m.out_of_range_count(), int)
    # Negative labels count too; the largest out-of-range label is kept.
    m.update_state(np.array([[[-3, 40], [1, 22]]]), np.zeros((1, 2, 2), "int32"))
    assert m.out_of_range_count() == 5
    assert m.out_of_range_value() == 40
    m.reset_state()
    assert m.out_of_range_count() == 0 and m.out_of_range_value() is None
    m.update_state(np.array([[[-3, 0]]]), np.zeros((1, 1, 2), "int32"))
    assert (m.out_of_range_count(), m.out_of_range_value()) == (1, -3)


@pytest.mark.parametrize("ignore_index", [255, None, 0, -1])
@pytest.mark.parametrize("size", [(1, 1, 1), (2, 5, 7), (3, 129, 170)])
def test_out_of_range_count_against_numpy(ignore_index, size):
    """Messy labels with and without padding (eager NumPy), with and without weights."""
    rng = np.random.default_rng(21)
    k = 4
    labels = messy_labels(rng, size, k)
    logits = rng.standard_normal(size + (k,)).astype("float32")
    weights = rng.integers(0, 4, size=size).astype("float32")
    m = ConfusionMatrix(num_classes=k, ignore_index=ignore_index)
    m.update_state(labels, logits)
    count, value = reference_out_of_range(labels, k, ignore_index)
    assert (m.out_of_range_count(), m.out_of_range_value()) == (count, value)
    np.testing.assert_array_equal(
        m.exact_counts(), reference_confusion(labels, logits.argmax(-1), k, ignore_index)
    )
    m.reset_state()
    m.update_state(labels, logits, sample_weight=weights)
    count, value = reference_out_of_range(labels, k, ignore_index, weights)
    assert (m.out_of_range_count(), m.out_of_range_value()) == (count, value)


def test_out_of_range_count_with_backend_tensors():
    rng = np.random.default_rng(22)
    labels = messy_labels(rng, (2, 6, 5), 3)
    logits = rng.standard_normal((2, 6, 5, 3)).astype("float32")
    m = ConfusionMatrix(num_classes=3)
    m.update_state(keras.ops.convert_to_tensor(labels), keras.ops.convert_to_tensor(logits))
    assert (m.out_of_range_count(), m.out_of_range_value()) == reference_out_of_range(labels, 3)


def test_out_of_range_predictions_are_counted():
    labels = np.array([[[0, 1, 2, 255, 9]]])
    preds = np.array([[[0, 3, -1, 7, 7]]])  # 3 and -1 on valid labels; 7 on skipped labels
    m = ConfusionMatrix(num_classes=3)
    m.update_state(labels, preds)
    assert m.out_of_range_prediction_count() == 2
    assert m.out_of_range_count() == 1  # the label 9
    np.testing.assert_array_equal(m.exact_counts(), reference_confusion(labels, preds, 3))
    m2 = ConfusionMatrix(num_classes=3)
    m2.update_state(labels[..., :2], np.array([[[0, 3]]]))
    with pytest.raises(ValueError, match=r"1 pixel\(s\) whose predicted class"):
        m2.check_labels()


def test_check_labels_message():
    m = ConfusionMatrix(num_classes=19, name="val_miou")
    m.check_labels()  # nothing seen: no error
    labels = np.array([[[0, 33, 7, 255], [26, 255, 18, 19]]])  # Cityscapes labelIds
    m.update_state(labels, np.zeros((1, 2, 4), "int32"))
    m.update_state(np.array([[[1]]]), np.array([[[1]]]))
    with pytest.raises(ValueError) as info:
        m.check_labels()
    text = str(info.value)
    assert "'val_miou'" in text
    assert "counted 3 pixel(s)" in text
    assert "largest 33" in text
    assert "[0, 19)" in text and "ignore_index=255" in text
    assert "trainIds" in text
    m.reset_state()
    m.check_labels()


def test_binary_check_labels_message():
    m = ConfusionMatrix(num_classes=1)
    m.update_state(np.array([[[0, 1, 2]]]), np.array([[[[0.5], [-1.0], [3.0]]]]))
    with pytest.raises(ValueError, match=r"counted 1 pixel.*0 or 1 \(binary mode\).*largest 2"):
        m.check_labels()


@pytest.mark.parametrize("as_tensor", [False, True])
def test_traced_update_counts_out_of_range(as_tensor):
    """Out-of-range counts inside the backend's compiler (what fit/evaluate run) vs NumPy."""
    rng = np.random.default_rng(23)
    k = 5
    labels = messy_labels(rng, (2, 9, 10), k)
    logits = rng.standard_normal((2, 9, 10, k)).astype("float32")
    expected = reference_out_of_range(labels, k)
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
            assert (m.out_of_range_count(), m.out_of_range_value()) == expected
    else:
        m.update_state(y_true, y_pred)
    assert (m.out_of_range_count(), m.out_of_range_value()) == expected
    if BACKEND == "jax":  # the reset state under jit too
        new_state = jax.jit(m.stateless_reset_state)()
        for variable, value in zip(m.variables, new_state):
            variable.assign(value)
        assert (m.out_of_range_count(), m.out_of_range_value()) == (0, None)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_float_labels_must_be_integer_valued(as_tensor):
    m = ConfusionMatrix(num_classes=3)
    labels = np.array([[[0.0, 1.0], [2.0, 0.5]]], "float32")  # e.g. a bilinearly resized mask
    preds = np.zeros((1, 2, 2), "int32")
    if as_tensor:
        labels = keras.ops.convert_to_tensor(labels)
    with pytest.raises(ValueError, match=r"Expected `y_true` to hold integer.*y_true value 0.5"):
        m.update_state(labels, preds)
    m.update_state(np.array([[[0.0, 1.0], [2.0, 255.0]]], "float32"), preds)  # integer-valued
    np.testing.assert_array_equal(m.exact_counts().sum(), 3)


# ----------------------------------------------------------------- binary mode
def reference_binary(labels, scores, threshold=0.0, ignore_index=255):
    """NumPy reference of the binary 2 x 2 matrix: foreground where score > threshold."""
    preds = (np.asarray(scores).reshape(np.shape(labels)) > threshold).astype(np.int64)
    return reference_confusion(labels, preds, 2, ignore_index)


@pytest.mark.parametrize("layout", ["bhw1", "bhw", "b1hw"])
def test_binary_mode_thresholds_logits(layout):
    rng = np.random.default_rng(24)
    labels = rng.integers(0, 2, size=(2, 7, 9)).astype("int32")
    labels[rng.random(labels.shape) < 0.1] = 255
    labels[0, 0, :3] = [2, 7, -1]  # out of range in binary mode
    logits = rng.standard_normal((2, 7, 9)).astype("float32")
    logits[0, 1, 0] = 0.0  # exactly at the threshold: background
    data_format = "channels_first" if layout == "b1hw" else "channels_last"
    y_pred = {"bhw1": logits[..., None], "bhw": logits, "b1hw": logits[:, None]}[layout]
    m = ConfusionMatrix(num_classes=1, data_format=data_format)
    m.update_state(labels, y_pred)
    assert m.exact_counts().shape == (2, 2)
    np.testing.assert_array_equal(m.exact_counts(), reference_binary(labels, logits))
    assert (m.out_of_range_count(), m.out_of_range_value()) == (3, 7)
    m.reset_state()  # backend tensors go through the same path
    m.update_state(keras.ops.convert_to_tensor(labels), keras.ops.convert_to_tensor(y_pred))
    np.testing.assert_array_equal(m.exact_counts(), reference_binary(labels, logits))


def test_binary_mode_hand_worked_and_threshold():
    labels = np.array([[[0, 0, 1, 1, 255]]])
    logits = np.array([[[-2.0, 0.3, 0.0, 4.0, 9.0]]], "float32")[..., None]
    m = ConfusionMatrix(num_classes=1)
    m.update_state(labels, logits)
    np.testing.assert_array_equal(m.exact_counts(), [[1, 1], [1, 1]])
    probs = 1.0 / (1.0 + np.exp(-logits))
    p = ConfusionMatrix(num_classes=1, threshold=0.5)
    p.update_state(labels, probs)
    np.testing.assert_array_equal(p.exact_counts(), [[1, 1], [1, 1]])
    q = ConfusionMatrix(num_classes=1, threshold=1.0)
    q.update_state(labels, logits)
    np.testing.assert_array_equal(q.exact_counts(), [[2, 0], [1, 1]])
    masks = ConfusionMatrix(num_classes=1)  # 0/1 masks as predictions work too
    masks.update_state(labels, np.array([[[0, 1, 0, 1, 1]]], "int32"))
    np.testing.assert_array_equal(masks.exact_counts(), [[1, 1], [1, 1]])


def test_binary_mode_traced():
    rng = np.random.default_rng(25)
    labels = rng.integers(0, 3, size=(2, 6, 6)).astype("int32")
    logits = rng.standard_normal((2, 6, 6, 1)).astype("float32")
    m = ConfusionMatrix(num_classes=1)
    if BACKEND == "jax":
        import jax

        state = [v.value for v in m.variables]
        for variable, value in zip(
            m.variables, jax.jit(m.stateless_update_state)(state, labels, logits)
        ):
            variable.assign(value)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        tf.function(m.update_state, jit_compile=True)(labels, logits)
    else:
        m.update_state(labels, logits)
    np.testing.assert_array_equal(m.exact_counts(), reference_binary(labels, logits))
    assert m.out_of_range_count() == int((labels == 2).sum())


def test_binary_mode_refuses_several_channels_and_two_classes_keep_label_maps():
    m = ConfusionMatrix(num_classes=1)
    with pytest.raises(ValueError, match="1 channel"):
        m.update_state(np.zeros((1, 4, 4), "int32"), np.zeros((1, 4, 4, 2), "float32"))
    # num_classes=2 with a 1-channel integer prediction is a label map, not a logit.
    two = ConfusionMatrix(num_classes=2)
    labels = np.array([[[0, 1, 1, 0]]])
    preds = np.array([[[1, 1, 0, 3]]], "int32")[..., None]
    two.update_state(labels, preds)
    np.testing.assert_array_equal(two.exact_counts(), reference_confusion(labels, preds, 2))
    assert two.out_of_range_prediction_count() == 1
