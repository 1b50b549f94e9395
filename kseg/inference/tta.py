"""Test-time augmentation: probabilities and classes averaged over scales and flips.

Each view (a scale, flipped or not) is predicted on the whole image or with
the sliding window (`kseg.inference.sliding`); see `kseg.inference` for the
procedure.
"""

import numpy as np

from kseg._common import standardize_data_format
from kseg.inference._common import (
    _check_images,
    _classes,
    _pad_values,
    _probabilities,
    _resize,
    _to_numpy,
)
from kseg.inference.buckets import _run_bucketed, _size_ladder
from kseg.inference.sliding import sliding_window_logits


def predict_probabilities(
    model,
    images,
    *,
    crop_size=None,
    stride=None,
    scales=(1.0,),
    flip=False,
    pad_value=None,
    batch_size=4,
    output_key="main",
    data_format=None,
    size_buckets=None,
):
    """Class probabilities with optional sliding window and test-time augmentation.

    See `kseg.inference` for the procedure. With the defaults it is the
    softmax of one full-image prediction (the sigmoid for a model with one
    output channel).

    Args:
        model: a `keras.Model` (or a callable) returning logits, or a dict of
            outputs holding `output_key`.
        images: `(B, H, W, C)` or `(H, W, C)` channels_last array with the
            channel count C of the model's input (RGB in [0, 255] for the RGB
            models).
        crop_size: window size for sliding-window inference, or None for
            whole-image inference. Defaults to None.
        stride: window stride; see `sliding_window_logits`.
        scales: image scale factors whose probabilities are averaged, e.g.
            (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) as in DeepLab. Defaults to (1.0,).
        flip: also average the horizontally flipped prediction. Defaults to False.
        pad_value, batch_size, output_key, data_format: see
            `sliding_window_logits`; without a `crop_size`, `pad_value` pads
            the whole images to their size bucket.
        size_buckets: how the shapes that reach the model are bucketed (see
            `kseg.inference.buckets`). None (default): the sliding window pads
            short batches of windows (exact, the same result); whole-image
            inference runs every image at its own size (a new compilation per
            size). True: also whole-image inference pads height and width
            bottom/right to `bucket_length` and the batch to a power of two,
            and crops the result back: at most 144 input shapes per batch
            size for sides up to 512 px, but the result of a model with
            spatial kernels changes (see `kseg.inference.buckets`). A pair
            `(min_step, per_octave)`: True with that ladder. False: no
            bucketing at all.

    Returns:
        float32 NumPy probabilities `(B, H, W, K)` (or `(H, W, K)` for one
        image). For a binary model (K = 1) the one channel is the foreground
        probability (the sigmoid of the logit).
    """
    probs, single = _average_probabilities(
        model,
        images,
        crop_size=crop_size,
        stride=stride,
        scales=scales,
        flip=flip,
        pad_value=pad_value,
        batch_size=batch_size,
        output_key=output_key,
        data_format=data_format,
        size_buckets=size_buckets,
    )
    probs = probs.astype(np.float32)
    return probs[0] if single else probs


def predict(model, images, **kwargs):
    """Predicted class ids `(B, H, W)` (int32) (or `(H, W)` for one image).

    The argmax of `predict_probabilities`; for a binary model (one output
    channel), 1 where the foreground probability is above 0.5, else 0.
    Takes the same keyword arguments as `predict_probabilities`.
    """
    probs, single = _average_probabilities(model, images, **kwargs)
    classes = _classes(probs)
    return classes[0] if single else classes


def _average_probabilities(
    model,
    images,
    *,
    crop_size=None,
    stride=None,
    scales=(1.0,),
    flip=False,
    pad_value=None,
    batch_size=4,
    output_key="main",
    data_format=None,
    size_buckets=None,
):
    """`predict_probabilities` before the float32 cast; also says if one image was given."""
    data_format = standardize_data_format(data_format)
    images = _to_numpy(images)
    single = images.ndim == 3
    images = _check_images(
        images[None] if single else images, model, data_format, shape=images.shape
    )
    scales = tuple(float(s) for s in (scales if isinstance(scales, (list, tuple)) else [scales]))
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"Expected `scales` to be positive numbers. Received: scales={scales!r}")
    whole_ladder = _size_ladder(size_buckets, whole_image=True) if crop_size is None else None
    pad_values = _pad_values(pad_value, images.shape[-1])
    height, width = images.shape[1:3]
    total = None
    views = 0
    for scale in scales:
        size = (max(int(round(height * scale)), 1), max(int(round(width * scale)), 1))
        scaled = _resize(images, size)
        for flipped in (False, True) if flip else (False,):
            x = scaled[:, :, ::-1] if flipped else scaled
            x = np.ascontiguousarray(x)
            if crop_size is None:
                logits = _run_bucketed(
                    model,
                    x,
                    output_key,
                    data_format,
                    pad_values,
                    ladder=whole_ladder,
                    spatial=True,
                )
            else:
                logits = sliding_window_logits(
                    model,
                    x,
                    crop_size,
                    stride=stride,
                    pad_value=pad_value,
                    batch_size=batch_size,
                    output_key=output_key,
                    data_format=data_format,
                    size_buckets=size_buckets,
                )
            probs = _probabilities(_resize(logits, (height, width)))
            if flipped:
                probs = probs[:, :, ::-1]
            total = probs if total is None else total + probs
            views += 1
    return total / views, single
