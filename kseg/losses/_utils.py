"""Input handling shared by kseg's segmentation losses."""

import keras
from keras import ops

from kseg._backend import num_replicas, sum_over_replicas
from kseg._common import squeeze_labels, valid_mask


class PixelLoss(keras.losses.Loss):
    """Base of kseg's segmentation losses: `sample_weight` weighs pixels inside the loss.

    A Keras loss returns per-sample values that Keras' reduction then weighs and
    reduces; kseg's default results are not such a reduction of per-image values (a
    weighted mean over the labelled pixels of the whole batch, an overlap of the
    whole batch), and Keras' reduction of their scalar would only rescale it by the
    mean of the weights. Here `__call__` hands `sample_weight` to `compute_loss`
    instead, so a per-pixel weight map gives the weighted mean over the labelled
    pixels, as torch does with a weight map (`(F.cross_entropy(...,
    reduction="none") * w).sum() / (w * valid).sum()`), and `compute_loss` applies
    `self.reduction` itself: each loss documents what every reduction it accepts
    returns, and refuses at construction the ones it cannot honour
    (`check_reduction`).

    On several replicas (`tf.distribute.MirroredStrategy` and
    `MultiWorkerMirroredStrategy` on TensorFlow), every reduced loss is that of the
    global batch: `compute_loss` takes its sums over all replicas' pixels
    (`kseg._backend.sum_over_replicas`), and `__call__` divides the result by
    the number of replicas, Keras' convention for a loss on `N` replicas (the
    trainer sums the replicas' gradients and multiplies the reported loss back by
    `N`). Training on `N` replicas then gives the loss and the gradients of one
    device on the whole batch. Keras' own reduction would not do it: it returns a
    scalar loss as it is, unscaled. On JAX (`keras.distribution.DataParallel` runs
    one program over the global batch) and on one device nothing changes. The
    unreduced values of `reduction="none"` are those of the replica's own pixels
    (or images), returned unscaled (see `__call__`).
    """

    def __call__(self, y_true, y_pred, sample_weight=None):
        with keras.name_scope(self.name):
            y_pred = ops.convert_to_tensor(y_pred)
            loss = ops.cast(self.compute_loss(y_true, y_pred, sample_weight), "float32")
            # A reduced loss is a value of the global batch, of which each replica returns
            # its share. The unreduced values ("none") are those of this replica's own
            # pixels or images, each the same number on one device or on `N`: they are
            # returned as they are, not divided by `N` (which would make every value
            # wrong), like Keras' and torch's unreduced losses; code that reduces them
            # across replicas scales its result itself.
            if self.reduction not in (None, "none"):
                replicas = num_replicas()
                if replicas > 1:
                    loss = loss / float(replicas)
            return ops.cast(loss, self.dtype)

    def call(self, y_true, y_pred):
        return self.compute_loss(y_true, y_pred, None)

    def compute_loss(self, y_true, y_pred, sample_weight):
        """The loss reduced as `self.reduction` says: a scalar of the global batch (sums
        over all replicas' pixels), or this replica's unreduced values for `"none"`."""
        raise NotImplementedError


# The reductions of `keras.losses.Loss`; None is the same as "none".
REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight", "sum", "none", None)


def check_reduction(reduction, supported=REDUCTIONS, reason=""):
    """Returns `reduction`, or raises `ValueError` unless it is one of `supported`.

    `reason` (a clause) says why a loss supports only those.
    """
    if reduction not in supported:
        raise ValueError(
            f"Expected `reduction` to be one of {tuple(supported)}{reason}. "
            f"Received: reduction={reduction!r}"
        )
    return reduction


def check_image_reduction(reduction, per_image, loss_name):
    """`check_reduction` for a loss that has a value per image only with `per_image=True`.

    With `per_image=True`: the reductions of Keras on those per-image values, less
    `"mean_with_sample_weight"` (`sample_weight` weighs the pixels inside the loss and
    gives no weight per image to divide by). With `per_image=False` the loss is one
    value of the whole batch: only `"sum_over_batch_size"` and `"mean"`.
    """
    no_weights = (
        "; 'mean_with_sample_weight' is not supported (`sample_weight` weighs the pixels "
        "inside the loss, it gives no weight per image to divide by)"
    )
    if per_image:
        return check_reduction(
            reduction, ("sum_over_batch_size", "mean", "sum", "none", None), no_weights
        )
    return check_reduction(
        reduction,
        ("sum_over_batch_size", "mean"),
        f": with per_image=False, {loss_name} is one value of the whole batch, and 'none' "
        "and 'sum' (of the per-image values) need per_image=True" + no_weights,
    )


def reduce_values(values, reduction, weight=None):
    """Per-pixel `(B, H, W)` or per-image `(B,)` values reduced as `reduction` says.

    `values` are already weighted and 0 where not counted. `"none"` (or None): `values`
    as they are, this replica's own. `"sum"`: their sum over the global batch.
    Otherwise their sum divided by the sum of `weight` (the same shape: the weights of
    the counted values; None: each value counts once, the mean over the global
    batch's images or pixels) over the global batch, or 0 when that is 0.
    """
    if reduction is None or reduction == "none":
        return values
    if reduction == "sum":
        return sum_over_replicas(ops.sum(values))
    if weight is None:
        weight = ops.ones_like(values)
    total, count = sum_over_replicas([ops.sum(values), ops.sum(weight)])
    return safe_divide(total, count)


def pixel_weights(sample_weight, labels, data_format):
    """`sample_weight` as float32 weights of the `(B, H, W)` pixels of `labels`, or None.

    Accepts `(B,)` or `(B, 1)` (one weight per image), `(B, H, W)`, and `(B, H, W, 1)`
    (`(B, 1, H, W)` in channels_first).
    """
    if sample_weight is None:
        return None
    weights = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
    shape = tuple(weights.shape)
    if len(shape) == 4:
        axis = 1 if data_format == "channels_first" else 3
        if shape[axis] not in (1, None):
            raise ValueError(
                "Expected `sample_weight` to be a weight map (B, H, W) or (B, H, W, 1), or one "
                f"weight per image (B,). Received: sample_weight.shape={shape}"
            )
        weights = ops.squeeze(weights, axis)
    elif len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
        weights = ops.reshape(weights, (-1, 1, 1))
    elif len(shape) != 3:
        raise ValueError(
            "Expected `sample_weight` to be a weight map (B, H, W) or (B, H, W, 1), or one "
            f"weight per image (B,). Received: sample_weight.shape={shape}"
        )
    return ops.broadcast_to(weights, ops.shape(labels))


def two_class_scores(scores, from_logits):
    """One sigmoid channel `(..., 1)` as two softmax channels (background, foreground).

    Logits `x` become `[0, x]` (`softmax([0, x]) = [1 - sigmoid(x), sigmoid(x)]`, so
    the softmax losses become their binary forms exactly); probabilities `p` become
    `[1 - p, p]`.
    """
    if from_logits:
        return ops.concatenate([ops.zeros_like(scores), scores], axis=-1)
    return ops.concatenate([1.0 - scores, scores], axis=-1)


def prepare_dense(y_true, y_pred, data_format, ignore_index, from_logits=True):
    """Common preparation of a `(labels, scores)` pair for a per-pixel loss.

    Returns `(labels, valid, scores)`: `labels` int32 `(B, H, W)` with invalid pixels
    set to 0, `valid` bool `(B, H, W)`, `scores` float32 `(B, H, W, K)` channels_last.
    A one-channel `y_pred` (binary segmentation, one sigmoid output) comes back as
    two channels, background and foreground (`two_class_scores`), so that labels 0
    and 1 are the valid ones.
    """
    scores = ops.cast(y_pred, "float32")
    if len(scores.shape) != 4:
        raise ValueError(
            "Expected `y_pred` to be scores of shape (B, H, W, K). "
            f"Received: y_pred.shape={tuple(scores.shape)}"
        )
    if data_format == "channels_first":
        scores = ops.transpose(scores, (0, 2, 3, 1))
    num_classes = scores.shape[-1]
    if num_classes is None:
        raise ValueError(
            "Expected `y_pred` to have a known number of channels. "
            f"Received: y_pred.shape={tuple(scores.shape)}"
        )
    if num_classes == 1:
        scores = two_class_scores(scores, from_logits)
        num_classes = 2
    labels = squeeze_labels(y_true, data_format)
    for lab, pre in zip(labels.shape[1:], scores.shape[1:3]):
        if lab is not None and pre is not None and lab != pre:
            raise ValueError(
                "Expected `y_pred` to have the spatial size of `y_true`. Resize the logits to "
                "the label size (e.g. with kseg.ops.resize) before the loss. "
                f"Received: y_true spatial size={tuple(labels.shape[1:])}, "
                f"y_pred spatial size={tuple(scores.shape[1:3])}"
            )
    valid = valid_mask(labels, num_classes, ignore_index)
    labels = ops.where(valid, labels, 0)
    return labels, valid, scores


def probabilities(scores, from_logits):
    """Softmax of logits, or probabilities renormalised to sum to one over channels."""
    if from_logits:
        return ops.softmax(scores, axis=-1)
    return scores / ops.maximum(ops.sum(scores, axis=-1, keepdims=True), 1e-7)


def safe_divide(numerator, denominator):
    """`numerator / denominator`, or 0 where the denominator is 0 (gradient-safe)."""
    nonzero = denominator > 0
    return ops.where(nonzero, numerator / ops.where(nonzero, denominator, 1.0), 0.0)


def soft_class_sums(
    y_true, y_pred, sample_weight, data_format, ignore_index, from_logits, per_image
):
    """The soft overlap sums of the region losses (Dice, Jaccard), per class.

    With `p` the probabilities and `t` the one-hot labels, both multiplied by the
    pixel mask (0 on ignored pixels, label `ignore_index` or outside `[0, K)`) and by
    the pixel weights, returns `(intersection, predicted, target, binary)`:
    `sum(p * t)`, `sum(p)` and `sum(t)` for every class, shape `(K,)` summed over the
    pixels of the global batch (over all replicas), or `(B, K)` summed over each
    image's pixels with `per_image=True`. `binary` says that `y_pred` had one channel,
    whose two classes (background, foreground; `two_class_scores`) are then summed.
    """
    binary = y_pred.shape[1 if data_format == "channels_first" else -1] == 1
    labels, valid, scores = prepare_dense(y_true, y_pred, data_format, ignore_index, from_logits)
    num_classes = scores.shape[-1]
    mask = ops.cast(valid, "float32")
    weights = pixel_weights(sample_weight, labels, data_format)
    if weights is not None:
        mask = mask * weights
    mask = ops.expand_dims(mask, -1)
    probs = probabilities(scores, from_logits) * mask
    target = ops.one_hot(labels, num_classes, dtype="float32") * mask
    axes = (1, 2) if per_image else (0, 1, 2)
    intersection = ops.sum(probs * target, axis=axes)
    predicted = ops.sum(probs, axis=axes)
    target = ops.sum(target, axis=axes)
    if not per_image:  # the sums run over the global batch
        intersection, predicted, target = sum_over_replicas([intersection, predicted, target])
    return intersection, predicted, target, binary


def mean_class_loss(class_loss, target, binary, classes):
    """The mean of per-class losses `(K,)` or `(B, K)` (from `soft_class_sums`) over
    the classes: a scalar, or `(B,)` one value per image.

    `classes="all"` averages all `K` classes; `"present"` only the classes with a
    labelled pixel (`target > 0`) in the group (the batch, or the image), and a group
    without any gives 0. A binary prediction scores its foreground alone (class 1).
    """
    if binary:
        class_loss, target = class_loss[..., 1:], target[..., 1:]
    if classes == "present":
        present = ops.cast(target > 0, "float32")
    else:
        present = ops.ones_like(class_loss)
    return ops.sum(class_loss * present, axis=-1) / ops.maximum(ops.sum(present, axis=-1), 1.0)
