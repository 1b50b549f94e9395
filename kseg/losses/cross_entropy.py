"""Pixel-wise cross-entropy with an ignore index, class weights and OHEM."""

import keras
import numpy as np
from keras import ops

from kseg._backend import gather_over_replicas
from kseg._common import check_float, check_int, standardize_data_format
from kseg.losses._utils import (
    PixelLoss,
    check_reduction,
    pixel_weights,
    prepare_dense,
    reduce_values,
)


@keras.saving.register_keras_serializable(package="kseg")
class SegmentationCrossEntropy(PixelLoss):
    """Cross-entropy over the labelled pixels of a segmentation batch.

    The loss is the mean over all non-ignored pixels of the batch (pixels are pooled
    across images, as `torch.nn.functional.cross_entropy(..., ignore_index=...)` with
    `reduction="mean"` does):

        loss = sum_i w[y_i] * l_i / sum_i w[y_i]

    over the kept pixels `i`, with `l_i = -log p_i[y_i]` and `w` the class weights
    (all ones by default), the same weighted mean as torch's `weight=` argument.
    Pixels labelled `ignore_index`, or with a label outside `[0, K)`, are not kept. A
    batch without any kept pixel gives 0 (not NaN), with zero gradients. The loss
    cannot see such labels in a compiled step, so it does not report them: kseg's
    metrics count them, and kseg's training and evaluation code (the `LabelCheck`
    callback of `kseg.training.segmentation_callbacks`, `kseg.inference.evaluate`,
    the recipes) stop with an error that names them.

    Per-pixel weights: a `sample_weight` passed to the loss (or to `model.fit`) of
    shape `(B, H, W)`, `(B, H, W, 1)` or `(B,)` multiplies each pixel's weight, so
    the loss is `sum_i s_i * w[y_i] * l_i / sum_i s_i * w[y_i]` over the kept pixels:
    the weighted mean over the labelled pixels, as torch gives with
    `(F.cross_entropy(..., reduction="none") * s).sum() / (s * valid).sum()`. Pixels
    of weight 0 are not kept (also for OHEM's count).

    Binary segmentation: with a one-channel `y_pred` (a model built with
    `num_classes=1`, one sigmoid logit per pixel), this is the binary cross-entropy
    of `sigmoid(logit)` against labels 0 and 1, as
    `torch.nn.functional.binary_cross_entropy_with_logits`; `class_weights` then has
    two entries (background, foreground; `[1, pos_weight]` with a 0/1 target gives
    torch's `pos_weight` up to the normalisation by the summed weights), and label
    smoothing moves the target to `eps / 2` and `1 - eps / 2`. Internally the logit
    `x` becomes the two softmax logits `[0, x]`, which is exactly that loss.

    Label smoothing follows torch's `label_smoothing`: with `eps > 0`,
    `l_i = (1 - eps) * w[y_i] * nll_i + eps / K * sum_k w[k] * (-log p_i[k])`, divided
    by the same `sum_i w[y_i]`.

    OHEM (online hard example mining), when `ohem_threshold` is set, as in PaddleSeg's
    `OhemCrossEntropyLoss` and mmseg's `OHEMPixelSampler`: let `p_i` be the predicted
    probability of the true class of every labelled pixel of the batch, and `p_(m)` the
    m-th smallest of them (1-based). With `n` labelled pixels and `k = ohem_min_kept`:
    - if `n <= k`, every labelled pixel is kept;
    - otherwise the kept pixels are those with `p_i < max(ohem_threshold, p_(k+1))`:
      all pixels harder than the threshold, and at least the `k` hardest (fewer only
      when several pixels tie at `p_(k+1)`).
    The selection is not differentiated. `k` counts pixels of the whole batch (as in
    PaddleSeg; mmseg counts `min_kept` per image).

    Reduction. Let `v_i` be the weighted value of pixel `i`, `s_i * w[y_i] * l_i`
    (with label smoothing, `s_i` times the smoothed value above, which holds the class
    weights), and 0 on every pixel that is not kept (ignored, a label outside
    `[0, K)`, a weight of 0, or dropped by OHEM). Then:
    - `"sum_over_batch_size"` (the default) and its alias `"mean"`: the weighted mean
      above, `sum_i v_i / sum_i (s_i * w[y_i])` over the kept pixels, torch's
      `reduction="mean"` (with `ignore_index`, `weight` and `label_smoothing`). It is
      Keras' sum over the batch divided by its size when the pixels not kept count as
      masked elements (Keras divides by the number of unmasked elements) and nothing is
      weighted; with class or pixel weights the divisor is the sum of the weights, not
      the number of pixels (Keras' `"sum_over_batch_size"` would divide a weighted sum
      by the pixel count): kseg's default has always been the weighted mean.
    - `"mean_with_sample_weight"`: the same value, which is Keras' definition exactly
      (the weighted sum divided by the sum of the weights, masked pixels weighing 0).
    - `"sum"`: `sum_i v_i`, a scalar: torch's `reduction="sum"` (times the pixel weights).
    - `"none"` or None: the `(B, H, W)` map of `v_i`, 0 on the pixels not kept: torch's
      `reduction="none"` (times the pixel weights, as Keras weighs unreduced values).
      The sum of the map is the `"sum"` value.
    On several replicas a scalar is that of the global batch, of which each replica
    returns its share (divided by the number of replicas, see `PixelLoss`); the map of
    `"none"` is the replica's own pixels' values, not divided (OHEM still selects its
    pixels over the global batch).

    Everything computes in float32, also under a mixed-precision policy.

    Args:
        ignore_index: int or None, default 255. Label value that is skipped.
        from_logits: bool, default True. Whether `y_pred` holds logits; otherwise
            probabilities (renormalised over the channels, clipped at 1e-7).
        class_weights: None or a sequence of `K` non-negative floats.
        ohem_threshold: None (no OHEM, the default) or a float in (0, 1].
        ohem_min_kept: int >= 0, default 100000. Minimum number of pixels OHEM keeps.
        label_smoothing: float in [0, 1), default 0.
        data_format: layout of `y_pred`; defaults to `keras.config.image_data_format()`.
        reduction: `"sum_over_batch_size"` (default), `"mean"`,
            `"mean_with_sample_weight"`, `"sum"`, `"none"` or None; see "Reduction".
        name: default `"segmentation_cross_entropy"`.
        dtype: loss dtype, float32 by default.

    Inputs:
        y_true: labels `(B, H, W)` or `(B, H, W, 1)`, integers (floats are rounded).
        y_pred: `(B, H, W, K)` logits or probabilities, same spatial size; `K = 1`
            for binary segmentation (a sigmoid logit or probability).
        sample_weight: optional per-pixel `(B, H, W)` / `(B, H, W, 1)` or per-image
            `(B,)` non-negative weights.

    Example:

    >>> loss = kseg.losses.SegmentationCrossEntropy(ignore_index=255)
    >>> model.compile(optimizer="sgd", loss=loss)
    """

    def __init__(
        self,
        ignore_index=255,
        from_logits=True,
        class_weights=None,
        ohem_threshold=None,
        ohem_min_kept=100000,
        label_smoothing=0.0,
        data_format=None,
        reduction="sum_over_batch_size",
        name="segmentation_cross_entropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=check_reduction(reduction), dtype=dtype)
        if ignore_index is not None:
            ignore_index = check_int("ignore_index", ignore_index, minimum=-(2**31))
        self.ignore_index = ignore_index
        self.from_logits = bool(from_logits)
        if class_weights is not None:
            weights = np.asarray(class_weights, dtype="float64")
            if weights.ndim != 1 or weights.size < 2 or np.any(weights < 0):
                raise ValueError(
                    "Expected `class_weights` to be None or a sequence of one non-negative "
                    f"weight per class. Received: class_weights={class_weights!r}"
                )
            class_weights = [float(w) for w in weights]
        self.class_weights = class_weights
        if ohem_threshold is not None:
            ohem_threshold = check_float("ohem_threshold", ohem_threshold, minimum=0.0, maximum=1.0)
            if ohem_threshold == 0.0:
                raise ValueError(
                    "Expected `ohem_threshold` in (0, 1] or None. "
                    f"Received: ohem_threshold={ohem_threshold}"
                )
        self.ohem_threshold = ohem_threshold
        self.ohem_min_kept = check_int("ohem_min_kept", ohem_min_kept, minimum=0)
        self.label_smoothing = check_float(
            "label_smoothing", label_smoothing, minimum=0.0, maximum=1.0
        )
        if self.label_smoothing == 1.0:
            raise ValueError(
                f"Expected `label_smoothing` in [0, 1). Received: label_smoothing={label_smoothing}"
            )
        self.data_format = standardize_data_format(data_format)

    def compute_loss(self, y_true, y_pred, sample_weight):
        labels, valid, scores = prepare_dense(
            y_true, y_pred, self.data_format, self.ignore_index, self.from_logits
        )
        num_classes = scores.shape[-1]
        weights = pixel_weights(sample_weight, labels, self.data_format)
        if self.from_logits:
            log_probs = ops.log_softmax(scores, axis=-1)
        else:
            probs = scores / ops.maximum(ops.sum(scores, axis=-1, keepdims=True), 1e-7)
            log_probs = ops.log(ops.clip(probs, 1e-7, 1.0))
        true_log_prob = ops.squeeze(
            ops.take_along_axis(log_probs, ops.expand_dims(labels, -1), axis=-1), -1
        )
        nll = -true_log_prob

        if self.class_weights is not None:
            if len(self.class_weights) != num_classes:
                raise ValueError(
                    f"Expected `class_weights` to have one weight per class ({num_classes}). "
                    f"Received: {len(self.class_weights)} weights"
                )
            weight_table = ops.convert_to_tensor(self.class_weights, dtype="float32")
            pixel_weight = ops.take(weight_table, labels)
        else:
            weight_table = None
            pixel_weight = ops.ones_like(nll)
        if weights is not None:
            pixel_weight = pixel_weight * weights
            valid = valid & (weights > 0)

        keep = valid
        if self.ohem_threshold is not None:
            keep = keep & self._ohem_keep(ops.exp(ops.stop_gradient(true_log_prob)), valid)
        pixel_weight = ops.where(keep, pixel_weight, 0.0)

        pixel_loss = pixel_weight * nll
        if self.label_smoothing > 0.0:
            eps = self.label_smoothing
            if weight_table is None:
                smooth = -ops.sum(log_probs, axis=-1)
            else:
                smooth = -ops.sum(log_probs * weight_table, axis=-1)
            smooth = ops.where(keep, smooth, 0.0)
            if weights is not None:
                smooth = smooth * weights
            pixel_loss = (1.0 - eps) * pixel_loss + (eps / num_classes) * smooth
        return reduce_values(pixel_loss, self.reduction, pixel_weight)

    def _ohem_keep(self, true_prob, valid):
        """Boolean map of the pixels OHEM keeps (see the class docstring)."""
        k = self.ohem_min_kept
        # Unlabelled pixels get probability 2, so they sort after every labelled one.
        # On several replicas the order statistic is that of the global batch.
        flat = gather_over_replicas(ops.reshape(ops.where(valid, true_prob, 2.0), (-1,)))
        size = ops.shape(flat)[0]
        if isinstance(size, int) and size <= k:
            return valid  # n <= size <= k: keep every labelled pixel.
        if isinstance(size, int):
            smallest = -ops.top_k(-flat, k + 1, sorted=True)[0]
            kth = smallest[k]  # p_(k+1); 2.0 when fewer than k + 1 pixels are labelled.
        else:  # dynamic size (a TF graph with unknown shape)
            count = ops.minimum(k + 1, size)
            smallest = -ops.top_k(-flat, count, sorted=True)[0]
            kth = ops.where(size > k, smallest[count - 1], 2.0)
        threshold = ops.maximum(kth, self.ohem_threshold)
        return valid & (true_prob < threshold)

    def get_config(self):
        return {
            **super().get_config(),
            "ignore_index": self.ignore_index,
            "from_logits": self.from_logits,
            "class_weights": self.class_weights,
            "ohem_threshold": self.ohem_threshold,
            "ohem_min_kept": self.ohem_min_kept,
            "label_smoothing": self.label_smoothing,
            "data_format": self.data_format,
        }
