"""Lovasz-softmax and Lovasz hinge losses: convex surrogates of the Jaccard (IoU) loss."""

import keras
from keras import ops

from kseg._backend import gather_over_replicas
from kseg._common import check_choice, check_int, standardize_data_format
from kseg.losses._utils import (
    PixelLoss,
    check_image_reduction,
    pixel_weights,
    prepare_dense,
    probabilities,
    reduce_values,
)


@keras.saving.register_keras_serializable(package="kseg")
class LovaszSoftmaxLoss(PixelLoss):
    """Lovasz-softmax loss (Berman et al., "The Lovasz-Softmax loss", CVPR 2018).

    For every class `c`, with `f_i = 1[y_i == c]` and errors `e_i = |f_i - p_i[c]|`
    over the labelled pixels, sort the errors in decreasing order and take the dot
    product with the gradient of the Lovasz extension of the Jaccard loss
    (Algorithm 1 of the paper):

        J_j = 1 - (G - cumsum(f)_j) / (G + cumsum(1 - f)_j),  G = sum_i f_i
        loss_c = sum_j e_(j) * (J_j - J_{j-1}),  J_0 = 0

    then average `loss_c` over the classes: the classes present in the labels with
    `classes="present"` (the default; a group without any present class gives 0), or
    all `K` classes with `classes="all"`. Pixels labelled `ignore_index` (or outside
    `[0, K)`) are removed before sorting. With `per_image=True` this is done per
    image and averaged over the images (an image with no labelled pixel contributes
    0), as the reference `lovasz_softmax(per_image=True)`; otherwise over the pixels
    of the whole batch. Sorting is not differentiated; gradients flow through the
    sorted errors. Computes in float32.

    Binary segmentation: with a one-channel `y_pred` (one logit per pixel, a model
    built with `num_classes=1`) this is the Lovasz hinge of the same paper
    (`lovasz_hinge` of the reference code): with signs `s_i = 2 y_i - 1` the errors
    are the hinge errors `e_i = max(1 - s_i * x_i, 0)` of the logits `x_i`, and the
    Jaccard loss of the foreground gives the weights, as above, for the foreground
    class only and whether or not it is present (`classes` does not apply; an image
    without foreground still pays for its largest error, as in the reference). It
    needs logits (`from_logits=True`).

    Per-pixel weights: with a `sample_weight` `(B, H, W)`, `(B, H, W, 1)` or `(B,)`,
    pixels of weight 0 are left out like ignored ones, and the error of every other
    pixel is multiplied by its weight (0/1 weights are an exact mask; other values
    scale the pixel's error, not its place in the Jaccard term).

    Reduction. With `per_image=True`, let `L_b` be the loss of image `b` (its mean
    over its classes, or its Lovasz hinge; 0 for an image without a labelled pixel).
    Keras' reductions apply to these per-image values:
    - `"sum_over_batch_size"` (the default) and its alias `"mean"`: `mean_b L_b` over
      the images of the batch, the loss above;
    - `"sum"`: `sum_b L_b`;
    - `"none"` or None: the `(B,)` vector of `L_b`.
    `"mean_with_sample_weight"` is refused: `sample_weight` weighs the pixels' errors
    (it is not applied again to `L_b`), so there are no per-image weights to divide
    by. With `per_image=False` the loss is one Lovasz extension over the pixels of the
    whole batch, not a sum of per-image values: only `"sum_over_batch_size"` and
    `"mean"` are accepted, and give that value as it is (Keras returns a scalar loss
    unreduced whatever its reduction). Other values raise a `ValueError` at
    construction. On several replicas the scalars are those of the global batch (each
    replica returns its share, see `PixelLoss`); `"none"` gives the replica's own
    images' values.

    Args:
        ignore_index: int or None, default 255.
        from_logits: bool, default True (softmax inside); False for probabilities.
        per_image: bool, default False.
        classes: `"present"` (default) or `"all"`.
        data_format: layout of `y_pred`; defaults to `keras.config.image_data_format()`.
        reduction: with `per_image=True`, `"sum_over_batch_size"` (default), `"mean"`,
            `"sum"`, `"none"` or None; with `per_image=False`,
            `"sum_over_batch_size"` or `"mean"`. See "Reduction".
        name: default `"lovasz_softmax_loss"`.
        dtype: loss dtype, float32 by default.

    Inputs:
        y_true: labels `(B, H, W)` or `(B, H, W, 1)`.
        y_pred: `(B, H, W, K)` logits or probabilities (`K = 1`: logits, binary).
        sample_weight: optional pixel `(B, H, W)` or image `(B,)` weights.

    Example:

    >>> model.compile(optimizer="adam", loss=kseg.losses.LovaszSoftmaxLoss(per_image=False))
    """

    def __init__(
        self,
        ignore_index=255,
        from_logits=True,
        per_image=False,
        classes="present",
        data_format=None,
        reduction="sum_over_batch_size",
        name="lovasz_softmax_loss",
        dtype=None,
    ):
        reduction = check_image_reduction(reduction, bool(per_image), "LovaszSoftmaxLoss")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if ignore_index is not None:
            ignore_index = check_int("ignore_index", ignore_index, minimum=-(2**31))
        self.ignore_index = ignore_index
        self.from_logits = bool(from_logits)
        self.per_image = bool(per_image)
        self.classes = check_choice("classes", classes, ("present", "all"))
        self.data_format = standardize_data_format(data_format)

    def compute_loss(self, y_true, y_pred, sample_weight):
        binary = y_pred.shape[1 if self.data_format == "channels_first" else -1] == 1
        if binary and not self.from_logits:
            raise ValueError(
                "The binary Lovasz hinge (one-channel `y_pred`) needs logits. "
                f"Received: from_logits={self.from_logits}"
            )
        labels, valid, scores = prepare_dense(
            y_true, y_pred, self.data_format, self.ignore_index, self.from_logits
        )
        weights = pixel_weights(sample_weight, labels, self.data_format)
        if weights is not None:
            valid = valid & (weights > 0)
        mask = ops.expand_dims(ops.cast(valid, "float32"), -1)
        if binary:
            # scores are the two-class logits [0, x]: one "class", the foreground.
            num_classes = 1
            fg = ops.expand_dims(ops.cast(labels, "float32"), -1) * mask
            logits = scores[..., 1:] - scores[..., :1]
            errors = ops.relu(1.0 - logits * (2.0 * fg - 1.0)) * mask
        else:
            num_classes = scores.shape[-1]
            probs = probabilities(scores, self.from_logits)
            fg = ops.one_hot(labels, num_classes, dtype="float32") * mask
            errors = ops.abs(fg - probs) * mask
        if weights is not None:
            errors = errors * ops.expand_dims(weights, -1)
        if not self.per_image:
            # One sort over the pixels of the global batch: on several replicas every
            # replica sorts all of them (the gather passes the gradient back).
            fg, errors, mask = gather_over_replicas([fg, errors, mask])
        # (B, H, W, K) -> (groups, K, pixels): one group per image or one for the batch.
        groups = ops.shape(scores)[0] if self.per_image else 1
        fg = ops.transpose(ops.reshape(fg, (groups, -1, num_classes)), (0, 2, 1))
        errors = ops.transpose(ops.reshape(errors, (groups, -1, num_classes)), (0, 2, 1))
        is_valid = ops.transpose(ops.reshape(mask, (groups, -1, 1)), (0, 2, 1)) > 0
        # Ignored pixels sort last (error -1 < every real error); their error is 0 and
        # they come after every labelled pixel, so they change no term of the sum.
        sort_key = ops.where(is_valid, errors, -1.0)
        order = ops.stop_gradient(ops.argsort(-sort_key, axis=-1))
        errors_sorted = ops.take_along_axis(errors, order, axis=-1)
        fg_sorted = ops.take_along_axis(fg, order, axis=-1)
        gts = ops.sum(fg_sorted, axis=-1, keepdims=True)
        intersection = gts - ops.cumsum(fg_sorted, axis=-1)
        union = gts + ops.cumsum(1.0 - fg_sorted, axis=-1)  # >= 1 everywhere
        jaccard = 1.0 - intersection / union
        grad = ops.concatenate([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], axis=-1)
        per_class = ops.sum(errors_sorted * ops.stop_gradient(grad), axis=-1)  # (groups, K)
        if self.classes == "present" and not binary:
            present = ops.cast(gts[..., 0] > 0, "float32")
        else:
            present = ops.ones_like(per_class)
        per_group = ops.sum(per_class * present, axis=-1) / ops.maximum(
            ops.sum(present, axis=-1), 1.0
        )
        if not self.per_image:
            return per_group[0]
        return reduce_values(per_group, self.reduction)

    def get_config(self):
        return {
            **super().get_config(),
            "ignore_index": self.ignore_index,
            "from_logits": self.from_logits,
            "per_image": self.per_image,
            "classes": self.classes,
            "data_format": self.data_format,
        }
