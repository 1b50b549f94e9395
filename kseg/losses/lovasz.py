"""Lovasz-softmax loss: a convex surrogate of the per-class Jaccard (IoU) loss."""

import keras
from keras import ops

from kseg._common import check_choice, check_int, standardize_data_format
from kseg.losses._utils import prepare_dense, probabilities


@keras.saving.register_keras_serializable(package="kseg")
class LovaszSoftmaxLoss(keras.losses.Loss):
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

    Args:
        ignore_index: int or None, default 255.
        from_logits: bool, default True (softmax inside); False for probabilities.
        per_image: bool, default False.
        classes: `"present"` (default) or `"all"`.
        data_format: layout of `y_pred`; defaults to `keras.config.image_data_format()`.
        reduction: Keras loss reduction (the loss is already a scalar).
        name: default `"lovasz_softmax_loss"`.
        dtype: loss dtype, float32 by default.

    Inputs:
        y_true: labels `(B, H, W)` or `(B, H, W, 1)`.
        y_pred: `(B, H, W, K)` logits or probabilities.

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
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if ignore_index is not None:
            ignore_index = check_int("ignore_index", ignore_index, minimum=-(2**31))
        self.ignore_index = ignore_index
        self.from_logits = bool(from_logits)
        self.per_image = bool(per_image)
        self.classes = check_choice("classes", classes, ("present", "all"))
        self.data_format = standardize_data_format(data_format)

    def call(self, y_true, y_pred):
        labels, valid, scores = prepare_dense(y_true, y_pred, self.data_format, self.ignore_index)
        num_classes = scores.shape[-1]
        probs = probabilities(scores, self.from_logits)
        mask = ops.expand_dims(ops.cast(valid, "float32"), -1)
        fg = ops.one_hot(labels, num_classes, dtype="float32") * mask
        errors = ops.abs(fg - probs) * mask
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
        if self.classes == "present":
            present = ops.cast(gts[..., 0] > 0, "float32")
        else:
            present = ops.ones_like(per_class)
        per_group = ops.sum(per_class * present, axis=-1) / ops.maximum(
            ops.sum(present, axis=-1), 1.0
        )
        return ops.mean(per_group)

    def get_config(self):
        return {
            **super().get_config(),
            "ignore_index": self.ignore_index,
            "from_logits": self.from_logits,
            "per_image": self.per_image,
            "classes": self.classes,
            "data_format": self.data_format,
        }
