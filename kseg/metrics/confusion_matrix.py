"""Streaming confusion matrix with exact integer counts, the state behind kseg's metrics."""

import keras
import numpy as np
from keras import ops

from kseg._common import check_int, squeeze_labels, standardize_data_format

# The count of every cell is kept in two int32 words: `total = high * 2**30 + low` with
# `0 <= low < 2**30`. Adding a non-negative int32 update never overflows `low` (both halves are
# below 2**30, so their sum is below 2**31), and `high` reaches 2**31 only after 2**61 pixels.
# int32 is used on every backend because JAX runs without x64 by default.
_LOW_BITS = 30
_LOW_MASK = (1 << _LOW_BITS) - 1


def _accumulate_words(high, low, counts):
    """Adds a non-negative int32 `counts` array to the two-word number `(high, low)`.

    Returns the new `(high, low)`; both are int32 with `0 <= low < 2**30`.
    """
    counts = ops.cast(counts, "int32")
    count_low = ops.bitwise_and(counts, _LOW_MASK)
    count_high = ops.right_shift(counts, _LOW_BITS)
    low_sum = low + count_low  # < 2**31: no overflow.
    new_low = ops.bitwise_and(low_sum, _LOW_MASK)
    carry = ops.right_shift(low_sum, _LOW_BITS)
    return high + count_high + carry, new_low


def _count_bins(index, num_bins, weights=None):
    """Histogram of the int32 vector `index` (values in `[0, num_bins)`) as int32.

    `ops.segment_sum` with a static `num_segments` is a scatter-add that traces under
    `jax.jit` and XLA (`ops.bincount` on JAX needs the data-dependent length and does
    not trace). On torch `torch.bincount` (via `ops.bincount`) is the fastest kernel,
    and it is exact with weights too (it sums weights in float64), while torch's
    `segment_sum` rounds int32 sums through float32. See benchmarks/README.md.
    """
    if keras.backend.backend() == "torch":
        if weights is not None:
            weights = ops.cast(weights, "int32")
        return ops.cast(ops.bincount(index, weights=weights, minlength=num_bins), "int32")
    if weights is None:
        weights = ops.ones_like(index)
    return ops.segment_sum(ops.cast(weights, "int32"), index, num_segments=num_bins)


def _argmax_channels(scores, axis):
    """`ops.argmax(scores, axis)` as int32 (first maximum wins ties).

    On JAX, XLA lowers `argmax` over a short minor axis to a slow scalar loop on CPU
    (about 30x slower than a `max`); a running compare-and-select over the channels
    gives the same classes, ties included (a later channel replaces the current best
    only when strictly greater), and vectorises. Eagerly (outside `jax.jit`) the 3*K
    small dispatches cost more than one `argmax`, so the loop is used only while
    tracing. Measured in benchmarks/README.md.
    """
    channels = scores.shape[axis]
    traced = type(scores).__name__.endswith("Tracer")  # a jax tracer, without importing jax
    if keras.backend.backend() != "jax" or not traced or channels is None or channels > 64:
        return ops.cast(ops.argmax(scores, axis=axis), "int32")
    planes = ops.unstack(scores, num=channels, axis=axis)
    best_value = planes[0]
    best_index = ops.zeros(ops.shape(best_value), dtype="int32")
    for k in range(1, channels):
        greater = planes[k] > best_value
        best_value = ops.where(greater, planes[k], best_value)
        best_index = ops.where(greater, k, best_index)
    return best_index


@keras.saving.register_keras_serializable(package="kseg")
class ConfusionMatrix(keras.metrics.Metric):
    """Streaming `(K, K)` confusion matrix of a segmentation, with exact counts.

    Row `i`, column `j` counts the pixels whose ground truth is class `i` and whose
    prediction is class `j`. Every kseg segmentation metric (`MeanIoU`,
    `PixelAccuracy`, `MeanPixelAccuracy`, `FrequencyWeightedIoU`) is a subclass that
    only changes `result()`; all of them also give per-class values
    (`per_class_iou()`, `per_class_accuracy()`), computed from the same state.

    Counting rules:
    - Pixels whose label equals `ignore_index`, or lies outside `[0, num_classes)`,
      are not counted (they never raise, whatever their value).
    - When predictions are integer label maps, pixels whose predicted class lies
      outside `[0, num_classes)` are not counted either.
    - Predictions given as scores (logits or probabilities, `num_classes` channels)
      are turned into classes with an argmax over the channel axis.

    Exactness: each cell is held in two int32 words (`high * 2**30 + low`, the carry
    is propagated at every update), so counts stay exact up to 2**61 pixels per cell
    on every backend, including JAX without x64 (a single int32 would overflow at
    2**31 and a float32 counter stops counting at 2**24). One update may add at most
    2**31 - 1 to a cell. `exact_counts()` returns the exact matrix as NumPy int64;
    `result()` and the derived metrics compute in float32.

    The state is a sum (variables use `aggregation="sum"`), so replicas of a
    distribution strategy reduce by summing. `update_state` runs eagerly, inside
    `model.fit`/`model.evaluate`, and under `jit_compile=True` (TF and JAX).

    Args:
        num_classes: int >= 2, the number of classes `K`.
        ignore_index: int or None, default 255. Label value that is not counted.
            Labels outside `[0, num_classes)` are never counted, so the default 255
            is only needed explicitly when it lies inside that range.
        data_format: `"channels_last"` or `"channels_first"`, the layout of
            `y_pred` scores (and of a `(B, 1, H, W)` label map). Defaults to
            `keras.config.image_data_format()`.
        name: string, name of the metric.
        dtype: dtype of the results (float32 by default).

    Inputs of `update_state(y_true, y_pred, sample_weight=None)`:
        y_true: integer labels `(B, H, W)` or `(B, H, W, 1)` (`(B, 1, H, W)` in
            channels_first). Float labels holding integers are accepted.
        y_pred: scores `(B, H, W, K)` (argmax taken inside) or an integer label map
            `(B, H, W)` / `(B, H, W, 1)`. It must have the spatial size of `y_true`;
            a mismatch raises `ValueError` (resize logits to the label size first).
        sample_weight: optional non-negative integer weights broadcastable to
            `(B, H, W)` (`(B,)` weighs whole images). Each pixel counts
            `round(weight)` times; 0 drops it. The counts stay integers, so
            fractional weights are rounded.

    Example:

    >>> m = kseg.metrics.ConfusionMatrix(num_classes=3)
    >>> m.update_state([[[0, 1], [2, 255]]], [[[0, 2], [2, 1]]])
    >>> m.exact_counts()  # row: ground truth, column: prediction
    array([[1, 0, 0],
           [0, 0, 1],
           [0, 0, 1]])
    """

    def __init__(self, num_classes, ignore_index=255, data_format=None, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        if ignore_index is not None:
            ignore_index = check_int("ignore_index", ignore_index, minimum=-(2**31))
        self.ignore_index = ignore_index
        self.data_format = standardize_data_format(data_format)
        shape = (self.num_classes, self.num_classes)
        self.count_high = self.add_variable(
            shape=shape, initializer="zeros", dtype="int32", aggregation="sum", name="count_high"
        )
        self.count_low = self.add_variable(
            shape=shape, initializer="zeros", dtype="int32", aggregation="sum", name="count_low"
        )

    # ------------------------------------------------------------------ inputs
    def _labels(self, y_true):
        return squeeze_labels(y_true, self.data_format)

    def _predictions(self, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        rank = len(y_pred.shape)
        channel_axis = 1 if self.data_format == "channels_first" else -1
        if rank == 4:
            channels = y_pred.shape[channel_axis]
            if channels == self.num_classes:
                return _argmax_channels(y_pred, channel_axis), True
            if channels == 1:
                y_pred = ops.squeeze(y_pred, axis=channel_axis)
            else:
                raise ValueError(
                    f"Expected `y_pred` to have num_classes={self.num_classes} channels "
                    "(scores) or 1 channel (a label map). "
                    f"Received: y_pred.shape={tuple(y_pred.shape)}"
                )
        elif rank != 3:
            raise ValueError(
                "Expected `y_pred` to be scores of shape (B, H, W, K) or a label map of shape "
                f"(B, H, W) or (B, H, W, 1). Received: y_pred.shape={tuple(y_pred.shape)}"
            )
        if "float" in str(y_pred.dtype):
            y_pred = ops.round(y_pred)
        return ops.cast(y_pred, "int32"), False

    def _flat_index(self, y_true, y_pred):
        labels = self._labels(y_true)
        preds, in_range = self._predictions(y_pred)
        for lab, pre in zip(labels.shape[1:], preds.shape[1:]):
            if lab is not None and pre is not None and lab != pre:
                raise ValueError(
                    "Expected `y_pred` to have the spatial size of `y_true`. Resize the logits "
                    "to the label size (e.g. with kseg.ops.resize) before the metric. "
                    f"Received: y_true spatial size={tuple(labels.shape[1:])}, "
                    f"y_pred spatial size={tuple(preds.shape[1:])}"
                )
        k = self.num_classes
        valid = (labels >= 0) & (labels < k)
        if not in_range:  # an argmax is always in range; a given label map may not be
            valid = valid & (preds >= 0) & (preds < k)
        if self.ignore_index is not None and 0 <= self.ignore_index < k:
            valid = valid & (labels != self.ignore_index)
        # Invalid pixels go to the extra bin k * k, which is dropped.
        index = ops.where(valid, labels * k + preds, k * k)
        return ops.reshape(index, (-1,)), labels

    def _sample_counts(self, labels, sample_weight):
        sample_weight = ops.convert_to_tensor(sample_weight)
        if "float" in str(sample_weight.dtype):
            sample_weight = ops.round(sample_weight)
        sample_weight = ops.cast(sample_weight, "int32")
        rank = len(sample_weight.shape)
        if rank == 4:
            channel_axis = 1 if self.data_format == "channels_first" else -1
            sample_weight = ops.squeeze(sample_weight, axis=channel_axis)
        elif rank in (1, 2):
            sample_weight = ops.reshape(sample_weight, (-1, 1, 1))  # (B,) or (B, 1): per image.
        return ops.reshape(ops.broadcast_to(sample_weight, ops.shape(labels)), (-1,))

    # ------------------------------------------------------------------ state
    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds the pixels of one batch to the confusion matrix."""
        index, labels = self._flat_index(y_true, y_pred)
        weights = None if sample_weight is None else self._sample_counts(labels, sample_weight)
        k = self.num_classes
        counts = _count_bins(index, k * k + 1, weights)
        self._accumulate(ops.reshape(counts[: k * k], (k, k)))

    def _accumulate(self, counts):
        """Adds a `(K, K)` array of non-negative int32 counts (each < 2**31) to the state."""
        high, low = _accumulate_words(self.count_high.value, self.count_low.value, counts)
        self.count_high.assign(high)
        self.count_low.assign(low)

    def exact_counts(self):
        """Returns the confusion matrix as exact NumPy int64 counts (eager only)."""
        high = np.asarray(ops.convert_to_numpy(self.count_high.value)).astype(np.int64)
        low = np.asarray(ops.convert_to_numpy(self.count_low.value)).astype(np.int64)
        return (high << _LOW_BITS) + low

    def confusion_matrix(self):
        """Returns the `(K, K)` matrix of counts as a float32 tensor."""
        high = ops.cast(self.count_high.value, "float32")
        low = ops.cast(self.count_low.value, "float32")
        return high * float(1 << _LOW_BITS) + low

    def _stats(self):
        cm = self.confusion_matrix()
        true_positive = ops.diagonal(cm)
        ground_truth = ops.sum(cm, axis=1)
        predicted = ops.sum(cm, axis=0)
        return cm, true_positive, ground_truth, predicted

    def per_class_iou(self):
        """IoU of every class, `(K,)` float32; NaN for a class absent from both sides."""
        _, tp, gt, pred = self._stats()
        union = gt + pred - tp
        return _safe_ratio(tp, union, fill=float("nan"))

    def per_class_accuracy(self):
        """Recall of every class (`tp / ground-truth pixels`); NaN for a class with no label."""
        _, tp, gt, _ = self._stats()
        return _safe_ratio(tp, gt, fill=float("nan"))

    def result(self):
        """The `(K, K)` confusion matrix (float32 counts)."""
        return ops.cast(self.confusion_matrix(), self.dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "data_format": self.data_format,
        }


def _safe_ratio(numerator, denominator, fill):
    """`numerator / denominator` where `denominator > 0`, else `fill`."""
    present = denominator > 0
    ratio = numerator / ops.where(present, denominator, 1.0)
    return ops.where(present, ratio, fill)


def _mean_where(values, present):
    """Mean of `values` over `present`; 0.0 when nothing is present."""
    total = ops.sum(ops.where(present, values, 0.0))
    count = ops.sum(ops.cast(present, "float32"))
    return total / ops.maximum(count, 1.0)
