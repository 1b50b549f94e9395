"""Streaming confusion matrix with exact integer counts, the state behind kseg's metrics."""

import functools

import keras
import numpy as np
from keras import ops

from kseg._common import (
    check_int,
    label_channel_axis,
    standardize_data_format,
    to_int32,
    valid_mask,
)
from kseg.ops._backend import channel_argmax, xla_function

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


def _bucket_size(pixels):
    """Padded length of `pixels` flattened pixels given as NumPy arrays (TF and JAX).

    The update is compiled once per input shape there; flattening and padding NumPy
    inputs to a few lengths (powers of two up to 2**16, then multiples of 2**16)
    keeps the number of compilations small when image sizes vary (evaluation at
    each image's own size), at the cost of at most one copy.
    """
    if pixels <= 1 << 16:
        return max(256, 1 << (pixels - 1).bit_length())
    return -(-pixels // (1 << 16)) * (1 << 16)


@functools.cache
def _update_function(num_classes, ignore_index, channel_axis, weighted):
    """`(high, low, y_true, y_pred[, counts]) -> (high, low)`, XLA-compiled on TF and JAX.

    `y_true` is a label map of any shape; `y_pred` holds scores with the classes
    along `channel_axis`, or (`channel_axis=None`) a label map of `y_true`'s size;
    `counts` are int32 pixel weights of that size, flattened. Compiling the whole
    update makes it fast wherever it runs: eagerly, inside Keras' plain
    `tf.function` (TensorFlow's default on a CPU) and under `jit_compile=True`.
    """
    k = num_classes

    def update(high, low, y_true, y_pred, *counts):
        labels = to_int32(ops.reshape(y_true, (-1,)))
        if channel_axis is None:
            preds = to_int32(ops.reshape(y_pred, (-1,)))
        else:
            preds = ops.reshape(channel_argmax(y_pred, channel_axis), (-1,))
        valid = valid_mask(labels, k, ignore_index)
        if channel_axis is None:  # an argmax is always in range; a given label map may not be
            valid = valid & (preds >= 0) & (preds < k)
        # Invalid pixels go to the extra bin k * k, which is dropped.
        index = ops.where(valid, labels * k + preds, k * k)
        bins = _count_bins(index, k * k + 1, counts[0] if weighted else None)
        return _accumulate_words(high, low, ops.reshape(bins[: k * k], (k, k)))

    return xla_function(update)


def _drop_label_channel(static_shape, data_format, shape=None):
    """`shape` (default: `static_shape`) of a label map without its singleton channel."""
    shape = tuple(static_shape if shape is None else shape)
    axis = label_channel_axis(static_shape, data_format)
    return shape if axis is None else shape[:axis] + shape[axis + 1 :]


def _as_array(x):
    """Backend tensors and NumPy arrays as they are, other inputs as NumPy arrays.

    On torch everything becomes a tensor (its fast argmax works on tensors).
    """
    if keras.backend.backend() == "torch":
        return ops.convert_to_tensor(x)
    if isinstance(x, np.ndarray) or ops.is_tensor(x):
        return x
    return np.asarray(x)


def _pad_to(x, length, value):
    """Pads the leading axis of `x` to `length` with `value` (NumPy or backend tensors)."""
    extra = length - int(x.shape[0])
    if extra == 0:
        return x
    widths = [(0, extra)] + [(0, 0)] * (len(x.shape) - 1)
    if isinstance(x, np.ndarray):
        return np.pad(x, widths, constant_values=value)
    return ops.pad(x, widths, constant_values=value)


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

    Speed: on TensorFlow and JAX the whole update is one XLA-compiled function,
    whether it is called eagerly, from Keras' plain `tf.function` (TensorFlow's
    default on a CPU) or under `jit_compile=True`; NumPy inputs are padded to a few
    pixel counts first, so that varying image sizes compile only a few times. On
    torch the argmax over the channels uses max pooling on the CPU
    (`kseg.ops._backend.channel_argmax`). An update of an 8x256x256x21 batch takes
    2-5 ms on a 2-core CPU on every backend (benchmarks/README.md).

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
    def _check_inputs(self, y_true, y_pred):
        """Checks shapes; returns the channel axis of `y_pred` scores, None for a label map."""
        channel_axis = 1 if self.data_format == "channels_first" else 3
        true_shape = _drop_label_channel(tuple(y_true.shape), self.data_format)
        pred_shape = tuple(y_pred.shape)
        scores_axis = None
        if len(pred_shape) == 4:
            channels = pred_shape[channel_axis]
            if channels == self.num_classes:
                scores_axis = channel_axis
            elif channels != 1:
                raise ValueError(
                    f"Expected `y_pred` to have num_classes={self.num_classes} channels "
                    "(scores) or 1 channel (a label map). "
                    f"Received: y_pred.shape={pred_shape}"
                )
            pred_shape = pred_shape[:channel_axis] + pred_shape[channel_axis + 1 :]
        elif len(pred_shape) != 3:
            raise ValueError(
                "Expected `y_pred` to be scores of shape (B, H, W, K) or a label map of shape "
                f"(B, H, W) or (B, H, W, 1). Received: y_pred.shape={pred_shape}"
            )
        for lab, pre in zip(true_shape[1:], pred_shape[1:]):
            if lab is not None and pre is not None and lab != pre:
                raise ValueError(
                    "Expected `y_pred` to have the spatial size of `y_true`. Resize the logits "
                    "to the label size (e.g. with kseg.ops.resize) before the metric. "
                    f"Received: y_true spatial size={true_shape[1:]}, "
                    f"y_pred spatial size={pred_shape[1:]}"
                )
        return scores_axis

    def _pixel_counts(self, sample_weight, y_true):
        """Integer weights broadcast to the `(B, H, W)` pixels, flattened: `round(weight)`."""
        sample_weight = ops.convert_to_tensor(to_int32(sample_weight))
        rank = len(sample_weight.shape)
        if rank == 4:
            channel_axis = 1 if self.data_format == "channels_first" else -1
            sample_weight = ops.squeeze(sample_weight, axis=channel_axis)
        elif rank in (1, 2):
            sample_weight = ops.reshape(sample_weight, (-1, 1, 1))  # (B,) or (B, 1): per image.
        shape = _drop_label_channel(tuple(y_true.shape), self.data_format, ops.shape(y_true))
        return ops.reshape(ops.broadcast_to(sample_weight, shape), (-1,))

    # ------------------------------------------------------------------ state
    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds the pixels of one batch to the confusion matrix."""
        y_true, y_pred = _as_array(y_true), _as_array(y_pred)
        scores_axis = self._check_inputs(y_true, y_pred)
        counts = [] if sample_weight is None else [self._pixel_counts(sample_weight, y_true)]
        state = (self.count_high.value, self.count_low.value)
        if isinstance(y_true, np.ndarray) and isinstance(y_pred, np.ndarray):
            # NumPy inputs (TF and JAX; on torch they are tensors by now), e.g. from
            # kseg.inference.evaluate at each image's own size. Backend tensors go in
            # as they are: reshaping them eagerly can cost a copy (JAX).
            y_true, y_pred, counts, scores_axis = self._flatten_and_pad(
                y_true, y_pred, counts, scores_axis
            )
        update = _update_function(self.num_classes, self.ignore_index, scores_axis, bool(counts))
        high, low = update(*state, y_true, y_pred, *counts)
        self.count_high.assign(high)
        self.count_low.assign(low)

    def _flatten_and_pad(self, y_true, y_pred, counts, scores_axis):
        """NumPy inputs: pixels flattened and padded to `_bucket_size` (in NumPy)."""
        labels = to_int32(y_true.reshape(-1))
        pixels = labels.shape[0]
        length = _bucket_size(pixels)
        labels = _pad_to(labels, length, -1)  # -1 is never counted
        if scores_axis is None:
            y_pred = _pad_to(to_int32(y_pred.reshape(-1)), length, -1)
        else:
            if scores_axis == 1:
                y_pred = np.moveaxis(y_pred, 1, -1)
            y_pred = _pad_to(y_pred.reshape(pixels, self.num_classes), length, 0)
            scores_axis = 1
        counts = [_pad_to(c, length, 0) for c in counts]
        return labels, y_pred, counts, scores_axis

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
