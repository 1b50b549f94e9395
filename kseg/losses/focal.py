"""Focal loss (multi-class softmax and binary sigmoid) with an ignore index and pixel weights."""

import keras
import numpy as np
from keras import ops

from kseg._common import check_float, check_int, standardize_data_format
from kseg.losses._utils import (
    PixelLoss,
    check_reduction,
    pixel_weights,
    prepare_dense,
    reduce_values,
)


@keras.saving.register_keras_serializable(package="kseg")
class FocalLoss(PixelLoss):
    """Focal loss over the labelled pixels of a segmentation batch.

    The focal loss of Lin et al., "Focal Loss for Dense Object Detection", ICCV
    2017, eq. 5, on the softmax probability `p_t` of every pixel's true class:

        FL_i = -alpha_t * (1 - p_t) ** gamma * log(p_t)

    and the loss is the mean over the labelled pixels of the batch,
    `sum_i s_i * FL_i / sum_i s_i` (`s_i` the pixel weights, 1 by default): pixels
    labelled `ignore_index`, or with a label outside `[0, K)`, are left out of both
    sums. The count is not weighted by `alpha` (as torchvision's
    `sigmoid_focal_loss` and the paper, which normalise by a number of anchors);
    `SegmentationCrossEntropy(class_weights=...)` instead divides by the summed
    class weights, so the two agree when `alpha` is None. `gamma=0, alpha=None` is
    exactly `SegmentationCrossEntropy()`. A batch without any labelled pixel gives 0,
    with zero gradients. The modulating factor `(1 - p_t) ** gamma` is
    differentiated, as in the paper.

    `alpha`: None (no weighting, the default, as segmentation_models_pytorch's
    `FocalLoss`), one weight per class (`alpha_t = alpha[y_i]`), or a number in
    [0, 1] for two classes: `alpha` for the foreground (class 1) and `1 - alpha` for
    the background (class 0), the paper's alpha-balanced form (0.25 in its
    experiments). A number with more than two classes is refused: give a list.

    Binary segmentation: with a one-channel `y_pred` (one sigmoid logit per pixel, a
    model built with `num_classes=1`), `p_t` is `sigmoid(x)` for label 1 and
    `1 - sigmoid(x)` for label 0, which is the sigmoid focal loss of the paper
    (torchvision's `sigmoid_focal_loss` with the mean over the labelled pixels);
    labels 0 and 1 are the classes, and a list `alpha` has two entries (background,
    foreground). Internally the logit `x` becomes the two softmax logits `[0, x]`.

    Per-pixel weights: a `sample_weight` of shape `(B, H, W)`, `(B, H, W, 1)` or
    `(B,)` gives the weights `s_i` above (the weighted mean over the labelled
    pixels; pixels of weight 0 are not counted).

    Reduction. Let `v_i = s_i * FL_i` be the value of pixel `i`, 0 on every pixel
    that is not counted (ignored, a label outside `[0, K)`, or a weight of 0). Then:
    - `"sum_over_batch_size"` (the default) and its alias `"mean"`: the mean above,
      `sum_i v_i / sum_i s_i` over the labelled pixels. It is Keras' sum over the
      batch divided by its size when the pixels not counted are masked elements
      (Keras divides by the number of unmasked elements) and there are no pixel
      weights; with pixel weights the divisor is their sum, not the number of pixels
      (Keras' `"sum_over_batch_size"` would divide by the pixel count): kseg's default
      has always been the weighted mean. `alpha` is never in the divisor.
    - `"mean_with_sample_weight"`: the same value, which is Keras' definition exactly
      (the weighted sum divided by the sum of the weights, masked pixels weighing 0).
    - `"sum"`: `sum_i v_i`, a scalar.
    - `"none"` or None: the `(B, H, W)` map of `v_i`, 0 on the pixels not counted (as
      torch's `reduction="none"`, times the pixel weights as Keras weighs unreduced
      values). The sum of the map is the `"sum"` value.
    On several replicas a scalar is that of the global batch, of which each replica
    returns its share (divided by the number of replicas, see `PixelLoss`); the map of
    `"none"` is the replica's own pixels' values, not divided.

    Everything computes in float32, also under a mixed-precision policy.

    Args:
        alpha: None, a number in [0, 1] (two classes), or a sequence of `K`
            non-negative floats.
        gamma: float >= 0, default 2.0 (the paper's choice).
        ignore_index: int or None, default 255. Label value that is skipped.
        from_logits: bool, default True. Whether `y_pred` holds logits; otherwise
            probabilities (renormalised over the channels, clipped at 1e-7).
        data_format: layout of `y_pred`; defaults to `keras.config.image_data_format()`.
        reduction: `"sum_over_batch_size"` (default), `"mean"`,
            `"mean_with_sample_weight"`, `"sum"`, `"none"` or None; see "Reduction".
        name: default `"focal_loss"`.
        dtype: loss dtype, float32 by default.

    Inputs:
        y_true: labels `(B, H, W)` or `(B, H, W, 1)`, integers.
        y_pred: `(B, H, W, K)` logits or probabilities, same spatial size; `K = 1`
            for binary segmentation (a sigmoid logit or probability).
        sample_weight: optional per-pixel `(B, H, W)` / `(B, H, W, 1)` or per-image
            `(B,)` non-negative weights.

    Example:

    >>> loss = kseg.losses.FocalLoss(gamma=2.0, alpha=[0.5, 1.0, 2.0])
    >>> model.compile(optimizer="sgd", loss=loss)
    """

    def __init__(
        self,
        alpha=None,
        gamma=2.0,
        ignore_index=255,
        from_logits=True,
        data_format=None,
        reduction="sum_over_batch_size",
        name="focal_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=check_reduction(reduction), dtype=dtype)
        self.alpha = _check_alpha(alpha)
        self.gamma = check_float("gamma", gamma, minimum=0.0)
        if ignore_index is not None:
            ignore_index = check_int("ignore_index", ignore_index, minimum=-(2**31))
        self.ignore_index = ignore_index
        self.from_logits = bool(from_logits)
        self.data_format = standardize_data_format(data_format)

    def compute_loss(self, y_true, y_pred, sample_weight):
        labels, valid, scores = prepare_dense(
            y_true, y_pred, self.data_format, self.ignore_index, self.from_logits
        )
        num_classes = scores.shape[-1]
        alpha_table = self._alpha_table(num_classes)
        weights = pixel_weights(sample_weight, labels, self.data_format)
        if self.from_logits:
            log_probs = ops.log_softmax(scores, axis=-1)
        else:
            probs = scores / ops.maximum(ops.sum(scores, axis=-1, keepdims=True), 1e-7)
            log_probs = ops.log(ops.clip(probs, 1e-7, 1.0))
        true_log_prob = ops.squeeze(
            ops.take_along_axis(log_probs, ops.expand_dims(labels, -1), axis=-1), -1
        )
        pixel_loss = -true_log_prob
        if self.gamma > 0.0:
            # 1 - p_t as -expm1(log p_t): exact also where p_t is close to 1.
            miss = -ops.expm1(true_log_prob)
            if self.gamma < 1.0:
                # d/dx x**gamma is infinite at 0 for gamma < 1 (NaN times a zero
                # gradient); a floor keeps it finite and changes no value above 1e-12.
                miss = ops.maximum(miss, 1e-12)
            pixel_loss = ops.power(miss, self.gamma) * pixel_loss
        if alpha_table is not None:
            pixel_loss = ops.take(alpha_table, labels) * pixel_loss

        pixel_weight = ops.ones_like(pixel_loss)
        if weights is not None:
            pixel_weight = pixel_weight * weights
            valid = valid & (weights > 0)
        pixel_weight = ops.where(valid, pixel_weight, 0.0)
        return reduce_values(pixel_weight * pixel_loss, self.reduction, pixel_weight)

    def _alpha_table(self, num_classes):
        """`alpha` as a float32 tensor of `num_classes` class weights, or None."""
        if self.alpha is None:
            return None
        if isinstance(self.alpha, float):
            if num_classes != 2:
                raise ValueError(
                    "A number `alpha` weighs the foreground of two classes (a one-channel "
                    "binary `y_pred`, or two channels); for more classes give one weight per "
                    f"class. Received: alpha={self.alpha} with {num_classes} classes"
                )
            table = [1.0 - self.alpha, self.alpha]
        else:
            if len(self.alpha) != num_classes:
                raise ValueError(
                    f"Expected `alpha` to have one weight per class ({num_classes}; a "
                    "one-channel binary `y_pred` has two: background, foreground). "
                    f"Received: alpha={self.alpha}"
                )
            table = self.alpha
        return ops.convert_to_tensor(table, dtype="float32")

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "gamma": self.gamma,
            "ignore_index": self.ignore_index,
            "from_logits": self.from_logits,
            "data_format": self.data_format,
        }


def _check_alpha(alpha):
    """`alpha` as None, a float in [0, 1], or a list of at least two non-negative floats."""
    if alpha is None:
        return None
    if isinstance(alpha, (int, float, np.integer, np.floating)) and not isinstance(alpha, bool):
        return check_float("alpha", alpha, minimum=0.0, maximum=1.0)
    if isinstance(alpha, (str, bytes, bool)):
        raise TypeError(
            "Expected `alpha` to be None, a number in [0, 1] or a sequence of class weights. "
            f"Received: alpha={alpha!r}"
        )
    try:
        weights = np.asarray(alpha, dtype="float64")
    except (TypeError, ValueError):
        raise TypeError(
            "Expected `alpha` to be None, a number in [0, 1] or a sequence of class weights. "
            f"Received: alpha={alpha!r}"
        ) from None
    if (
        weights.ndim != 1
        or weights.size < 2
        or not np.all(np.isfinite(weights))
        or np.any(weights < 0)
    ):
        raise ValueError(
            "Expected `alpha` to be None, a number in [0, 1] or a sequence of one "
            f"non-negative weight per class (at least two). Received: alpha={alpha!r}"
        )
    return [float(w) for w in weights]
