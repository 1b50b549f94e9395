"""Mean IoU, pixel accuracy, mean pixel accuracy, frequency-weighted IoU and Dice (F1)."""

import keras
from keras import ops

from kseg.metrics.confusion_matrix import ConfusionMatrix, _mean_where, _safe_ratio


@keras.saving.register_keras_serializable(package="kseg")
class MeanIoU(ConfusionMatrix):
    """Mean intersection over union over the classes that occur.

    `IoU_k = tp_k / (gt_k + pred_k - tp_k)` from the confusion matrix, then the mean
    over classes. A class absent from both the ground truth and the prediction
    (union 0) has no IoU and is left out of the mean, as in mmseg (`np.nanmean` of
    the per-class IoU) and torchmetrics' `JaccardIndex(average="macro")`; a class that is
    predicted but absent from the ground truth counts with IoU 0. With an empty
    matrix (nothing counted yet) the result is 0.0.

    Reference: Long et al., "Fully Convolutional Networks for Semantic
    Segmentation", CVPR 2015, section 5 (the metric definitions).

    All kseg segmentation metrics share the state and input rules of
    `ConfusionMatrix`: labels `(B, H, W)` or `(B, H, W, 1)`, predictions as scores
    `(B, H, W, K)` (argmax inside) or label maps; `ignore_index` (default 255) is not
    counted; labels or predicted classes outside `[0, num_classes)` are not in the
    matrix but counted apart (`out_of_range_count()`, `check_labels()` raises); exact
    int counts; the per-class values are available as `per_class_iou()`,
    `per_class_accuracy()` and `per_class_dice()`.
    `num_classes=1` is binary mode: one logit per pixel, foreground above `threshold`,
    a 2 x 2 matrix and results over both classes.

    Args:
        num_classes: int >= 1 (1: binary mode, one logit per pixel).
        ignore_index: int or None, default 255.
        data_format: layout of score predictions; defaults to
            `keras.config.image_data_format()`.
        name: default `"mean_iou"`.
        dtype: result dtype.
        threshold: binary mode only: foreground where the score is above it.
            Defaults to 0.0 (logits).

    Example:

    >>> m = kseg.metrics.MeanIoU(num_classes=3)
    >>> m.update_state([[[0, 0, 1, 255]]], [[[0, 1, 1, 2]]])
    >>> float(m.result())  # IoU 0.5 (class 0) and 0.5 (class 1); class 2 absent
    0.5
    """

    def __init__(
        self,
        num_classes,
        ignore_index=255,
        data_format=None,
        name="mean_iou",
        dtype=None,
        threshold=0.0,
    ):
        super().__init__(
            num_classes, ignore_index, data_format, name=name, dtype=dtype, threshold=threshold
        )

    def result(self):
        _, tp, gt, pred = self._stats()
        union = gt + pred - tp
        iou = _safe_ratio(tp, union, fill=0.0)
        return ops.cast(_mean_where(iou, union > 0), self.dtype)


@keras.saving.register_keras_serializable(package="kseg")
class PixelAccuracy(ConfusionMatrix):
    """Overall pixel accuracy: correctly classified pixels over counted pixels.

    `sum_k tp_k / sum_ij n_ij`. The result of an empty matrix is 0.0.

    All kseg segmentation metrics share the state and input rules of
    `ConfusionMatrix`: labels `(B, H, W)` or `(B, H, W, 1)`, predictions as scores
    `(B, H, W, K)` (argmax inside) or label maps; `ignore_index` (default 255) is not
    counted; labels or predicted classes outside `[0, num_classes)` are not in the
    matrix but counted apart (`out_of_range_count()`, `check_labels()` raises); exact
    int counts; the per-class values are available as `per_class_iou()`,
    `per_class_accuracy()` and `per_class_dice()`.
    `num_classes=1` is binary mode: one logit per pixel, foreground above `threshold`,
    a 2 x 2 matrix and results over both classes.

    Args:
        num_classes: int >= 1 (1: binary mode, one logit per pixel).
        ignore_index: int or None, default 255.
        data_format: layout of score predictions.
        name: default `"pixel_accuracy"`.
        dtype: result dtype.
        threshold: binary mode only: foreground where the score is above it.
            Defaults to 0.0 (logits).

    Example:

    >>> m = kseg.metrics.PixelAccuracy(num_classes=3)
    >>> m.update_state([[[0, 0, 1, 255]]], [[[0, 1, 1, 2]]])
    >>> round(float(m.result()), 4)
    0.6667
    """

    def __init__(
        self,
        num_classes,
        ignore_index=255,
        data_format=None,
        name="pixel_accuracy",
        dtype=None,
        threshold=0.0,
    ):
        super().__init__(
            num_classes, ignore_index, data_format, name=name, dtype=dtype, threshold=threshold
        )

    def result(self):
        cm, tp, _, _ = self._stats()
        total = ops.sum(cm)
        return ops.cast(ops.sum(tp) / ops.maximum(total, 1.0), self.dtype)


@keras.saving.register_keras_serializable(package="kseg")
class MeanPixelAccuracy(ConfusionMatrix):
    """Mean over classes of the per-class accuracy `tp_k / gt_k`.

    Classes with no ground-truth pixel have no accuracy and are left out of the mean
    (mmseg takes the `nanmean` of the per-class accuracy). The result of an empty
    matrix is 0.0.

    All kseg segmentation metrics share the state and input rules of
    `ConfusionMatrix`: labels `(B, H, W)` or `(B, H, W, 1)`, predictions as scores
    `(B, H, W, K)` (argmax inside) or label maps; `ignore_index` (default 255) is not
    counted; labels or predicted classes outside `[0, num_classes)` are not in the
    matrix but counted apart (`out_of_range_count()`, `check_labels()` raises); exact
    int counts; the per-class values are available as `per_class_iou()`,
    `per_class_accuracy()` and `per_class_dice()`.
    `num_classes=1` is binary mode: one logit per pixel, foreground above `threshold`,
    a 2 x 2 matrix and results over both classes.

    Args:
        num_classes: int >= 1 (1: binary mode, one logit per pixel).
        ignore_index: int or None, default 255.
        data_format: layout of score predictions.
        name: default `"mean_pixel_accuracy"`.
        dtype: result dtype.
        threshold: binary mode only: foreground where the score is above it.
            Defaults to 0.0 (logits).

    Example:

    >>> m = kseg.metrics.MeanPixelAccuracy(num_classes=3)
    >>> m.update_state([[[0, 0, 1, 255]]], [[[0, 1, 1, 2]]])
    >>> float(m.result())  # (1/2 + 1/1) / 2; class 2 has no label
    0.75
    """

    def __init__(
        self,
        num_classes,
        ignore_index=255,
        data_format=None,
        name="mean_pixel_accuracy",
        dtype=None,
        threshold=0.0,
    ):
        super().__init__(
            num_classes, ignore_index, data_format, name=name, dtype=dtype, threshold=threshold
        )

    def result(self):
        _, tp, gt, _ = self._stats()
        acc = _safe_ratio(tp, gt, fill=0.0)
        return ops.cast(_mean_where(acc, gt > 0), self.dtype)


@keras.saving.register_keras_serializable(package="kseg")
class FrequencyWeightedIoU(ConfusionMatrix):
    """Frequency-weighted IoU: per-class IoU weighted by the class' label frequency.

    `sum_k (gt_k / sum_j gt_j) * IoU_k` (Long et al., CVPR 2015, section 5). Classes
    without ground-truth pixels have weight 0. The result of an empty matrix is 0.0.

    All kseg segmentation metrics share the state and input rules of
    `ConfusionMatrix`: labels `(B, H, W)` or `(B, H, W, 1)`, predictions as scores
    `(B, H, W, K)` (argmax inside) or label maps; `ignore_index` (default 255) is not
    counted; labels or predicted classes outside `[0, num_classes)` are not in the
    matrix but counted apart (`out_of_range_count()`, `check_labels()` raises); exact
    int counts; the per-class values are available as `per_class_iou()`,
    `per_class_accuracy()` and `per_class_dice()`.
    `num_classes=1` is binary mode: one logit per pixel, foreground above `threshold`,
    a 2 x 2 matrix and results over both classes.

    Args:
        num_classes: int >= 1 (1: binary mode, one logit per pixel).
        ignore_index: int or None, default 255.
        data_format: layout of score predictions.
        name: default `"frequency_weighted_iou"`.
        dtype: result dtype.
        threshold: binary mode only: foreground where the score is above it.
            Defaults to 0.0 (logits).

    Example:

    >>> m = kseg.metrics.FrequencyWeightedIoU(num_classes=3)
    >>> m.update_state([[[0, 0, 1, 255]]], [[[0, 1, 1, 2]]])
    >>> float(m.result())  # 2/3 * 0.5 + 1/3 * 0.5
    0.5
    """

    def __init__(
        self,
        num_classes,
        ignore_index=255,
        data_format=None,
        name="frequency_weighted_iou",
        dtype=None,
        threshold=0.0,
    ):
        super().__init__(
            num_classes, ignore_index, data_format, name=name, dtype=dtype, threshold=threshold
        )

    def result(self):
        _, tp, gt, pred = self._stats()
        union = gt + pred - tp
        iou = _safe_ratio(tp, union, fill=0.0)
        total = ops.sum(gt)
        return ops.cast(ops.sum(gt * iou) / ops.maximum(total, 1.0), self.dtype)


@keras.saving.register_keras_serializable(package="kseg")
class DiceScore(ConfusionMatrix):
    """Mean Dice score (F1 score) over the classes that occur, from exact pixel counts.

    `Dice_k = 2 tp_k / (gt_k + pred_k) = 2 TP / (2 TP + FP + FN)`: the Dice
    coefficient of the class's predicted and labelled pixel sets, which is their F1
    score (the harmonic mean of precision and recall). Then the mean over classes; a
    class absent from both the ground truth and the prediction is left out of the
    mean (the classes MeanIoU averages), as in mmseg's `mDice` (`np.nanmean` of the
    per-class Dice); a class that is predicted but absent from the ground truth
    counts with 0. Per class:
    `per_class_dice()` (NaN for absent classes), on this metric and on every other
    kseg metric. With an empty matrix the result is 0.0. A class's Dice and IoU
    determine each other (`Dice = 2 IoU / (1 + IoU)`), but their means do not.

    `F1Score` is the same metric under that name. It is not `keras.metrics.F1Score`,
    which scores classification: one-hot or multi-label targets `(B, K)` against
    probabilities `(B, K)`, thresholded, in float counts, without an ignore index;
    this one counts the pixels of sparse label maps in the confusion matrix.

    The input rules are those of `ConfusionMatrix`: labels `(B, H, W)` or
    `(B, H, W, 1)`, predictions as scores `(B, H, W, K)` (argmax inside) or label
    maps; `ignore_index` (default 255) is not counted; labels or predicted classes
    outside `[0, num_classes)` are not in the matrix but counted apart
    (`out_of_range_count()`, `check_labels()` raises); exact int counts.
    `num_classes=1` is binary mode: one logit per pixel, foreground above `threshold`,
    a 2 x 2 matrix and a mean over both classes (the foreground's alone is
    `per_class_dice()[1]`).

    Args:
        num_classes: int >= 1 (1: binary mode, one logit per pixel).
        ignore_index: int or None, default 255.
        data_format: layout of score predictions; defaults to
            `keras.config.image_data_format()`.
        name: default `"dice_score"`.
        dtype: result dtype.
        threshold: binary mode only: foreground where the score is above it.
            Defaults to 0.0 (logits).

    Example:

    >>> m = kseg.metrics.DiceScore(num_classes=3)
    >>> m.update_state([[[0, 0, 1, 255]]], [[[0, 1, 1, 2]]])
    >>> round(float(m.result()), 4)  # Dice 2/3 (class 0) and 2/3 (class 1); class 2 absent
    0.6667
    """

    def __init__(
        self,
        num_classes,
        ignore_index=255,
        data_format=None,
        name="dice_score",
        dtype=None,
        threshold=0.0,
    ):
        super().__init__(
            num_classes, ignore_index, data_format, name=name, dtype=dtype, threshold=threshold
        )

    def result(self):
        _, tp, gt, pred = self._stats()
        total = gt + pred
        dice = _safe_ratio(2.0 * tp, total, fill=0.0)
        return ops.cast(_mean_where(dice, total > 0), self.dtype)


@keras.saving.register_keras_serializable(package="kseg")
class F1Score(DiceScore):
    """`DiceScore` under the name F1: the mean F1 score of the pixels of each class.

    The same values as `DiceScore` (see there), logged as `"f1_score"`. Unlike
    `keras.metrics.F1Score` (classification: one-hot targets and probabilities
    `(B, K)`, a threshold, no ignore index), it takes segmentation label maps and
    counts pixels exactly in a confusion matrix.

    Args:
        num_classes: int >= 1 (1: binary mode, one logit per pixel).
        ignore_index: int or None, default 255.
        data_format: layout of score predictions.
        name: default `"f1_score"`.
        dtype: result dtype.
        threshold: binary mode only: foreground where the score is above it.
            Defaults to 0.0 (logits).
    """

    def __init__(
        self,
        num_classes,
        ignore_index=255,
        data_format=None,
        name="f1_score",
        dtype=None,
        threshold=0.0,
    ):
        super().__init__(
            num_classes, ignore_index, data_format, name=name, dtype=dtype, threshold=threshold
        )
