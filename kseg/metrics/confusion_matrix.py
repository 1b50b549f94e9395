"""Streaming confusion matrix with exact integer counts, the state behind kseg's metrics."""

import functools

import keras
import numpy as np
from keras import ops

from kseg._backend import (
    as_backend_input,
    channel_argmax,
    count_bins,
    replica_context,
    sum_over_replicas,
    xla_function,
)
from kseg._common import (
    check_float,
    check_int,
    check_integer_valued,
    label_channel_axis,
    standardize_data_format,
    to_int32,
)

# The count of every cell is kept in two int32 words: `total = high * 2**20 + low` with
# `0 <= low < 2**20`. Adding a non-negative int32 update never overflows `low` (both halves are
# below 2**31), and the low words of up to 2048 replicas, which a distribution strategy sums
# in int32 when the metric is read (variables with `aggregation="sum"`), stay below 2**31
# (2048 * (2**20 - 1) < 2**31). A cell holds up to 2**51 / N pixels on N replicas.
# int32 is used on every backend because JAX runs without x64 by default.
_LOW_BITS = 20
_LOW_MASK = (1 << _LOW_BITS) - 1


def _accumulate_words(high, low, counts):
    """Adds a non-negative int32 `counts` array to the two-word number `(high, low)`.

    Returns the new `(high, low)`; both are int32 with `0 <= low < 2**20`.
    """
    counts = ops.cast(counts, "int32")
    count_low = ops.bitwise_and(counts, _LOW_MASK)
    count_high = ops.right_shift(counts, _LOW_BITS)
    low_sum = low + count_low  # < 2**21: no overflow.
    new_low = ops.bitwise_and(low_sum, _LOW_MASK)
    carry = ops.right_shift(low_sum, _LOW_BITS)
    return high + count_high + carry, new_low


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


# The largest out-of-range label seen is kept in an int32 that starts (and resets) here.
_NO_VALUE = -(2**31)


@functools.cache
def _update_function(*options):
    """`_plain_update_function(*options)` XLA-compiled on TF and JAX (see there)."""
    return xla_function(_plain_update_function(*options))


@functools.cache
def _plain_update_function(
    num_classes, ignore_index, mode, channel_axis, weighted, padded, threshold
):
    """`(*state, y_true, y_pred[, counts][, pixels]) -> state`, the update as plain ops.

    `state` is `(high, low, bad_high, bad_low, bad_value)`: the two words of the
    `(K, K)` matrix, of the `(2,)` out-of-range counts (labels, predicted classes) and
    the largest out-of-range label seen. `y_true` is a label map of any shape.
    `y_pred` is, by `mode`: `"scores"`, scores with the classes along `channel_axis`;
    `"labels"`, a label map of `y_true`'s size; `"binary"`, one score per pixel, class 1
    where it is above `threshold`. `counts` are int32 pixel weights of that size,
    flattened; `pixels` (with `padded`) is the number of real pixels, those after it
    are padding. Compiling the whole update makes it fast wherever it runs: eagerly,
    inside Keras' plain `tf.function` (TensorFlow's default on a CPU) and under
    `jit_compile=True`.
    """
    k = num_classes

    def update(high, low, bad_high, bad_low, bad_value, y_true, y_pred, *extra):
        labels = to_int32(ops.reshape(y_true, (-1,)))
        if mode == "labels":
            preds = to_int32(ops.reshape(y_pred, (-1,)))
        elif mode == "binary":
            scores = ops.cast(ops.reshape(y_pred, (-1,)), "float32")  # 0/1 masks too
            preds = ops.cast(scores > threshold, "int32")
        else:
            preds = ops.reshape(channel_argmax(y_pred, channel_axis), (-1,))
        in_range = (labels >= 0) & (labels < k)
        skipped = labels == ignore_index if ignore_index is not None else None
        if padded:
            padding = ops.arange(ops.shape(labels)[0], dtype="int32") >= extra[-1]
            skipped = padding if skipped is None else skipped | padding
        if skipped is None:
            valid, bad_label = in_range, ops.logical_not(in_range)
        else:
            valid = in_range & ops.logical_not(skipped)
            bad_label = ops.logical_not(in_range | skipped)
        # Bins: k * k cells, then out-of-range labels, out-of-range predicted classes,
        # and pixels that are not counted (ignored, padding).
        if mode == "labels":  # an argmax or a threshold is always in range; a label map may not be
            bad_pred = valid & ((preds < 0) | (preds >= k))
            valid = valid & ops.logical_not(bad_pred)
            other = ops.where(bad_pred, k * k + 1, k * k + 2)
        else:
            other = k * k + 2
        index = ops.where(valid, labels * k + preds, ops.where(bad_label, k * k, other))
        weights = extra[0] if weighted else None
        bins = count_bins(index, k * k + 3, weights)
        high, low = _accumulate_words(high, low, ops.reshape(bins[: k * k], (k, k)))
        bad_high, bad_low = _accumulate_words(bad_high, bad_low, bins[k * k : k * k + 2])
        seen = bad_label if weights is None else bad_label & (weights > 0)
        largest = ops.max(ops.where(seen, labels, _NO_VALUE), initial=_NO_VALUE)
        return high, low, bad_high, bad_low, ops.maximum(bad_value, largest)

    return update


def _drop_label_channel(static_shape, data_format, shape=None):
    """`shape` (default: `static_shape`) of a label map without its singleton channel."""
    shape = tuple(static_shape if shape is None else shape)
    axis = label_channel_axis(static_shape, data_format)
    return shape if axis is None else shape[:axis] + shape[axis + 1 :]


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
    `PixelAccuracy`, `MeanPixelAccuracy`, `FrequencyWeightedIoU`, `DiceScore`) is a
    subclass that only changes `result()`; all of them also give per-class values
    (`per_class_iou()`, `per_class_accuracy()`, `per_class_dice()`), computed from
    the same state.

    Counting rules:
    - Pixels whose label equals `ignore_index` are not counted.
    - Pixels whose label is neither a class (in `[0, num_classes)`) nor `ignore_index`
      are not put in the matrix but counted apart: `out_of_range_count()` gives their
      number and `out_of_range_value()` the largest such label seen, and
      `check_labels()` raises `ValueError` when there is any (a dataset's raw ids fed
      to a model with fewer classes, such as Cityscapes labelIds 0-33 for 19 classes,
      would otherwise give plausible wrong figures). `kseg.training.LabelCheck` calls it
      during `fit` / `evaluate`, `kseg.inference.evaluate` after its updates. The metric
      itself never raises for a label value: it cannot inside a compiled step.
    - When predictions are integer label maps, pixels whose predicted class lies
      outside `[0, num_classes)` are not put in the matrix either; they are counted
      apart too (`out_of_range_prediction_count()`), and `check_labels()` raises for them.
    - Predictions given as scores (logits or probabilities, `num_classes` channels)
      are turned into classes with an argmax over the channel axis.
    - Float labels must hold integers: a float label map with another value raises
      `ValueError` where its values can be seen (NumPy arrays, eager tensors). Inside
      a traced function (`model.fit` on TensorFlow and JAX) nothing can be seen, and
      float labels are rounded half to even.

    Binary mode (`num_classes=1`, a model with one sigmoid logit per pixel): the
    matrix is 2 x 2 (background 0, foreground 1), `y_pred` is one score per pixel,
    `(B, H, W, 1)` (`(B, 1, H, W)` in channels_first) or `(B, H, W)`, and a pixel is
    predicted foreground where its score is above `threshold` (default 0.0: a logit,
    sigmoid 0.5; pass `threshold=0.5` for probabilities; 0/1 masks work with either).
    Labels are 0 / 1 with `ignore_index` skipped; any other label is out of range.
    Results (and `per_class_iou()`) score both classes. `num_classes=2` with a
    1-channel integer prediction stays a label map.

    Exactness: each cell is held in two int32 words (`high * 2**20 + low`, the carry
    is propagated at every update), so counts stay exact up to 2**51 pixels per cell
    on every backend, including JAX without x64 (a single int32 would overflow at
    2**31 and a float32 counter stops counting at 2**24). One update may add at most
    2**31 - 1 to a cell. With 20 low bits the words of up to 2048 replicas can be
    summed in int32 without overflow (each replica then holds up to 2**51 / N). `exact_counts()` returns the exact matrix as NumPy int64;
    `result()` and the derived metrics compute in float32.

    The counts are sums (variables use `aggregation="sum"`), so replicas of a
    distribution strategy reduce by summing (each pixel of the global batch is counted
    once, on the replica that holds it; results read inside a step sum the replicas'
    matrices, see `confusion_matrix()`); the largest out-of-range label is read from the first
    replica (`aggregation="only_first_replica"`). `update_state` runs eagerly,
    inside `model.fit`/`model.evaluate`, and under `jit_compile=True` (TF and JAX).

    Speed: on TensorFlow and JAX the whole update is one XLA-compiled function,
    whether it is called eagerly, from Keras' plain `tf.function` (TensorFlow's
    default on a CPU) or under `jit_compile=True`; NumPy inputs are padded to a few
    pixel counts first, so that varying image sizes compile only a few times. On
    torch the argmax over the channels uses max pooling on the CPU
    (`kseg._backend.channel_argmax`). An update of an 8x256x256x21 batch takes
    2-5 ms on a 2-core CPU on every backend (benchmarks/README.md).

    Args:
        num_classes: int >= 1, the number of classes `K`; 1 means binary mode.
        ignore_index: int or None, default 255. Label value that is not counted
            (and not reported as out of range).
        data_format: `"channels_last"` or `"channels_first"`, the layout of
            `y_pred` scores (and of a `(B, 1, H, W)` label map). Defaults to
            `keras.config.image_data_format()`.
        name: string, name of the metric.
        dtype: dtype of the results (float32 by default).
        threshold: float, default 0.0. Binary mode only: a pixel is foreground where
            its score is above `threshold` (0.0 for logits, 0.5 for probabilities).

    Inputs of `update_state(y_true, y_pred, sample_weight=None)`:
        y_true: integer labels `(B, H, W)` or `(B, H, W, 1)` (`(B, 1, H, W)` in
            channels_first). Float labels holding integers are accepted.
        y_pred: scores `(B, H, W, K)` (argmax taken inside) or an integer label map
            `(B, H, W)` / `(B, H, W, 1)`; in binary mode one score per pixel. It must
            have the spatial size of `y_true`; a mismatch raises `ValueError` (resize
            logits to the label size first).
        sample_weight: optional non-negative integer weights broadcastable to
            `(B, H, W)` (`(B,)` weighs whole images). Each pixel counts
            `round(weight)` times (in the matrix or as out of range); 0 drops it.
            The counts stay integers, so fractional weights are rounded.

    Example:

    >>> m = kseg.metrics.ConfusionMatrix(num_classes=3)
    >>> m.update_state([[[0, 1], [2, 255]]], [[[0, 2], [2, 1]]])
    >>> m.exact_counts()  # row: ground truth, column: prediction
    array([[1, 0, 0],
           [0, 0, 1],
           [0, 0, 1]])
    >>> m.update_state([[[7, 1]]], [[[0, 1]]])  # label 7 is not a class
    >>> m.out_of_range_count(), m.out_of_range_value()
    (1, 7)
    """

    def __init__(
        self,
        num_classes,
        ignore_index=255,
        data_format=None,
        name=None,
        dtype=None,
        threshold=0.0,
    ):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = check_int("num_classes", num_classes, minimum=1)
        if ignore_index is not None:
            ignore_index = check_int("ignore_index", ignore_index, minimum=-(2**31))
        self.ignore_index = ignore_index
        self.data_format = standardize_data_format(data_format)
        self.threshold = check_float("threshold", threshold)
        # Binary mode (num_classes=1) scores background and foreground: a 2 x 2 matrix.
        self.binary = self.num_classes == 1
        size = 2 if self.binary else self.num_classes
        shape = (size, size)
        self.count_high = self.add_variable(
            shape=shape, initializer="zeros", dtype="int32", aggregation="sum", name="count_high"
        )
        self.count_low = self.add_variable(
            shape=shape, initializer="zeros", dtype="int32", aggregation="sum", name="count_low"
        )
        # Pixels whose label (index 0) or predicted class (index 1) is out of range.
        self.out_of_range_high = self.add_variable(
            shape=(2,),
            initializer="zeros",
            dtype="int32",
            aggregation="sum",
            name="out_of_range_high",
        )
        self.out_of_range_low = self.add_variable(
            shape=(2,),
            initializer="zeros",
            dtype="int32",
            aggregation="sum",
            name="out_of_range_low",
        )
        # A maximum does not sum across replicas: the first replica's value is read.
        self.out_of_range_label = self.add_variable(
            shape=(),
            initializer=keras.initializers.Constant(_NO_VALUE),
            dtype="int32",
            aggregation="only_first_replica",
            name="out_of_range_label",
        )

    @property
    def _size(self):
        """Side of the matrix: `num_classes`, or 2 in binary mode."""
        return 2 if self.binary else self.num_classes

    # ------------------------------------------------------------------ inputs
    def _check_inputs(self, y_true, y_pred):
        """Checks shapes; returns `(mode, channel_axis)` of `y_pred` (see `_update_function`)."""
        channel_axis = 1 if self.data_format == "channels_first" else 3
        true_shape = _drop_label_channel(tuple(y_true.shape), self.data_format)
        pred_shape = tuple(y_pred.shape)
        mode, scores_axis = ("binary" if self.binary else "labels"), None
        if len(pred_shape) == 4:
            channels = pred_shape[channel_axis]
            if channels == self.num_classes and not self.binary:
                mode, scores_axis = "scores", channel_axis
            elif channels != 1:
                expected = (
                    "1 channel (one logit per pixel, binary mode)"
                    if self.binary
                    else f"num_classes={self.num_classes} channels (scores) or 1 channel "
                    "(a label map)"
                )
                raise ValueError(
                    f"Expected `y_pred` to have {expected}. Received: y_pred.shape={pred_shape}"
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
        return mode, scores_axis

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
    def _state(self):
        return (
            self.count_high.value,
            self.count_low.value,
            self.out_of_range_high.value,
            self.out_of_range_low.value,
            self.out_of_range_label.value,
        )

    def _state_variables(self):
        return (
            self.count_high,
            self.count_low,
            self.out_of_range_high,
            self.out_of_range_low,
            self.out_of_range_label,
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds the pixels of one batch to the confusion matrix.

        Raises `ValueError` for float labels that are not integer-valued when their
        values can be seen (NumPy arrays, eager tensors).
        """
        check_integer_valued(y_true, "y_true")
        y_true, y_pred = as_backend_input(y_true), as_backend_input(y_pred)
        mode, scores_axis = self._check_inputs(y_true, y_pred)
        counts = [] if sample_weight is None else [self._pixel_counts(sample_weight, y_true)]
        padded = isinstance(y_true, np.ndarray) and isinstance(y_pred, np.ndarray)
        if padded:
            # NumPy inputs (TF and JAX; on torch they are tensors by now), e.g. from
            # kseg.inference.evaluate at each image's own size. Backend tensors go in
            # as they are: reshaping them eagerly can cost a copy (JAX).
            y_true, y_pred, counts, scores_axis, pixels = self._flatten_and_pad(
                y_true, y_pred, counts, mode, scores_axis
            )
            counts = counts + [np.asarray(pixels, np.int32)]
        # In a step on several `tf.distribute` replicas the update goes into the step's
        # graph as plain ops: a compiled `tf.function` shared by two models' metrics
        # counted every pixel twice in the second model's steps (TensorFlow 2.21).
        compiled = replica_context() is None
        update = (_update_function if compiled else _plain_update_function)(
            self._size,
            self.ignore_index,
            mode,
            scores_axis,
            sample_weight is not None,
            padded,
            self.threshold,
        )
        new_state = update(*self._state(), y_true, y_pred, *counts)
        for variable, value in zip(self._state_variables(), new_state):
            variable.assign(value)

    def _flatten_and_pad(self, y_true, y_pred, counts, mode, scores_axis):
        """NumPy inputs: pixels flattened and padded to `_bucket_size` (in NumPy).

        Returns the padded arrays, the new channel axis and the number of real pixels.
        """
        labels = to_int32(y_true.reshape(-1))
        pixels = labels.shape[0]
        length = _bucket_size(pixels)
        labels = _pad_to(labels, length, 0)  # padding is masked by the pixel count
        if mode == "labels":
            y_pred = _pad_to(to_int32(y_pred.reshape(-1)), length, 0)
        elif mode == "binary":
            y_pred = _pad_to(y_pred.reshape(-1), length, 0)
        else:
            if scores_axis == 1:
                y_pred = np.moveaxis(y_pred, 1, -1)
            y_pred = _pad_to(y_pred.reshape(pixels, self.num_classes), length, 0)
            scores_axis = 1
        counts = [_pad_to(c, length, 0) for c in counts]
        return labels, y_pred, counts, scores_axis, pixels

    def reset_state(self):
        """Zeroes the counts and forgets the out-of-range label."""
        for variable in self._state_variables()[:4]:
            variable.assign(ops.zeros(variable.shape, dtype=variable.dtype))
        self.out_of_range_label.assign(ops.full((), _NO_VALUE, dtype="int32"))

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

    def out_of_range_count(self):
        """Number of counted pixels whose label is not a class (eager only), a Python int.

        A label is out of range when it lies outside `[0, num_classes)` (binary mode:
        outside {0, 1}) and is not `ignore_index`. Such pixels are not in the matrix;
        they count `round(sample_weight)` times, like the cells.
        """
        return self._out_of_range_counts()[0]

    def out_of_range_prediction_count(self):
        """Number of pixels with a valid label whose predicted class (given as an integer
        label map) lies outside `[0, num_classes)` (eager only), a Python int."""
        return self._out_of_range_counts()[1]

    def out_of_range_value(self):
        """The largest out-of-range label seen since the last reset, or None (eager only).

        Under a distribution strategy it is the first replica's value, so it can be None
        while `out_of_range_count()` (summed over replicas) is not 0.
        """
        value = int(np.asarray(ops.convert_to_numpy(self.out_of_range_label.value)))
        return None if value == _NO_VALUE else value

    def check_labels(self):
        """Raises `ValueError` when a pixel's label, or predicted class, was out of range.

        Call it after updates (eagerly), e.g. at the end of each batch
        (`kseg.training.LabelCheck` does so in `fit` and `evaluate`). The message names
        the metric, the number of such pixels, one offending label (the largest seen),
        the valid range and the ignore index.
        """
        labels, preds = self._out_of_range_counts()
        valid = "0 or 1 (binary mode)" if self.binary else f"in [0, {self.num_classes})"
        if labels:
            value = self.out_of_range_value()
            seen = "not recorded" if value is None else str(value)
            raise ValueError(
                f"Metric '{self.name}' counted {labels} pixel(s) whose label is not a class: "
                f"expected labels {valid} or the ignore index "
                f"(ignore_index={self.ignore_index}). Received: out-of-range labels, the "
                f"largest {seen}. Remap the dataset's ids to class indices (e.g. Cityscapes "
                "labelIds -> trainIds, with 255 for the void classes), or set `num_classes` "
                "and `ignore_index` to match the data."
            )
        if preds:
            raise ValueError(
                f"Metric '{self.name}' counted {preds} pixel(s) whose predicted class is not a "
                f"class: expected predicted label maps {valid}. Received: out-of-range "
                "predicted classes. Check that the model's number of classes matches "
                f"num_classes={self.num_classes}."
            )

    def _out_of_range_counts(self):
        high = np.asarray(ops.convert_to_numpy(self.out_of_range_high.value)).astype(np.int64)
        low = np.asarray(ops.convert_to_numpy(self.out_of_range_low.value)).astype(np.int64)
        return [int(c) for c in (high << _LOW_BITS) + low]

    def confusion_matrix(self):
        """Returns the `(K, K)` matrix of counts as a float32 tensor.

        Inside a step on several `tf.distribute` replicas (where each replica reads its
        own words) the matrices are summed over the replicas, so that the results Keras
        logs after every batch are those of all the pixels seen. They are summed in
        float32 (TensorFlow keeps int32 tensors in host memory, which its all-reduce
        refuses next to device tensors), as exact as the float32 matrix itself.
        """
        high = ops.cast(self.count_high.value, "float32")
        low = ops.cast(self.count_low.value, "float32")
        matrix = high * float(1 << _LOW_BITS) + low
        if replica_context() is not None:
            matrix = sum_over_replicas(matrix)
        return matrix

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

    def per_class_dice(self):
        """Dice (F1) score of every class, `2 tp / (gt + pred)`, `(K,)` float32.

        `gt + pred = 2 tp + fp + fn`, so this is `2 TP / (2 TP + FP + FN)`, the F1
        score of the class's pixels. NaN for a class absent from both sides.
        """
        _, tp, gt, pred = self._stats()
        return _safe_ratio(2.0 * tp, gt + pred, fill=float("nan"))

    def result(self):
        """The `(K, K)` confusion matrix (float32 counts)."""
        return ops.cast(self.confusion_matrix(), self.dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "data_format": self.data_format,
            "threshold": self.threshold,
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
