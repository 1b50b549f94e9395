"""Size buckets: every batch reaches the model padded to one of a bounded number of shapes.

Every batch reaches the model through one function (`_run_bucketed`), which
pads it bottom/right with `pad_value` to a bucketed size and crops the output
back, so that a compiled model (XLA on JAX, a traced function on TensorFlow)
sees a bounded number of input shapes whatever the image sizes:

- Height and width (whole-image inference only) are rounded up with
  `bucket_length`: to a multiple of `min_step` (default 32, the largest output
  stride of the backbones) up to `2 * min_step * per_octave`, then to one of
  `per_octave` (default 4) evenly spaced lengths per octave, so a side grows
  by less than `1 / per_octave` (25 %) beyond that. With `min_step` and
  `per_octave` powers of two, sides up to `L >= 2 * min_step * per_octave`
  take at most `2 * per_octave + per_octave * ceil(log2(L / (2 * min_step *
  per_octave)))` lengths: 8 up to 256 px, 12 up to 512, 16 up to 1024 and 20
  up to 2048 by default, so at most 144 (H, W) shapes up to 512 px and 400 up
  to 2048 px. Multi-scale inference goes through the same ladder, so `scales`
  add no shapes beyond those of the largest scaled size.
- The batch is padded to the next power of two (capped at `batch_size` for the
  sliding window, where a batch that is not the only one is padded to
  `batch_size` as before), the extra rows are dropped: at most
  `floor(log2(B)) + 1` batch sizes for batches up to B.
- Sliding-window windows already have the crop size, so the sliding window
  only pads the batch. The result is exactly that of the unbucketed call (the
  rows of a batch do not interact at inference), hence bucketing is always on
  there by default.
- Whole-image inference gives exactly the unbucketed result only for a model
  whose every output pixel depends on its own input pixel alone (1x1
  convolutions, pointwise activations, normalisation with stored statistics),
  or for an image whose sides already are bucket lengths (nothing is padded).
  A convolution with a spatial kernel sees the padding at the bottom/right
  border, a strided convolution with "same" padding samples another grid when
  an odd side is padded to an even one, and a global pooling (ASPP's image
  pooling) averages the padding too, so a zoo model's result changes
  everywhere, not only near the padding. Measured on a randomly initialised
  tiny DeepLabV3+ (ResNet of width 4, output stride 16) on 37 x 45 and
  50 x 61 images: the probabilities moved by up to 0.09-0.39 (0.007-0.037 on
  average) and the class changed at 4-20 % of the pixels, depending on the
  backend's initial weights. Whole-image bucketing is therefore off by
  default; pass `size_buckets=True` to trade that difference for a bounded
  number of compilations (worth it on JAX, where every new size compiles
  the model again).
"""

import numpy as np

from kseg.inference._common import _resize
from kseg.inference.forward import _run_model

#: The default ladder of `bucket_length`: `(min_step, per_octave)`.
DEFAULT_SIZE_BUCKETS = (32, 4)


def bucket_length(length, min_step=32, per_octave=4):
    """The bucketed length of an image side: `length` rounded up on a ladder.

    Up to `2 * min_step * per_octave` the length is rounded up to a multiple
    of `min_step`; above, a length in `(2**m, 2**(m + 1)]` is rounded up to a
    multiple of `2**m / per_octave` (when that is larger than `min_step`), so
    each octave has `per_octave` evenly spaced bucket lengths and a side
    grows by less than `1 / per_octave`.

    Args:
        length: the side in pixels (a positive int).
        min_step: the smallest step (a positive int). Defaults to 32.
        per_octave: bucket lengths per octave (a power of two). Defaults to 4.

    Returns:
        The bucket length, an int `>= length`.

    Raises:
        ValueError: for a length, `min_step` or `per_octave` out of range.
    """
    min_step, per_octave = _check_ladder((min_step, per_octave), "(min_step, per_octave)")
    if isinstance(length, bool) or int(length) != length or length < 1:
        raise ValueError(f"Expected `length` to be a positive int. Received: length={length!r}")
    length = int(length)
    octave = 1 << max(length - 1, 1).bit_length() - 1  # 2**m with 2**m < length <= 2**(m+1)
    step = max(min_step, octave // per_octave)
    return -(-length // step) * step


def _check_ladder(ladder, name="size_buckets"):
    """`(min_step, per_octave)` as ints, checked; `name` is the argument named in the error."""
    try:
        min_step, per_octave = ladder
    except (TypeError, ValueError):
        min_step = per_octave = None
    ok = all(
        not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= 1
        for v in (min_step, per_octave)
    )
    if not ok or int(per_octave) & (int(per_octave) - 1):
        raise ValueError(
            f"Expected `{name}` to be None, True, False or a pair (min_step, per_octave) "
            "of positive ints, per_octave a power of two. "
            f"Received: {name}={ladder!r}"
        )
    return int(min_step), int(per_octave)


def _size_ladder(size_buckets, whole_image):
    """The `(min_step, per_octave)` ladder of `size_buckets`, or None for no bucketing."""
    if size_buckets is None:
        # Default: bucket where it is exact (the sliding window's batches).
        return DEFAULT_SIZE_BUCKETS if not whole_image else None
    if size_buckets is True:
        return DEFAULT_SIZE_BUCKETS
    if size_buckets is False:
        return None
    return _check_ladder(size_buckets)


def _next_power_of_two(n):
    return 1 << (int(n) - 1).bit_length()


def _run_bucketed(
    model, x, output_key, data_format, pad_values, *, ladder=None, batch_to=None, spatial=False
):
    """Runs the model on `x` padded to a bucketed shape; returns logits for `x` alone.

    The one place where batches reach the model. `x` is padded bottom/right
    with `pad_values`: with `spatial` and a `ladder`, height and width to
    `bucket_length`; the batch to `batch_to` rows (when given), else, with a
    `ladder`, to the next power of two. The extra rows are dropped; when the
    sides were padded the logits are resized (bilinearly, only if the model
    returns another size) to the padded size and cropped to `x`'s size.
    """
    n, height, width, channels = x.shape
    full_h, full_w = height, width
    if spatial and ladder is not None:
        full_h, full_w = bucket_length(height, *ladder), bucket_length(width, *ladder)
    rows = n
    if batch_to is not None:
        rows = max(batch_to, n)
    elif ladder is not None:
        rows = _next_power_of_two(n)
    if (rows, full_h, full_w) != (n, height, width):
        padded = np.empty((rows, full_h, full_w, channels), np.float32)
        padded[...] = pad_values
        padded[:n, :height, :width] = x
        x = padded
    logits = _run_model(model, x, output_key, data_format)[:n]
    if (full_h, full_w) != (height, width):
        logits = _resize(logits, (full_h, full_w))[:, :height, :width]
    return logits
