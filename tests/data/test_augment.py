import numpy as np
import pytest
import tensorflow as tf

from kseg.data import augment, voc
from kseg.data.fixtures import write_fake_voc

MEAN = (123.675, 116.28, 103.53)


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    write_fake_voc(root, num_train=4, num_val=2)
    return str(root)


def _pair(height=10, width=12, seed=0, labels=(0, 3, 7, 255)):
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 255, (height, width, 3)).astype(np.float32)
    mask = rng.choice(np.array(labels, np.int32), (height, width))
    return image, mask


def _seed(i):
    return tf.constant([i, 17], tf.int64)


def test_pipeline_shapes_and_dtypes(fake_root):
    ds = augment.train_pipeline(voc.voc_dataset(fake_root, "train"), 2, (24, 32), seed=0)
    batches = [(np.asarray(i), np.asarray(m)) for i, m in ds]
    assert len(batches) == 2
    for images, masks in batches:
        assert images.shape == (2, 24, 32, 3) and images.dtype == np.float32
        assert masks.shape == (2, 24, 32) and masks.dtype == np.int32
        assert images.min() >= 0.0 and images.max() <= 255.0


def test_augmentation_never_invents_labels(fake_root):
    samples = [(np.asarray(i), np.asarray(m)) for i, m in voc.voc_dataset(fake_root, "train")]
    for k, (image, mask) in enumerate(samples):
        allowed = set(np.unique(mask).tolist()) | {255}
        for i in range(6):
            _, out = augment.augment_sample(
                image, mask, _seed(10 * k + i), crop_size=48, color_jitter=0.3
            )
            assert set(np.unique(np.asarray(out)).tolist()) <= allowed


def test_padding_uses_mean_colour_and_ignore_label():
    image, mask = _pair(10, 12, labels=(1, 2))
    out_image, out_mask = augment.augment_sample(
        image, mask, _seed(0), crop_size=(16, 20), scale_range=(1.0, 1.0), flip=False
    )
    out_image, out_mask = np.asarray(out_image), np.asarray(out_mask)
    # Padded bottom/right; a crop of the padded size has offset 0.
    np.testing.assert_allclose(out_image[:10, :12], image, atol=1e-4)
    np.testing.assert_array_equal(out_mask[:10, :12], mask)
    np.testing.assert_allclose(out_image[10:], np.broadcast_to(MEAN, (6, 20, 3)), atol=1e-4)
    np.testing.assert_allclose(out_image[:, 12:], np.broadcast_to(MEAN, (16, 8, 3)), atol=1e-4)
    assert (out_mask[10:] == 255).all() and (out_mask[:, 12:] == 255).all()


def test_scale_resizes_mask_with_nearest_neighbour():
    image, mask = _pair(6, 5)
    _, out = augment.augment_sample(
        image, mask, _seed(1), crop_size=(12, 10), scale_range=(2.0, 2.0), flip=False
    )
    expected = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_downscale_then_pad():
    image, mask = _pair(8, 8, labels=(4, 5))
    out_image, out_mask = augment.augment_sample(
        image, mask, _seed(2), crop_size=8, scale_range=(0.5, 0.5), flip=False
    )
    out_mask = np.asarray(out_mask)
    np.testing.assert_array_equal(out_mask[:4, :4], mask[1::2, 1::2])
    assert (out_mask[4:] == 255).all() and (out_mask[:, 4:] == 255).all()


def test_crop_is_a_window_of_the_input():
    image, mask = _pair(20, 24)
    for i in range(5):
        out_image, out_mask = augment.augment_sample(
            image, mask, _seed(i), crop_size=(8, 9), scale_range=(1.0, 1.0), flip=False
        )
        out_mask = np.asarray(out_mask)
        hits = [
            (t, l)
            for t in range(20 - 8 + 1)
            for l in range(24 - 9 + 1)  # noqa: E741
            if np.array_equal(mask[t : t + 8, l : l + 9], out_mask)
            and np.allclose(image[t : t + 8, l : l + 9], np.asarray(out_image), atol=1e-4)
        ]
        assert hits


def test_flip_is_horizontal_and_both_outcomes_occur():
    image, mask = _pair(6, 7)
    outcomes = set()
    for i in range(16):
        out_image, out_mask = augment.augment_sample(
            image, mask, _seed(i), crop_size=(6, 7), scale_range=(1.0, 1.0)
        )
        out_image, out_mask = np.asarray(out_image), np.asarray(out_mask)
        if np.array_equal(out_mask, mask):
            np.testing.assert_allclose(out_image, image, atol=1e-4)
            outcomes.add("same")
        else:
            np.testing.assert_array_equal(out_mask, mask[:, ::-1])
            np.testing.assert_allclose(out_image, image[:, ::-1], atol=1e-4)
            outcomes.add("flipped")
    assert outcomes == {"same", "flipped"}


def test_color_jitter_keeps_range_and_mask():
    image, mask = _pair(8, 8)
    out_image, out_mask = augment.augment_sample(
        image, mask, _seed(3), crop_size=8, scale_range=(1.0, 1.0), flip=False, color_jitter=0.9
    )
    out_image = np.asarray(out_image)
    assert out_image.min() >= 0.0 and out_image.max() <= 255.0
    assert not np.allclose(out_image, image)
    np.testing.assert_array_equal(np.asarray(out_mask), mask)


def _reference_augment(image, mask, seed, crop_size, scale_range, color_jitter):
    """The definition of `augment_sample`, step by step on whole images.

    Resize the whole pair (`tf.image.resize`: bilinear image, nearest mask), colour
    jitter the whole resized image (NumPy), pad bottom/right with the mean colour and
    255, crop, flip (NumPy); the random draws are those `augment_sample` documents
    (stateless, from `seed` split in 8: 0 scale, 1-3 jitter, 4-5 offsets, 6 flip).
    """
    crop_h, crop_w = crop_size
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=8)
    height, width = mask.shape
    scale = np.float32(tf.random.stateless_uniform([], seeds[0], *scale_range))
    new_h, new_w = np.maximum(np.round(np.float32([height, width]) * scale).astype(int), 1)
    out = tf.image.resize(image, (new_h, new_w), method="bilinear").numpy()
    labels = tf.image.resize(mask[..., None], (new_h, new_w), method="nearest").numpy()[..., 0]
    if color_jitter:
        j = color_jitter
        out = out + np.float32(tf.random.stateless_uniform([], seeds[1], -j, j)) * 255
        contrast = np.float32(tf.random.stateless_uniform([], seeds[2], 1 - j, 1 + j))
        pivot = out.mean(axis=(0, 1), dtype=np.float64)
        out = (out - pivot) * contrast + pivot
        saturation = np.float32(tf.random.stateless_uniform([], seeds[3], 1 - j, 1 + j))
        grey = out.mean(axis=-1, keepdims=True)
        out = np.clip((out - grey) * saturation + grey, 0, 255)
    pad_h, pad_w = max(new_h, crop_h), max(new_w, crop_w)
    padded = np.empty((pad_h, pad_w, 3), np.float64)
    padded[:] = MEAN
    padded[:new_h, :new_w] = out
    padded_mask = np.full((pad_h, pad_w), 255, np.int64)
    padded_mask[:new_h, :new_w] = labels
    top = int(tf.random.stateless_uniform([], seeds[4], 0, pad_h - crop_h + 1, dtype=tf.int32))
    left = int(tf.random.stateless_uniform([], seeds[5], 0, pad_w - crop_w + 1, dtype=tf.int32))
    out = padded[top : top + crop_h, left : left + crop_w]
    labels = padded_mask[top : top + crop_h, left : left + crop_w]
    if float(tf.random.stateless_uniform([], seeds[6])) < 0.5:
        out, labels = out[:, ::-1], labels[:, ::-1]
    return out, labels


@pytest.mark.parametrize(
    "size, crop_size, scale_range, color_jitter",
    [
        ((13, 21), (8, 10), (0.5, 2.0), 0.0),  # crop inside or beyond the scaled image
        ((37, 50), (40, 30), (0.5, 2.0), 0.0),  # taller than most scaled images: padding
        ((48, 96), (24, 48), (0.5, 2.0), 0.0),  # the Cityscapes shape, 1/21 size
        ((9, 7), (12, 12), (0.25, 0.6), 0.0),  # always padded on both sides
        ((20, 30), (16, 16), (0.5, 2.0), 0.4),  # jitter pivot: mean of the scaled image
        ((20, 30), (16, 16), (1.0, 1.0), 0.4),  # no scaling
    ],
)
def test_window_resize_equals_resizing_the_whole_image(size, crop_size, scale_range, color_jitter):
    # The window is computed from the input only; values must be those of resizing the
    # whole image first (mask labels exactly), in eager mode and inside a tf.function.
    image, mask = _pair(*size, labels=(0, 1, 5, 18, 255))
    graph = tf.function(augment.augment_sample)
    atol = 1e-2 if color_jitter else 1e-3
    for i in range(8):
        expected, expected_mask = _reference_augment(
            image, mask, _seed(i), crop_size, scale_range, color_jitter
        )
        kwargs = dict(crop_size=crop_size, scale_range=scale_range, color_jitter=color_jitter)
        for run in (augment.augment_sample, graph):
            out, out_mask = run(image, mask, _seed(i), **kwargs)
            np.testing.assert_array_equal(np.asarray(out_mask), expected_mask)
            np.testing.assert_allclose(np.asarray(out), expected, atol=atol, rtol=0)


def _batches(ds):
    return [(np.asarray(i), np.asarray(m)) for i, m in ds]


def test_deterministic_under_seed(fake_root):
    def make(seed):
        return augment.train_pipeline(
            voc.voc_dataset(fake_root, "train", shuffle=True, seed=seed),
            2,
            24,
            seed=seed,
            color_jitter=0.2,
        )

    first = _batches(make(5))
    second = _batches(make(5))
    other = _batches(make(6))
    for (a, b), (c, d) in zip(first, second):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    assert any(not np.array_equal(a[0], c[0]) for a, c in zip(first, other))
    # A new epoch draws new augmentations, reproducibly.
    ds = make(5)
    epoch1, epoch2 = _batches(ds), _batches(ds)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(epoch1, epoch2))
    for (a, _), (b, _) in zip(epoch1, first):
        np.testing.assert_array_equal(a, b)


def test_repeat_and_remainder(fake_root):
    ds = augment.train_pipeline(voc.voc_dataset(fake_root, "train"), 3, 16, seed=0)
    assert len(_batches(ds)) == 1  # 4 samples, drop_remainder
    ds = augment.train_pipeline(
        voc.voc_dataset(fake_root, "train"), 3, 16, seed=0, drop_remainder=False
    )
    assert [b[0].shape[0] for b in _batches(ds)] == [3, 1]
    ds = augment.train_pipeline(voc.voc_dataset(fake_root, "train"), 3, 16, seed=0, repeat=True)
    assert len(_batches(ds.take(5))) == 5


def test_eval_pipeline_pad_resize_none(fake_root):
    source = voc.voc_dataset(fake_root, "val")
    originals = _batches(source)
    padded = _batches(augment.eval_pipeline(source, 2, size=80))
    images, masks = padded[0]
    assert images.shape == (2, 80, 80, 3) and masks.shape == (2, 80, 80)
    for k, (image, mask) in enumerate(originals):
        h, w = mask.shape
        np.testing.assert_allclose(images[k, :h, :w], image, atol=1e-4)
        np.testing.assert_array_equal(masks[k, :h, :w], mask)
        assert (masks[k, h:] == 255).all() and (masks[k, :, w:] == 255).all()
        np.testing.assert_allclose(
            images[k, h:, :], np.broadcast_to(MEAN, images[k, h:].shape), atol=1e-4
        )
    resized = _batches(augment.eval_pipeline(source, 2, size=(30, 40), policy="resize"))
    assert resized[0][0].shape == (2, 30, 40, 3)
    allowed = set(np.unique(np.concatenate([m.ravel() for _, m in originals])).tolist())
    assert set(np.unique(resized[0][1]).tolist()) <= allowed
    full = _batches(augment.eval_pipeline(source))
    assert [m.shape for _, m in full] == [(1,) + m.shape for _, m in originals]


def test_eval_pad_rejects_larger_images(fake_root):
    source = voc.voc_dataset(fake_root, "val")
    with pytest.raises(tf.errors.InvalidArgumentError, match="larger than size"):
        _batches(augment.eval_pipeline(source, 1, size=16))


def test_bad_arguments():
    image, mask = _pair()
    with pytest.raises(ValueError, match="Received: crop_size=0"):
        augment.augment_sample(image, mask, _seed(0), crop_size=0)
    with pytest.raises(ValueError, match="Received: scale_range"):
        augment.augment_sample(image, mask, _seed(0), crop_size=4, scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="Received: color_jitter=1.5"):
        augment.augment_sample(image, mask, _seed(0), crop_size=4, color_jitter=1.5)
    ds = tf.data.Dataset.from_tensors((image, mask))
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        augment.train_pipeline(ds, 0, 4)
    with pytest.raises(ValueError, match="Received: policy='crop'"):
        augment.eval_pipeline(ds, 1, size=4, policy="crop")
    with pytest.raises(ValueError, match="Received: size=None"):
        augment.eval_pipeline(ds, 1, policy="pad")


@pytest.mark.parametrize("count", [2, 3])
def test_shards_hold_together_the_unsharded_batches(fake_root, count):
    """Each of `count` processes takes every `count`-th sample with its augmentation: the
    shards' batches of `batch / count` are together the unsharded batch, step by step."""

    def make(batch, shard=None):
        source = voc.voc_dataset(fake_root, "train", shuffle=True, seed=3)
        return augment.train_pipeline(
            source, batch, 24, seed=3, repeat=True, color_jitter=0.2, shard=shard
        )

    whole = _batches(make(2 * count).take(3))
    shards = [_batches(make(2, (index, count)).take(3)) for index in range(count)]
    for step, (images, masks) in enumerate(whole):
        # Sample j of the global batch is sample j // count of shard j % count.
        order = [(j % count, j // count) for j in range(2 * count)]
        np.testing.assert_array_equal(np.stack([shards[s][step][0][k] for s, k in order]), images)
        np.testing.assert_array_equal(np.stack([shards[s][step][1][k] for s, k in order]), masks)


@pytest.mark.parametrize("shard", [(2, 2), (0, 0), (-1, 2), 3, (0.0, 2), (True, 2)])
def test_bad_shard(fake_root, shard):
    with pytest.raises(ValueError, match=r"Expected `shard` to be None or \(index, count\)"):
        augment.train_pipeline(voc.voc_dataset(fake_root, "train"), 2, 16, shard=shard)
