"""Mask-aware training augmentation, evaluation preprocessing and batching (tf.data)."""

import numbers

import tensorflow as tf

from kseg.layers.preprocessing import IMAGENET_MEAN_RGB

_EVAL_POLICIES = ("pad", "resize", "none")


def _size_pair(name, value):
    size = value
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (int(size), int(size))
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in size
        )
    ):
        raise ValueError(
            f"Expected `{name}` to be a positive integer or a (height, width) pair of "
            f"positive integers. Received: {name}={value!r}"
        )
    return int(size[0]), int(size[1])


def _check_mean(mean):
    mean = tuple(float(m) for m in mean)
    if len(mean) != 3:
        raise ValueError(f"Expected `mean` to hold 3 RGB values. Received: mean={mean!r}")
    return mean


def _resize_pair(image, mask, size):
    """Resizes the image bilinearly and the mask with nearest neighbour (never inventing labels)."""
    image = tf.image.resize(image, size, method="bilinear")
    mask = tf.image.resize(mask[..., None], size, method="nearest")[..., 0]
    return image, tf.cast(mask, tf.int32)


def _source_coordinates(start, length, in_len, out_len):
    """Source positions of output pixels `start .. start + length - 1` of a resize.

    Resizing `in_len` pixels to `out_len` with half-pixel centres, the formulas of
    TensorFlow's ResizeBilinear and ResizeNearestNeighbor kernels
    (tensorflow/core/kernels/image/resize_bilinear_op.cc, `HalfPixelScaler` and
    `compute_interpolation_weights`; resize_nearest_neighbor_op.cc,
    `HalfPixelScalerForNN`), which `tf.image.resize` runs, in the same float32
    arithmetic: scale = in / out; bilinear: x = (i + 0.5) * scale - 0.5, lower =
    max(floor(x), 0), upper = min(ceil(x), in - 1), weight of upper = x - floor(x);
    nearest: min(floor((i + 0.5) * scale), in - 1).

    Returns:
        (lower, upper, lerp, nearest): int32, int32, float32 and int32 `(length,)`.
    """
    scale = tf.cast(in_len, tf.float32) / tf.cast(out_len, tf.float32)
    centre = tf.cast(tf.range(start, start + length), tf.float32) + 0.5
    x = centre * scale - 0.5
    floor = tf.floor(x)
    lower = tf.maximum(tf.cast(floor, tf.int32), 0)
    upper = tf.minimum(tf.cast(tf.math.ceil(x), tf.int32), in_len - 1)
    nearest = tf.minimum(tf.cast(tf.floor(centre * scale), tf.int32), in_len - 1)
    return lower, upper, x - floor, nearest


def _resize_window(image, mask, size, top, left, height, width):
    """Rows `top .. top + height` and columns `left .. left + width` of the resized pair.

    The values of `_resize_pair(image, mask, size)` cropped to that window (image
    bilinear, mask nearest neighbour), computed from the pixels the window needs only:
    the work is proportional to the window, not to the resized image, which at 2x
    scale of a 2048x1024 image is 4096x2048 (100 MB of float32).
    """
    in_size = tf.shape(image)[:2]
    r_lo, r_hi, r_lerp, r_near = _source_coordinates(top, height, in_size[0], size[0])
    c_lo, c_hi, c_lerp, c_near = _source_coordinates(left, width, in_size[1], size[1])
    mask = tf.gather(tf.gather(mask, r_near), c_near, axis=1)
    upper_rows = tf.gather(image, r_lo)
    lower_rows = tf.gather(image, r_hi)
    c_lerp = c_lerp[None, :, None]
    # Interpolate along the width, then the height, as the ResizeBilinear kernel does.
    top_left = tf.gather(upper_rows, c_lo, axis=1)
    top_row = top_left + (tf.gather(upper_rows, c_hi, axis=1) - top_left) * c_lerp
    bottom_left = tf.gather(lower_rows, c_lo, axis=1)
    bottom_row = bottom_left + (tf.gather(lower_rows, c_hi, axis=1) - bottom_left) * c_lerp
    image = top_row + (bottom_row - top_row) * r_lerp[:, None, None]
    return image, mask


def _resized_mean(image, size):
    """Per-channel mean `(1, 1, 3)` of `image` bilinearly resized to `size`, without resizing.

    Each output pixel is a weighted sum of source pixels with weights that factor into
    a row and a column weight, so the mean is `row_weights @ image @ column_weights`
    over the output pixel count, with each source row's (column's) weight the sum of
    its interpolation weights over all output rows (columns).
    """
    in_size = tf.shape(image)[:2]

    def weights(axis):
        lower, upper, lerp, _ = _source_coordinates(0, size[axis], in_size[axis], size[axis])
        return tf.math.unsorted_segment_sum(
            1.0 - lerp, lower, in_size[axis]
        ) + tf.math.unsorted_segment_sum(lerp, upper, in_size[axis])

    total = tf.einsum("h,hwc,w->c", weights(0), image, weights(1))
    count = tf.cast(size[0], tf.float32) * tf.cast(size[1], tf.float32)
    return (total / count)[None, None, :]


def _pad_pair(image, mask, height, width, mean, ignore_index):
    """Pads bottom and right up to at least (height, width): mean colour and ignore label."""
    shape = tf.shape(image)
    pad_h = tf.maximum(height - shape[0], 0)
    pad_w = tf.maximum(width - shape[1], 0)
    paddings = [[0, pad_h], [0, pad_w]]
    mean = tf.constant(mean, tf.float32)
    image = tf.pad(image - mean, paddings + [[0, 0]]) + mean
    mask = tf.pad(mask, paddings, constant_values=ignore_index)
    return image, mask


def augment_sample(
    image,
    mask,
    seed,
    *,
    crop_size,
    scale_range=(0.5, 2.0),
    flip=True,
    color_jitter=0.0,
    mean=IMAGENET_MEAN_RGB,
    ignore_index=255,
):
    """Augments one `(image, mask)` pair for training, as in DeepLab and PSPNet.

    In order: random scale (a factor drawn uniformly from `scale_range`,
    image bilinear, mask nearest neighbour); optional colour jitter; padding
    at the bottom and right up to `crop_size` with the `mean` colour (the
    image) and `ignore_index` (the mask); a random `crop_size` crop; a
    horizontal flip with probability 0.5. Masks are only ever resized with
    nearest neighbour, padded with `ignore_index`, cropped and flipped, so
    every output label is an input label or `ignore_index`. Only the crop
    window is computed at the new scale, with the values that resizing the
    whole image and then cropping would give, so the cost follows the crop
    size, not the (up to 4x larger) scaled image.

    All randomness is stateless, from `seed`: the same seed gives the same
    output. Usable inside `tf.data` `map` or eagerly.

    Args:
        image: float32 `(H, W, 3)` RGB in [0, 255].
        mask: integer `(H, W)` label map.
        seed: shape `(2,)` integer tensor (a stateless-random seed).
        crop_size: int or `(height, width)` of the output.
        scale_range: `(min, max)` scale factors. Defaults to (0.5, 2.0);
            `(1.0, 1.0)` turns scaling off.
        flip: random horizontal flip. Defaults to True.
        color_jitter: strength `s` in [0, 1) of random brightness
            (± s * 255), contrast and saturation (factors in [1 - s, 1 + s]).
            Defaults to 0 (off).
        mean: RGB padding colour. Defaults to the ImageNet mean
            (123.675, 116.28, 103.53), which the models normalise to zero.
        ignore_index: mask padding label. Defaults to 255.

    Returns:
        image float32 `(crop_h, crop_w, 3)` and mask int32 `(crop_h, crop_w)`.
    """
    crop_h, crop_w = _size_pair("crop_size", crop_size)
    lo, hi = (float(s) for s in scale_range)
    if not 0 < lo <= hi:
        raise ValueError(
            f"Expected `scale_range` = (min, max) with 0 < min <= max. Received: scale_range={scale_range!r}"
        )
    color_jitter = float(color_jitter)
    if not 0.0 <= color_jitter < 1.0:
        raise ValueError(
            f"Expected `color_jitter` in [0, 1). Received: color_jitter={color_jitter}"
        )
    mean = _check_mean(mean)

    image = tf.convert_to_tensor(image, tf.float32)
    mask = tf.cast(mask, tf.int32)
    if mask.shape.rank == 3:
        mask = mask[..., 0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=8)

    # 1. Random scale: only the size is drawn here. The image is never resized whole:
    # the crop window is computed straight from the input (`_resize_window`), with the
    # values a whole-image resize followed by the crop would give.
    in_size = tf.shape(image)[:2]
    scaled = lo != 1.0 or hi != 1.0
    if scaled:
        scale = tf.random.stateless_uniform([], seeds[0], lo, hi)
        new_size = tf.maximum(tf.cast(tf.round(tf.cast(in_size, tf.float32) * scale), tf.int32), 1)
    else:
        new_size = in_size

    # 2. The crop offsets within the scaled image padded (bottom, right) to the crop.
    top = tf.random.stateless_uniform(
        [], seeds[4], 0, tf.maximum(new_size[0], crop_h) - crop_h + 1, dtype=tf.int32
    )
    left = tf.random.stateless_uniform(
        [], seeds[5], 0, tf.maximum(new_size[1], crop_w) - crop_w + 1, dtype=tf.int32
    )
    # The part of the window inside the scaled image; the rest is padding.
    win_h = tf.minimum(crop_h, new_size[0] - top)
    win_w = tf.minimum(crop_w, new_size[1] - left)
    if scaled:
        window, mask = _resize_window(image, mask, new_size, top, left, win_h, win_w)
    else:
        window = image[top : top + win_h, left : left + win_w]
        mask = mask[top : top + win_h, left : left + win_w]

    # 3. Colour jitter (before padding, so the padding keeps the mean colour). The
    # contrast pivot is the mean colour of the whole scaled image, as if it were resized.
    if color_jitter > 0:
        delta = tf.random.stateless_uniform([], seeds[1], -color_jitter, color_jitter) * 255.0
        window = window + delta
        contrast = tf.random.stateless_uniform([], seeds[2], 1 - color_jitter, 1 + color_jitter)
        if scaled:
            pixel_mean = _resized_mean(image, new_size) + delta
        else:
            pixel_mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True) + delta
        window = (window - pixel_mean) * contrast + pixel_mean
        saturation = tf.random.stateless_uniform([], seeds[3], 1 - color_jitter, 1 + color_jitter)
        grey = tf.reduce_mean(window, axis=-1, keepdims=True)
        window = (window - grey) * saturation + grey
        window = tf.clip_by_value(window, 0.0, 255.0)

    # 4. Pad the window to the crop.
    image, mask = _pad_pair(window, mask, crop_h, crop_w, mean, ignore_index)

    # 5. Horizontal flip.
    if flip:
        do_flip = tf.random.stateless_uniform([], seeds[6]) < 0.5
        image = tf.cond(do_flip, lambda: image[:, ::-1], lambda: image)
        mask = tf.cond(do_flip, lambda: mask[:, ::-1], lambda: mask)

    image = tf.ensure_shape(image, (crop_h, crop_w, 3))
    mask = tf.ensure_shape(mask, (crop_h, crop_w))
    return image, mask


def train_pipeline(
    dataset,
    batch_size,
    crop_size,
    *,
    scale_range=(0.5, 2.0),
    flip=True,
    color_jitter=0.0,
    mean=IMAGENET_MEAN_RGB,
    ignore_index=255,
    seed=None,
    shuffle_buffer=0,
    repeat=False,
    drop_remainder=True,
    num_parallel_calls=tf.data.AUTOTUNE,
    shard=None,
):
    """Turns an unbatched `(image, mask)` dataset into augmented training batches.

    Every sample goes through `augment_sample` (scale, jitter, pad, crop,
    flip) in parallel; batches are prefetched. Each iteration (epoch) draws
    new augmentations, and the whole sequence of epochs is deterministic
    under `seed` (given TensorFlow's global seed, which
    `keras.utils.set_random_seed` also sets). Shuffle the source cheaply with
    `voc_dataset(..., shuffle=True)` / `synthetic_dataset(..., shuffle=True)`,
    or here with `shuffle_buffer` (which holds decoded samples in memory).

    Args:
        dataset: unbatched dataset of `(image, mask)` from `voc_dataset` or
            `synthetic_dataset` (any image sizes).
        batch_size: samples per batch.
        crop_size: int or `(height, width)` of the training crops.
        scale_range, flip, color_jitter, mean, ignore_index: see
            `augment_sample`.
        seed: integer seed, or None for nondeterministic augmentation.
        shuffle_buffer: when > 0, shuffle decoded samples with this buffer.
        repeat: repeat forever (then pass `steps_per_epoch` to `fit`).
        drop_remainder: drop the last incomplete batch. Defaults to True.
        num_parallel_calls: augmentation parallelism. Defaults to AUTOTUNE.
        shard: None, or `(index, count)`: this process's share of a data-parallel
            run of `count` processes (`kseg.training.DistributionPlan.shard`). It
            keeps samples `index`, `index + count`, ... of the sequence an unsharded
            pipeline would augment, with the same augmentations, so that the
            `count` processes' batches of `batch_size` (the global batch divided by
            `count`) hold together exactly the global batch of the unsharded
            pipeline. Every process still reads and decodes every sample; only its
            own are augmented.

    Returns:
        A dataset of `(images, masks)` batches: float32 `(B, h, w, 3)` in
        [0, 255] and int32 `(B, h, w)`; channels_last. For a channels_first
        model, transpose the images in a further `map`.

    Example:

    >>> train = kseg.data.train_pipeline(
    ...     kseg.data.voc_dataset(data_dir, "train_aug", shuffle=True, seed=0),
    ...     batch_size=8, crop_size=513, seed=0)
    """
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise ValueError(
            f"Expected `batch_size` to be a positive integer. Received: batch_size={batch_size!r}"
        )
    kwargs = dict(
        crop_size=_size_pair("crop_size", crop_size),
        scale_range=scale_range,
        flip=flip,
        color_jitter=color_jitter,
        mean=_check_mean(mean),
        ignore_index=ignore_index,
    )
    ds = dataset
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    # One random int64 per sample, different at each iteration, reproducible under `seed`.
    randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, randoms))
    if shard is not None:
        index, count = _check_shard(shard)
        ds = ds.shard(count, index)
    salt = tf.constant(0 if seed is None else int(seed), tf.int64)

    def _augment(sample, r):
        image, mask = sample
        return augment_sample(image, mask, tf.stack([r, salt]), **kwargs)

    ds = ds.map(_augment, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def _check_shard(shard):
    """`(index, count)` of a `shard` argument, or a `ValueError` naming it."""
    try:
        index, count = shard
        valid = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in shard)
    except (TypeError, ValueError):
        valid = False
    if not valid or count < 1 or not 0 <= index < count:
        raise ValueError(
            "Expected `shard` to be None or (index, count) with integers "
            f"0 <= index < count. Received: shard={shard!r}"
        )
    return int(index), int(count)


def eval_preprocess(
    image, mask, size=None, *, policy="pad", mean=IMAGENET_MEAN_RGB, ignore_index=255
):
    """Brings one `(image, mask)` pair to a fixed size for batched evaluation.

    Policies:
    - "pad" (exact): pad bottom and right to `size` with the `mean` colour
      and `ignore_index`, so every original pixel is scored and the padding
      is not. An image larger than `size` is an error (pick a `size` that
      covers the data, e.g. 512 for VOC, whose sides are at most 500).
    - "resize" (approximate): resize the image bilinearly and the mask with
      nearest neighbour to `size`; scores are on resized labels.
    - "none": keep the sample as is (`size` is ignored).

    Returns:
        image float32 `(h, w, 3)` and mask int32 `(h, w)`.
    """
    if policy not in _EVAL_POLICIES:
        raise ValueError(
            f"Expected `policy` to be one of {_EVAL_POLICIES}. Received: policy={policy!r}"
        )
    image = tf.convert_to_tensor(image, tf.float32)
    mask = tf.cast(mask, tf.int32)
    if mask.shape.rank == 3:
        mask = mask[..., 0]
    if policy == "none":
        return image, mask
    height, width = _size_pair("size", size)
    if policy == "resize":
        image, mask = _resize_pair(image, mask, (height, width))
    else:
        shape = tf.shape(image)
        # The check must run before the padding: in a tf.data graph an assertion
        # nothing depends on may run after (or instead of) `ensure_shape`'s error.
        fits = tf.debugging.assert_less_equal(
            shape[:2],
            tf.constant([height, width]),
            message=(
                f"eval_preprocess(policy='pad'): an image is larger than size=({height}, "
                f"{width}); pass a larger size, policy='resize', or evaluate full images "
                "with batch_size=1 and kseg.inference.evaluate (sliding window)."
            ),
        )
        with tf.control_dependencies([fits]):
            image, mask = tf.identity(image), tf.identity(mask)
        image, mask = _pad_pair(image, mask, height, width, _check_mean(mean), ignore_index)
    return tf.ensure_shape(image, (height, width, 3)), tf.ensure_shape(mask, (height, width))


def eval_pipeline(
    dataset,
    batch_size=1,
    *,
    size=None,
    policy=None,
    mean=IMAGENET_MEAN_RGB,
    ignore_index=255,
    num_parallel_calls=tf.data.AUTOTUNE,
):
    """Batches an unbatched `(image, mask)` dataset for validation or testing.

    With `size=None` (the default) samples keep their own size and
    `batch_size` should be 1 unless all samples share a size (the synthetic
    set): the exact choice for `kseg.inference.evaluate`, which also handles
    images larger than the training crop. With a `size`, every sample goes
    through `eval_preprocess` with `policy` ("pad" by default, exact), so
    `model.fit(validation_data=...)` can batch them.

    Args:
        dataset: unbatched dataset of `(image, mask)`.
        batch_size: samples per batch. Defaults to 1.
        size: int or `(height, width)`, or None.
        policy: "pad", "resize" or "none"; defaults to "pad" when `size` is
            given and "none" otherwise. See `eval_preprocess`.
        mean, ignore_index: padding values. See `eval_preprocess`.
        num_parallel_calls: preprocessing parallelism.

    Returns:
        A prefetched dataset of `(images, masks)` batches, float32
        `(B, h, w, 3)` and int32 `(B, h, w)`; nothing is dropped.
    """
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise ValueError(
            f"Expected `batch_size` to be a positive integer. Received: batch_size={batch_size!r}"
        )
    if policy is None:
        policy = "none" if size is None else "pad"
    if policy not in _EVAL_POLICIES:
        raise ValueError(
            f"Expected `policy` to be one of {_EVAL_POLICIES}. Received: policy={policy!r}"
        )
    if policy != "none" and size is None:
        raise ValueError(f"Expected a `size` with policy={policy!r}. Received: size=None")
    if policy != "none":
        _size_pair("size", size)
    ds = dataset.map(
        lambda image, mask: eval_preprocess(
            image, mask, size, policy=policy, mean=mean, ignore_index=ignore_index
        ),
        num_parallel_calls=num_parallel_calls,
        deterministic=True,
    )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
