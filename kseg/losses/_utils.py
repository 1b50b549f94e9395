"""Input handling shared by kseg's segmentation losses."""

from keras import ops

from kseg._common import squeeze_labels, valid_mask


def prepare_dense(y_true, y_pred, data_format, ignore_index):
    """Common preparation of a `(labels, scores)` pair for a per-pixel loss.

    Returns `(labels, valid, scores)`: `labels` int32 `(B, H, W)` with invalid pixels
    set to 0, `valid` bool `(B, H, W)`, `scores` float32 `(B, H, W, K)` channels_last.
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
