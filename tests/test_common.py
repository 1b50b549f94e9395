"""Tests for kseg._common: the label-map checks shared by the losses and the metrics."""

import keras
import numpy as np
import pytest

import kseg
from kseg._common import check_integer_valued, is_eager_value, squeeze_labels, to_int32
from tests.helpers import BACKEND, to_numpy

HALF = np.array([[[0.0, 1.0], [2.0, 0.5]]], "float32")  # e.g. a bilinearly resized mask


@pytest.mark.parametrize("as_tensor", [False, True])
def test_float_labels_that_are_not_integers_are_refused(as_tensor):
    labels = keras.ops.convert_to_tensor(HALF) if as_tensor else HALF
    assert is_eager_value(labels)
    with pytest.raises(ValueError, match=r"Expected `y_true` to hold integer.*y_true value 0\.5"):
        squeeze_labels(labels, "channels_last")
    with pytest.raises(ValueError, match=r"`y_true`.*y_true value 0\.5"):
        to_int32(labels, name="y_true")
    with pytest.raises(ValueError, match="y_true value nan"):
        check_integer_valued(np.array([1.0, np.nan]), "y_true")


def test_integer_valued_labels_pass():
    floats = np.array([[[0.0, 1.0], [2.0, 255.0]]], "float32")
    np.testing.assert_array_equal(to_numpy(squeeze_labels(floats, "channels_last")), floats)
    ints = np.array([[[0, 1], [2, 255]]], "uint8")
    np.testing.assert_array_equal(to_numpy(squeeze_labels(ints[..., None], "channels_last")), ints)
    check_integer_valued(keras.ops.convert_to_tensor(floats), "y_true")
    # Without a name, to_int32 rounds (predictions and sample weights are not checked).
    np.testing.assert_array_equal(to_int32(np.array([0.4, 1.6, 2.5])), [0, 2, 2])


def test_traced_labels_are_rounded_without_a_check():
    """Inside a traced function there is nothing to see: floats are rounded (documented)."""
    if BACKEND == "jax":
        import jax

        out = jax.jit(lambda y: squeeze_labels(y, "channels_last"))(HALF)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        out = tf.function(lambda y: squeeze_labels(y, "channels_last"))(HALF)
    else:
        pytest.skip("torch runs eagerly: the labels are always checked")
    np.testing.assert_array_equal(to_numpy(out), [[[0, 1], [2, 0]]])  # 0.5 rounds to even


@pytest.mark.parametrize("as_tensor", [False, True])
def test_cross_entropy_refuses_float_labels(as_tensor):
    loss = kseg.losses.SegmentationCrossEntropy()
    logits = np.zeros((1, 2, 2, 3), "float32")
    labels = keras.ops.convert_to_tensor(HALF) if as_tensor else HALF
    with pytest.raises(ValueError, match=r"Expected `y_true` to hold integer.*0\.5"):
        loss(labels, logits)
    value = loss(np.array([[[0.0, 1.0], [2.0, 1.0]]], "float32"), logits)  # integer-valued
    np.testing.assert_allclose(float(to_numpy(value)), np.log(3.0), rtol=1e-6)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_metrics_refuse_float_labels(as_tensor):
    labels = keras.ops.convert_to_tensor(HALF) if as_tensor else HALF
    for metric in (kseg.metrics.MeanIoU(3), kseg.metrics.MeanIoU(1)):
        with pytest.raises(ValueError, match=r"Expected `y_true` to hold integer.*0\.5"):
            metric.update_state(labels, np.zeros((1, 2, 2, 1), "float32"))
        assert metric.exact_counts().sum() == 0
