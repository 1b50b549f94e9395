"""GINet semantic context loss (SC-loss): class-presence target and loss.

The presence scores it trains come from `kseg.layers.ClassPresenceScore`.
"""

import keras
from keras import ops

from kseg._common import check_int, squeeze_labels, standardize_data_format, valid_mask
from kseg.losses._utils import PixelLoss, check_reduction, reduce_values


def class_presence_target(y_true, num_classes, ignore_index=255, data_format=None):
    """Which classes occur in each label map: `(B, K)` float32 of 0/1.

    `target[b, k] = 1` when some pixel of image `b` has label `k`. Labels equal to
    `ignore_index` or outside `[0, num_classes)` never count, like the histogram over
    `[0, K - 1]` of the reference (SPEC 3.3; EncNet's SE-loss target is built the
    same way).

    Args:
        y_true: integer labels `(B, H, W)` or `(B, H, W, 1)`.
        num_classes: int >= 1.
        ignore_index: int or None, default 255.
        data_format: layout of a `(B, 1, H, W)` label map in channels_first.

    Returns:
        float32 tensor `(B, num_classes)`.
    """
    num_classes = check_int("num_classes", num_classes, minimum=1)
    data_format = standardize_data_format(data_format)
    labels = squeeze_labels(y_true, data_format)
    labels = ops.where(valid_mask(labels, num_classes, ignore_index), labels, -1)
    # One comparison per class keeps memory at one label map (no (B, H, W, K) one-hot).
    columns = [ops.any(ops.equal(labels, k), axis=(1, 2)) for k in range(num_classes)]
    return ops.cast(ops.stack(columns, axis=-1), "float32")


@keras.saving.register_keras_serializable(package="kseg")
class SemanticContextLoss(PixelLoss):
    """GINet semantic context loss: mean binary cross-entropy of class presence.

    `loss = mean over (b, k) of BCE(sigmoid(score[b, k]), target[b, k])` where `score`
    is the `(B, K)` output of `ClassPresenceScore` and `target` is
    `class_presence_target(y_true, num_classes, ignore_index)` built from the label map
    (SPEC 3.3). A plain mean over `(b, k)`, computed from logits for stability; the
    pixel-mask post-processing of the transient PaddleSeg port is a bug and is not
    reproduced. The GINet recipe weighs it 0.2 next to `CE_main + 0.4 * CE_aux`.
    Computes in float32.

    The loss is per image, so a `sample_weight` must be one weight per image, `(B,)`
    or `(B, 1)`: the loss is then `sum_b w_b * mean_k BCE[b, k] / sum_b w_b`. A
    per-pixel weight map has no meaning here and is refused.

    Reduction. With `L_b = mean_k BCE[b, k]` the loss of image `b` and `w_b` its
    weight (1 without `sample_weight`), Keras' reductions apply to the values
    `w_b * L_b`:
    - `"sum_over_batch_size"` (the default) and its alias `"mean"`: the loss above,
      `sum_b w_b * L_b / sum_b w_b`. Without weights this is Keras' definition, the
      sum over the batch divided by its size; with weights the divisor is their sum,
      not `B` (Keras' `"sum_over_batch_size"` would divide by `B`): kseg's default
      has always been the weighted mean.
    - `"mean_with_sample_weight"`: the same value, which is Keras' definition exactly.
    - `"sum"`: `sum_b w_b * L_b`.
    - `"none"` or None: the `(B,)` vector of `w_b * L_b` (torch's
      `binary_cross_entropy_with_logits(..., reduction="none").mean(-1)` times the
      weights, as Keras weighs unreduced values).
    On several replicas the scalars are those of the global batch (each replica
    returns its share, see `PixelLoss`); `"none"` gives the replica's own images'
    values.

    Args:
        num_classes: int >= 1, the number `K` of classes.
        ignore_index: int or None, default 255.
        from_logits: bool, default True; False when `y_pred` holds probabilities.
        data_format: layout of a `(B, 1, H, W)` label map in channels_first.
        reduction: `"sum_over_batch_size"` (default), `"mean"`,
            `"mean_with_sample_weight"`, `"sum"`, `"none"` or None; see "Reduction".
        name: default `"semantic_context_loss"`.
        dtype: loss dtype, float32 by default.

    Inputs:
        y_true: the label map `(B, H, W)` or `(B, H, W, 1)`.
        y_pred: presence logits `(B, K)`.

    Example:

    >>> model.compile(
    ...     optimizer="sgd",
    ...     loss={"main": kseg.losses.SegmentationCrossEntropy(),
    ...           "aux": kseg.losses.SegmentationCrossEntropy(),
    ...           "presence": kseg.losses.SemanticContextLoss(num_classes=59)},
    ...     loss_weights={"main": 1.0, "aux": 0.4, "presence": 0.2})
    """

    def __init__(
        self,
        num_classes,
        ignore_index=255,
        from_logits=True,
        data_format=None,
        reduction="sum_over_batch_size",
        name="semantic_context_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=check_reduction(reduction), dtype=dtype)
        self.num_classes = check_int("num_classes", num_classes, minimum=1)
        if ignore_index is not None:
            ignore_index = check_int("ignore_index", ignore_index, minimum=-(2**31))
        self.ignore_index = ignore_index
        self.from_logits = bool(from_logits)
        self.data_format = standardize_data_format(data_format)

    def compute_loss(self, y_true, y_pred, sample_weight):
        y_pred = ops.cast(y_pred, "float32")
        if len(y_pred.shape) != 2 or y_pred.shape[-1] != self.num_classes:
            raise ValueError(
                f"Expected `y_pred` to be presence scores of shape (B, {self.num_classes}). "
                f"Received: y_pred.shape={tuple(y_pred.shape)}"
            )
        target = class_presence_target(
            y_true, self.num_classes, self.ignore_index, self.data_format
        )
        if self.from_logits:
            # max(x, 0) - x * t + log(1 + exp(-|x|)): stable BCE from logits.
            bce = ops.maximum(y_pred, 0.0) - y_pred * target + ops.log1p(ops.exp(-ops.abs(y_pred)))
        else:
            p = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
            bce = -(target * ops.log(p) + (1.0 - target) * ops.log(1.0 - p))
        # Sums over the global batch (all replicas' images).
        if sample_weight is None:
            return reduce_values(ops.mean(bce, axis=-1), self.reduction)
        weights = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
        if len(weights.shape) > 2 or (len(weights.shape) == 2 and weights.shape[1] != 1):
            raise ValueError(
                "Expected `sample_weight` of SemanticContextLoss to be one weight per image, "
                f"(B,) or (B, 1). Received: sample_weight.shape={tuple(weights.shape)}"
            )
        weights = ops.reshape(weights, (-1,))
        return reduce_values(ops.mean(bce, axis=-1) * weights, self.reduction, weights)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "from_logits": self.from_logits,
            "data_format": self.data_format,
        }
