"""Sliding-window inference: logits of images of any size from windows of the training crop."""

import math

import numpy as np

from kseg._common import standardize_data_format
from kseg.inference._common import _check_images, _pad_values, _pair, _resize
from kseg.inference.buckets import _next_power_of_two, _run_bucketed, _size_ladder


def _window_starts(length, crop, stride):
    """Window offsets covering [0, length) with windows of `crop` (length >= crop)."""
    count = max(math.ceil((length - crop) / stride), 0) + 1
    return sorted({min(i * stride, length - crop) for i in range(count)})


def sliding_window_logits(
    model,
    images,
    crop_size,
    *,
    stride=None,
    pad_value=None,
    batch_size=4,
    output_key="main",
    data_format=None,
    size_buckets=None,
):
    """Predicts logits for images of any size with a sliding window.

    The images are padded (bottom and right) with `pad_value` to at least
    `crop_size`, windows of `crop_size` slide with `stride` (the last window
    of a row or column is moved back to end at the border), the logits of
    overlapping windows are averaged and the padding is cropped off. Logits
    of a window are resized bilinearly to the window when the model returns
    another size.

    Args:
        model: a `keras.Model` (or a callable) taking `(B, h, w, C)` images
            and returning logits, or a dict of outputs holding `output_key`.
        images: `(B, H, W, C)` channels_last array (C channels, any count).
        crop_size: int or `(height, width)` of the windows (the training crop).
        stride: int or `(height, width)`. Defaults to two thirds of the crop
            (rounded up), a third of overlap as in PSPNet's evaluation.
        pad_value: padding value: a scalar or one value per channel. Defaults
            to None: the ImageNet mean colour for 3-channel images (zero after
            the RGB models' normalisation), `DEFAULT_PAD_VALUE` (0.0) for any
            other channel count.
        batch_size: windows per model call. Defaults to 4.
        output_key: key of the logits when the model returns a dict.
            Defaults to "main".
        data_format: layout of the model's input and output. Defaults to
            `keras.config.image_data_format()`.
        size_buckets: None or True (default: pad a short batch of windows to
            the next power of two, at most `batch_size`, so that the model
            sees at most `floor(log2(batch_size)) + 2` shapes; the result is
            the same), or False (a batch of fewer windows than `batch_size` is
            run as it is, a new shape per count). A `(min_step, per_octave)`
            pair acts like True here: the windows already have one size.
            See `kseg.inference.buckets`.

    Returns:
        float32 NumPy logits `(B, H, W, K)`.

    Raises:
        ValueError: for bad `crop_size`, `stride`, `pad_value`, `size_buckets`
            or images.
    """
    data_format = standardize_data_format(data_format)
    crop_h, crop_w = _pair("crop_size", crop_size)
    if stride is None:
        stride = (math.ceil(2 * crop_h / 3), math.ceil(2 * crop_w / 3))
    stride_h, stride_w = _pair("stride", stride)
    ladder = _size_ladder(size_buckets, whole_image=False)
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(
            f"Expected `batch_size` to be a positive int. Received: batch_size={batch_size!r}"
        )
    batch_size = int(batch_size)
    images = _check_images(images, model, data_format)
    n, height, width, channels = images.shape
    pad_values = _pad_values(pad_value, channels)
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    if pad_h or pad_w:
        padded = np.empty((n, height + pad_h, width + pad_w, channels), np.float32)
        padded[...] = pad_values
        padded[:, :height, :width] = images
        images = padded
    full_h, full_w = images.shape[1:3]
    windows = [
        (b, top, left)
        for b in range(n)
        for top in _window_starts(full_h, crop_h, stride_h)
        for left in _window_starts(full_w, crop_w, stride_w)
    ]
    total = None
    count = np.zeros((n, full_h, full_w, 1), np.float32)
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        batch = np.stack([images[b, t : t + crop_h, x0 : x0 + crop_w] for b, t, x0 in chunk])
        if len(windows) > batch_size:
            # Keep one batch shape, so that a compiled model is not traced again.
            rows = batch_size
        elif ladder is not None:
            rows = min(_next_power_of_two(len(chunk)), batch_size)
        else:
            rows = len(chunk)
        logits = _run_bucketed(model, batch, output_key, data_format, pad_values, batch_to=rows)
        logits = _resize(logits, (crop_h, crop_w))
        if total is None:
            total = np.zeros((n, full_h, full_w, logits.shape[-1]), np.float32)
        for (b, t, x0), window_logits in zip(chunk, logits):
            total[b, t : t + crop_h, x0 : x0 + crop_w] += window_logits
            count[b, t : t + crop_h, x0 : x0 + crop_w] += 1.0
    return (total / count)[:, :height, :width]
