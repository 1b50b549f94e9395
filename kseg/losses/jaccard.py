"""Soft Jaccard (IoU) loss (multi-class and binary) with an ignore index and pixel weights."""

import keras
from keras import ops

from kseg._common import check_choice, check_float, check_int, standardize_data_format
from kseg.losses._utils import (
    PixelLoss,
    check_image_reduction,
    mean_class_loss,
    reduce_values,
    soft_class_sums,
)


@keras.saving.register_keras_serializable(package="kseg")
class JaccardLoss(PixelLoss):
    """Multi-class soft Jaccard (IoU) loss, ignore-aware.

    The IoU of the labels and the prediction with the set intersection replaced by
    a product of probabilities (Rahman and Wang, "Optimizing Intersection-Over-Union
    in Deep Neural Networks for Image Segmentation", ISVC 2016; the soft Jaccard of
    segmentation_models_pytorch's `JaccardLoss`). With `p` the softmax probabilities
    and `t` the one-hot labels, both zeroed on ignored pixels (label `ignore_index`
    or outside `[0, K)`), for every class `k`:

        I_k = sum(p_k * t_k),  U_k = sum(p_k) + sum(t_k) - I_k
        jaccard_k = (I_k + smooth) / (U_k + smooth)

    and the loss is `mean_k (1 - jaccard_k)` over all `K` classes
    (`classes="all"`, the default) or over the classes that have a labelled pixel
    (`classes="present"`; without any, the loss is 0). segmentation_models_pytorch
    sets the loss of absent classes to 0 but still divides by `K`; here they leave
    the mean. With `per_image=False` the sums run over the whole batch (over all
    replicas); with `per_image=True` they run over each image and the loss is the mean
    over the images of each image's mean over its classes. The `smooth` term
    (default 1, as `DiceLoss`) keeps classes absent from both the labels and the
    prediction near jaccard 1 instead of 0/0; with `smooth=0` the denominator is
    clamped at 1e-7, so such classes count as jaccard 0. This is the smooth surrogate
    of IoU; `LovaszSoftmaxLoss` is the convex one. Computes in float32.

    Binary segmentation: with a one-channel `y_pred` (one sigmoid logit per pixel, a
    model built with `num_classes=1`), `p` is the sigmoid (or the given probability)
    and the loss is `1 - jaccard` of the foreground alone (labels 1), as
    segmentation_models_pytorch's `JaccardLoss(mode="binary")`; with
    `classes="present"` a batch (or image) without foreground labels gives 0.

    Per-pixel weights: a `sample_weight` `(B, H, W)`, `(B, H, W, 1)` or `(B,)`
    multiplies each pixel's `p` and `t` in all sums (a weight of 0 is the same as
    the ignore index, a weight of 2 counts the pixel twice).

    Reduction. With `per_image=True`, let `L_b` be the loss of image `b` (its mean
    over its classes, with the pixel weights inside the sums; 0 for an image without
    a labelled pixel when `classes="present"`). Keras' reductions apply to these
    per-image values:
    - `"sum_over_batch_size"` (the default) and its alias `"mean"`: `mean_b L_b` over
      the images of the batch, the loss above;
    - `"sum"`: `sum_b L_b`;
    - `"none"` or None: the `(B,)` vector of `L_b`.
    `"mean_with_sample_weight"` is refused: `sample_weight` weighs the pixels inside
    the sums (it is not applied again to `L_b`), so there are no per-image weights to
    divide by. With `per_image=False` the loss is one Jaccard of the whole batch,
    not a sum of per-image values: only `"sum_over_batch_size"` and `"mean"` are
    accepted, and give that value as it is (Keras returns a scalar loss unreduced
    whatever its reduction). Other values raise a `ValueError` at construction. On
    several replicas the scalars are those of the global batch (each replica returns
    its share, see `PixelLoss`); `"none"` gives the replica's own images' values.

    Args:
        ignore_index: int or None, default 255.
        from_logits: bool, default True (softmax inside); False for probabilities
            (renormalised over the channels).
        per_image: bool, default False.
        smooth: float >= 0, default 1.0.
        classes: `"all"` (default) or `"present"`: the classes averaged.
        data_format: layout of `y_pred`; defaults to `keras.config.image_data_format()`.
        reduction: with `per_image=True`, `"sum_over_batch_size"` (default), `"mean"`,
            `"sum"`, `"none"` or None; with `per_image=False`,
            `"sum_over_batch_size"` or `"mean"`. See "Reduction".
        name: default `"jaccard_loss"`.
        dtype: loss dtype, float32 by default.

    Inputs:
        y_true: labels `(B, H, W)` or `(B, H, W, 1)`.
        y_pred: `(B, H, W, K)` logits or probabilities (`K = 1`: binary).
        sample_weight: optional pixel `(B, H, W)` or image `(B,)` weights.

    Example:

    >>> model.compile(optimizer="adam", loss=kseg.losses.JaccardLoss(classes="present"))
    """

    def __init__(
        self,
        ignore_index=255,
        from_logits=True,
        per_image=False,
        smooth=1.0,
        classes="all",
        data_format=None,
        reduction="sum_over_batch_size",
        name="jaccard_loss",
        dtype=None,
    ):
        reduction = check_image_reduction(reduction, bool(per_image), "JaccardLoss")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if ignore_index is not None:
            ignore_index = check_int("ignore_index", ignore_index, minimum=-(2**31))
        self.ignore_index = ignore_index
        self.from_logits = bool(from_logits)
        self.per_image = bool(per_image)
        self.smooth = check_float("smooth", smooth, minimum=0.0)
        self.classes = check_choice("classes", classes, ("all", "present"))
        self.data_format = standardize_data_format(data_format)

    def compute_loss(self, y_true, y_pred, sample_weight):
        intersection, predicted, target, binary = soft_class_sums(
            y_true,
            y_pred,
            sample_weight,
            self.data_format,
            self.ignore_index,
            self.from_logits,
            self.per_image,
        )
        union = predicted + target - intersection
        jaccard = (intersection + self.smooth) / ops.maximum(union + self.smooth, 1e-7)
        loss = mean_class_loss(1.0 - jaccard, target, binary, self.classes)
        if not self.per_image:
            return loss
        return reduce_values(loss, self.reduction)

    def get_config(self):
        return {
            **super().get_config(),
            "ignore_index": self.ignore_index,
            "from_logits": self.from_logits,
            "per_image": self.per_image,
            "smooth": self.smooth,
            "classes": self.classes,
            "data_format": self.data_format,
        }
