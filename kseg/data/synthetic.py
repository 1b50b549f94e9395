"""A deterministic synthetic segmentation dataset and fake dataset folder writers.

The synthetic task: textured shapes of `num_classes - 1` foreground classes on
a noisy grey background (class 0). Each foreground class has its own saturated
colour *and* its own texture (stripes of a class-specific orientation and
period, a checkerboard or dots), so a pixel's class can be read from a small
neighbourhood; shapes (ellipses, rectangles, triangles) take any class, have
random size (radius 15-32 % of the image side), brightness and position, and
may occlude each other. The boundaries are sharp, so a good model reaches a
mean IoU well above 0.8: the task is made to be learned in minutes on a CPU by
a small DeepLab-style network, which is what the default of the VOC training
recipe needs.

Every sample is a pure function of `(seed, split, index)`: the same call gives
the same pixels on every machine and backend, and a sample does not depend on
how many others are generated.
"""

import json
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from kseg.data.palette import CITYSCAPES_COLORS, voc_palette

#: Colours of the foreground classes 1, 2, ... (class 0 is the grey background).
#: Chosen far from grey and from each other; classes beyond the table get
#: a colour drawn from a fixed generator.
_CLASS_COLORS = (
    (220, 40, 40),  # red
    (40, 190, 40),  # green
    (40, 70, 230),  # blue
    (235, 215, 30),  # yellow
    (210, 40, 210),  # magenta
    (30, 210, 215),  # cyan
    (245, 130, 20),  # orange
    (120, 40, 200),  # violet
    (130, 80, 30),  # brown
    (160, 230, 120),  # light green
)

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

#: Default number of samples per split of `synthetic_dataset`.
DEFAULT_SYNTHETIC_SIZES = {"train": 1000, "val": 100, "test": 100}


def _class_appearance(class_id):
    """Returns `(rgb, texture, angle, period)` of a foreground class, fixed for all seeds."""
    if class_id - 1 < len(_CLASS_COLORS):
        rgb = np.array(_CLASS_COLORS[class_id - 1], np.float32)
    else:
        rgb = np.random.default_rng([97, class_id]).uniform(30, 230, 3).astype(np.float32)
    texture = ("stripes", "checker", "dots", "stripes")[(class_id - 1) % 4]
    angle = (37.0 * class_id) % 180.0
    period = 6.0 + 2.0 * ((class_id - 1) % 3)
    return rgb, texture, np.deg2rad(angle), period


def _texture(kind, angle, period, yy, xx, phase):
    """A texture in [-1, 1] of shape yy.shape."""
    u = xx * np.cos(angle) + yy * np.sin(angle) + phase
    v = -xx * np.sin(angle) + yy * np.cos(angle) + phase
    if kind == "stripes":
        return np.sign(np.sin(2 * np.pi * u / period))
    if kind == "checker":
        return np.sign(np.sin(np.pi * u / period) * np.sin(np.pi * v / period))
    # dots
    du = (u % period) - period / 2
    dv = (v % period) - period / 2
    return np.where(du * du + dv * dv < (period / 3.0) ** 2, 1.0, -1.0)


def _shape_mask(kind, rng, height, width, yy, xx):
    side = min(height, width)
    radius = rng.uniform(0.15, 0.32) * side
    cy = rng.uniform(0.15, 0.85) * height
    cx = rng.uniform(0.15, 0.85) * width
    if kind == "ellipse":
        ry = radius * rng.uniform(0.6, 1.0)
        rx = radius * rng.uniform(0.6, 1.0)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        a = dx * np.cos(theta) + dy * np.sin(theta)
        b = -dx * np.sin(theta) + dy * np.cos(theta)
        return (a / rx) ** 2 + (b / ry) ** 2 <= 1.0
    if kind == "rectangle":
        hy = radius * rng.uniform(0.5, 1.0)
        hx = radius * rng.uniform(0.5, 1.0)
        return (np.abs(yy - cy) <= hy) & (np.abs(xx - cx) <= hx)
    # triangle: three vertices on a circle, half-plane tests.
    angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    angles = angles + rng.uniform(-0.3, 0.3, 3)
    py, px = cy + radius * np.sin(angles), cx + radius * np.cos(angles)
    inside = np.ones(yy.shape, bool)
    signs = []
    for i in range(3):
        j = (i + 1) % 3
        signs.append((px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i]))
    inside = ((signs[0] >= 0) & (signs[1] >= 0) & (signs[2] >= 0)) | (
        (signs[0] <= 0) & (signs[1] <= 0) & (signs[2] <= 0)
    )
    return inside


def _boundary(mask, width):
    """Pixels within `width` pixels (Chebyshev) of a label change."""
    edge = np.zeros(mask.shape, bool)
    for _ in range(width):
        m = mask
        change = np.zeros(mask.shape, bool)
        change[1:, :] |= m[1:, :] != m[:-1, :]
        change[:-1, :] |= m[1:, :] != m[:-1, :]
        change[:, 1:] |= m[:, 1:] != m[:, :-1]
        change[:, :-1] |= m[:, 1:] != m[:, :-1]
        edge |= change
        mask = np.where(change, -1, mask)
    return edge


def make_synthetic_sample(
    index, *, height=96, width=96, num_classes=6, seed=0, split="train", boundary_width=0
):
    """Draws one synthetic sample as NumPy arrays.

    Args:
        index: sample index (an integer >= 0).
        height, width: image size. Default 96 x 96.
        num_classes: number of classes including the background class 0,
            at least 2. Defaults to 6.
        seed: integer seed. Defaults to 0.
        split: "train", "val" or "test": independent streams of samples.
        boundary_width: when > 0, pixels within this distance of a label
            change get the ignore label 255, like the object outlines of VOC.

    Returns:
        `(image, mask)`: a uint8 `(height, width, 3)` RGB image and a uint8
        `(height, width)` label map.
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f"Expected `split` in {tuple(_SPLIT_IDS)}. Received: split={split!r}")
    if num_classes < 2:
        raise ValueError(f"Expected `num_classes` >= 2. Received: num_classes={num_classes}")
    rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], int(index)])
    yy, xx = np.meshgrid(
        np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij"
    )

    # Background: grey with a random tint, smooth low-frequency shading and pixel noise.
    grey = rng.uniform(90, 170)
    tint = rng.uniform(-12, 12, 3)
    shading = np.zeros((height, width), np.float32)
    for _ in range(3):
        fy, fx = rng.uniform(-1.5, 1.5, 2)
        shading += np.sin(
            2 * np.pi * (fy * yy / height + fx * xx / width) + rng.uniform(0, 2 * np.pi)
        )
    image = grey + tint + 12.0 * shading[..., None] + rng.normal(0, 12, (height, width, 3))
    mask = np.zeros((height, width), np.int32)

    shape_noise = rng.normal(0, 8, (height, width, 3))
    for _ in range(int(rng.integers(3, 6))):
        class_id = int(rng.integers(1, num_classes))
        kind = ("ellipse", "rectangle", "triangle")[int(rng.integers(0, 3))]
        region = _shape_mask(kind, rng, height, width, yy, xx)
        rgb, texture, angle, period = _class_appearance(class_id)
        pattern = _texture(texture, angle, period, yy[region], xx[region], rng.uniform(0, period))
        brightness = rng.uniform(0.8, 1.15)
        image[region] = rgb * brightness + 30.0 * pattern[:, None] + shape_noise[region]
        mask[region] = class_id

    if boundary_width > 0:
        mask = np.where(_boundary(mask, boundary_width), 255, mask)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8)


def make_synthetic_arrays(
    num_samples, *, image_size=96, num_classes=6, seed=0, split="train", boundary_width=0
):
    """Draws `num_samples` synthetic samples (indices 0 .. n-1) as stacked NumPy arrays.

    Returns:
        `(images, masks)`: uint8 arrays of shapes `(n, H, W, 3)` and `(n, H, W)`.
        See `make_synthetic_sample` for the arguments.
    """
    height, width = _size_pair(image_size)
    images = np.empty((num_samples, height, width, 3), np.uint8)
    masks = np.empty((num_samples, height, width), np.uint8)
    for i in range(num_samples):
        images[i], masks[i] = make_synthetic_sample(
            i,
            height=height,
            width=width,
            num_classes=num_classes,
            seed=seed,
            split=split,
            boundary_width=boundary_width,
        )
    return images, masks


def synthetic_dataset(
    split="train",
    num_samples=None,
    *,
    image_size=96,
    num_classes=6,
    seed=0,
    shuffle=False,
):
    """The synthetic segmentation dataset as a `tf.data.Dataset`.

    It is the default data of the training recipe: with the defaults (6
    classes, 96 x 96 images, 1000 training samples) a small DeepLab-style
    network learns it to a validation mean IoU above 0.8 in a few minutes of
    CPU training. The arrays are generated once, in memory (about 28 MB for
    the default training split), in a fraction of a minute.

    Args:
        split: "train", "val" or "test": independent streams of samples.
        num_samples: number of samples. Defaults to 1000 for "train" and 100
            for "val" and "test".
        image_size: int or `(height, width)`. Defaults to 96.
        num_classes: classes including the background 0. Defaults to 6.
        seed: integer seed; the data is a pure function of the seed.
        shuffle: reshuffle the order at every iteration (deterministic under
            `seed`). Defaults to False.

    Returns:
        An unbatched `tf.data.Dataset` of `(image, mask)`: image float32
        `(H, W, 3)` RGB in [0, 255], mask int32 `(H, W)` of class ids. Feed it
        to `kseg.data.train_pipeline` / `eval_pipeline` like a VOC split.

    Example:

    >>> train = kseg.data.synthetic_dataset("train")
    >>> train = kseg.data.train_pipeline(train, batch_size=8, crop_size=96, seed=0)
    """
    if num_samples is None:
        num_samples = DEFAULT_SYNTHETIC_SIZES.get(split, 100)
    images, masks = make_synthetic_arrays(
        num_samples, image_size=image_size, num_classes=num_classes, seed=seed, split=split
    )
    ds = tf.data.Dataset.from_tensor_slices((images, masks))
    if shuffle:
        ds = ds.shuffle(num_samples, seed=seed, reshuffle_each_iteration=True)
    return ds.map(
        lambda image, mask: (tf.cast(image, tf.float32), tf.cast(mask, tf.int32)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _size_pair(size):
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise ValueError(f"Expected an int or (height, width). Received: image_size={size!r}")


def write_fake_voc(
    root,
    *,
    num_train=4,
    num_val=2,
    num_aug_only=0,
    augmented=False,
    num_classes=21,
    min_size=40,
    max_size=72,
    boundary_width=1,
    seed=0,
):
    """Writes a small fake `VOCdevkit/VOC2012` folder with real JPEG and palette PNG files.

    The layout is that of PASCAL VOC 2012: `JPEGImages/<name>.jpg` (RGB JPEG,
    quality 95), `SegmentationClass/<name>.png` (palette PNGs, mode "P", with
    the VOC palette; pixel values are class ids, 255 marks outlines) and
    `ImageSets/Segmentation/{train,val,trainval}.txt`. With `augmented=True`
    it also writes `SegmentationClassAug/<name>.png` (grayscale PNGs, mode
    "L", for the training images and `num_aug_only` extra ones) and
    `ImageSets/Segmentation/train_aug.txt`, the layout of the widely used
    SBD-augmented training set.

    Images have random sizes in `[min_size, max_size]` (height and width
    drawn separately) with synthetic textured shapes of random VOC classes.

    Args:
        root: folder in which `VOCdevkit/VOC2012` is created.
        num_train, num_val: samples in the train and val lists.
        num_aug_only: extra samples that exist only in the augmented set.
        augmented: also write `SegmentationClassAug` and `train_aug.txt`.
        num_classes: labels are drawn from `[0, num_classes)`. Defaults to 21.
        min_size, max_size: range of image heights and widths.
        boundary_width: width of the 255 outlines (0 for none).
        seed: integer seed.

    Returns:
        The path of the `VOC2012` folder (a string).
    """
    voc = os.path.join(os.fspath(root), "VOCdevkit", "VOC2012")
    dirs = ["JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")]
    if augmented:
        dirs.append("SegmentationClassAug")
    for d in dirs:
        os.makedirs(os.path.join(voc, d), exist_ok=True)
    palette = voc_palette().reshape(-1).tolist()
    rng = np.random.default_rng([int(seed), 12345])
    total = num_train + num_val + (num_aug_only if augmented else 0)
    names = [f"2007_{i + 1:06d}" for i in range(total)]
    for i, name in enumerate(names):
        height, width = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
        image, mask = make_synthetic_sample(
            i,
            height=height,
            width=width,
            num_classes=num_classes,
            seed=seed,
            split="test",
            boundary_width=boundary_width,
        )
        Image.fromarray(image, "RGB").save(
            os.path.join(voc, "JPEGImages", name + ".jpg"), quality=95
        )
        is_aug_only = i >= num_train + num_val
        if not is_aug_only:
            png = Image.fromarray(mask, "P")
            png.putpalette(palette)
            png.save(os.path.join(voc, "SegmentationClass", name + ".png"))
        if augmented and (i < num_train or is_aug_only):
            Image.fromarray(mask, "L").save(
                os.path.join(voc, "SegmentationClassAug", name + ".png")
            )
    lists = {
        "train": names[:num_train],
        "val": names[num_train : num_train + num_val],
        "trainval": names[: num_train + num_val],
    }
    if augmented:
        lists["train_aug"] = names[:num_train] + names[num_train + num_val :]
    for split, split_names in lists.items():
        path = os.path.join(voc, "ImageSets", "Segmentation", split + ".txt")
        with open(path, "w") as f:
            f.write("".join(n + "\n" for n in split_names))
    return voc


def _save_mask(path, values, kind, palette=None):
    """Writes stored mask values as a PNG: "ids" (mode L), "ids16" (16-bit), "palette" (P)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "ids16":
        Image.fromarray(np.asarray(values, np.uint16)).save(path)
    elif kind == "palette":
        png = Image.fromarray(np.asarray(values, np.uint8), "P")
        png.putpalette(voc_palette().reshape(-1).tolist() if palette is None else palette)
        png.save(path)
    else:
        Image.fromarray(np.asarray(values, np.uint8), "L").save(path)


def _save_image(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if path.lower().endswith((".jpg", ".jpeg")):
        Image.fromarray(image, "RGB").save(path, quality=95)
    else:
        Image.fromarray(image, "RGB").save(path)


def _fake_samples(count, rng, min_size, max_size, num_classes, seed, boundary_width, split):
    for i in range(count):
        height, width = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
        yield make_synthetic_sample(
            i,
            height=height,
            width=width,
            num_classes=num_classes,
            seed=seed,
            split=split,
            boundary_width=boundary_width,
        )


def write_fake_folder(
    root,
    *,
    num_samples=4,
    num_classes=4,
    mask_format="ids",
    image_suffix=".jpg",
    subfolders=("a", "b"),
    list_file=None,
    description=False,
    min_size=24,
    max_size=40,
    boundary_width=1,
    seed=0,
):
    """Writes a small folder dataset for `kseg.data.folder_dataset`.

    Layout: `root/images/<sub>/img_<i>.<ext>` and `root/masks/<sub>/img_<i>.png`,
    samples spread over `subfolders` in turn (none when empty), synthetic
    textured shapes with random sizes in `[min_size, max_size]`.

    Args:
        root: the dataset folder (created).
        num_samples: number of pairs.
        num_classes: classes 0 .. num_classes - 1 (class 0 the background).
        mask_format: how masks are stored: "ids" (8-bit grayscale), "ids16"
            (16-bit grayscale), "palette" (P PNG, VOC palette) or "rgb"
            (RGB PNG, colours from `colors` of the result).
        image_suffix: ".jpg" (JPEG, quality 95) or ".png" (lossless).
        subfolders: subfolder names the samples are spread over.
        list_file: if a name, also write this list file of
            `images/... masks/...` lines in `root`.
        description: also write `root/dataset.json` with the class names,
            the class count, and for "rgb" masks the mask format and colours.
        min_size, max_size: range of image heights and widths.
        boundary_width: width of the 255 (ignored) outlines; 0 for none. RGB
            masks have no outlines (no colour for them in the table).
        seed: integer seed.

    Returns:
        A dict: "root", "images" and "masks" (paths, sorted by name),
        "labels" (the int32 class-id arrays a reader must return),
        "class_names" and "colors" (the `(num_classes, 3)` RGB table of
        "rgb" masks, else None).
    """
    if mask_format not in ("ids", "ids16", "palette", "rgb"):
        raise ValueError(
            "Expected `mask_format` in ('ids', 'ids16', 'palette', 'rgb'). "
            f"Received: mask_format={mask_format!r}"
        )
    root = os.fspath(root)
    rng = np.random.default_rng([int(seed), 777])
    colors = voc_palette(num_classes).astype(np.int64) if mask_format == "rgb" else None
    if mask_format == "rgb":
        boundary_width = 0
    records = []
    samples = _fake_samples(
        num_samples, rng, min_size, max_size, num_classes, seed, boundary_width, "test"
    )
    for i, (image, mask) in enumerate(samples):
        sub = subfolders[i % len(subfolders)] if subfolders else ""
        image_path = os.path.join(root, "images", sub, f"img_{i:03d}{image_suffix}")
        mask_path = os.path.join(root, "masks", sub, f"img_{i:03d}.png")
        _save_image(image_path, image)
        if mask_format == "rgb":
            os.makedirs(os.path.dirname(mask_path), exist_ok=True)
            Image.fromarray(colors[mask].astype(np.uint8), "RGB").save(mask_path)
        else:
            _save_mask(mask_path, mask, mask_format)
        records.append((image_path, mask_path, mask.astype(np.int32)))
    records.sort()
    class_names = ["background"] + [f"shape_{c}" for c in range(1, num_classes)]
    if list_file:
        with open(os.path.join(root, list_file), "w") as f:
            for image_path, mask_path, _ in records:
                f.write(f"{os.path.relpath(image_path, root)} {os.path.relpath(mask_path, root)}\n")
    if description:
        content = {"class_names": class_names, "num_classes": num_classes}
        if mask_format == "rgb":
            content.update(mask_format="rgb", colors=colors.tolist())
        with open(os.path.join(root, "dataset.json"), "w") as f:
            json.dump(content, f, indent=2)
    return {
        "root": root,
        "images": [r[0] for r in records],
        "masks": [r[1] for r in records],
        "labels": [r[2] for r in records],
        "class_names": class_names,
        "colors": colors,
    }


def write_fake_cityscapes(
    root,
    *,
    cities=("aachen", "bremen"),
    per_city=None,
    train_ids=False,
    size=(24, 48),
    seed=0,
):
    """Writes a small fake `cityscapes` folder (leftImg8bit and gtFine) for the Cityscapes reader.

    For each split and city it writes `per_city[split]` images
    `leftImg8bit/<split>/<city>/<city>_<seq>_000019_leftImg8bit.png` and the
    masks `gtFine/<split>/<city>/..._gtFine_labelIds.png` (label ids: the
    synthetic shapes are training classes, the background a random mix of the
    ids without a training id), `..._gtFine_color.png` (to be ignored by the
    reader) and with `train_ids` also `..._gtFine_labelTrainIds.png`. The test
    split gets all-zero labelIds, as the real placeholders.

    Args:
        root: folder in which `cityscapes/` is created.
        cities: city names; every split has images of each.
        per_city: dict `{split: images per city}`. Defaults to
            `{"train": 2, "val": 1, "test": 1}`.
        train_ids: also write `*_gtFine_labelTrainIds.png`.
        size: `(height, width)` of every image. Defaults to (24, 48).
        seed: integer seed.

    Returns:
        A dict: "root" (the `cityscapes` folder) and per split a dict of
        "images", "label_ids" (mask paths), "train_ids" (paths or None) and
        "labels" (the int32 train-id arrays a reader must return), sorted by
        name.
    """
    from kseg.data.cityscapes import CITYSCAPES_LABEL_TO_TRAIN

    per_city = {"train": 2, "val": 1, "test": 1} if per_city is None else per_city
    train_to_label = {t: k for k, t in CITYSCAPES_LABEL_TO_TRAIN.items() if t != 255}
    void_ids = np.array([k for k, t in CITYSCAPES_LABEL_TO_TRAIN.items() if t == 255 and k >= 0])
    to_label = np.array([train_to_label[t] for t in range(19)])
    base = os.path.join(os.fspath(root), "cityscapes")
    rng = np.random.default_rng([int(seed), 4242])
    result = {"root": base}
    index = 0
    for split, count in per_city.items():
        records = []
        for city in cities:
            for seq in range(count):
                image, shapes = make_synthetic_sample(
                    index, height=size[0], width=size[1], num_classes=20, seed=seed, split="test"
                )
                index += 1
                stem = f"{city}_{seq:06d}_000019"
                folder = os.path.join(base, "{}", split, city)
                image_path = os.path.join(folder.format("leftImg8bit"), stem + "_leftImg8bit.png")
                gt = os.path.join(folder.format("gtFine"), stem + "_gtFine_{}.png")
                shapes = shapes.astype(np.int64)
                labels = np.where(shapes > 0, shapes - 1, 255).astype(np.int32)
                label_ids = np.where(
                    shapes > 0,
                    to_label[np.maximum(shapes - 1, 0)],
                    rng.choice(void_ids, size=shapes.shape),
                )
                if split == "test":
                    label_ids = np.zeros_like(label_ids)
                _save_image(image_path, image)
                _save_mask(gt.format("labelIds"), label_ids, "ids")
                color = np.array(CITYSCAPES_COLORS + ((0, 0, 0),))[np.minimum(labels, 19)]
                Image.fromarray(color.astype(np.uint8), "RGB").save(gt.format("color"))
                train_path = None
                if train_ids:
                    train_path = gt.format("labelTrainIds")
                    _save_mask(train_path, labels, "ids")
                records.append((image_path, gt.format("labelIds"), train_path, labels))
        records.sort(key=lambda r: r[0])
        result[split] = {
            "images": [r[0] for r in records],
            "label_ids": [r[1] for r in records],
            "train_ids": [r[2] for r in records] if train_ids else None,
            "labels": [r[3] for r in records],
        }
    return result


def write_fake_ade20k(root, *, num_training=3, num_validation=2, min_size=24, max_size=40, seed=0):
    """Writes a small fake `ADEChallengeData2016` folder for the ADE20K reader.

    `images/<split>/ADE_<train|val>_<n>.jpg` and `annotations/<split>/....png`
    (grayscale). Synthetic class c (0-5) is stored as c + 1 and the 255
    outlines as 0 ("other objects"), so the reader returns the synthetic
    classes with outlines ignored.

    Args:
        root: folder in which `ADEChallengeData2016/` is created.
        num_training, num_validation: images per split.
        min_size, max_size: range of image heights and widths.
        seed: integer seed.

    Returns:
        A dict: "root" (the `ADEChallengeData2016` folder) and per split
        ("training", "validation") a dict of "images", "masks" (paths) and
        "labels" (the int32 arrays a reader must return), sorted by name.
    """
    base = os.path.join(os.fspath(root), "ADEChallengeData2016")
    rng = np.random.default_rng([int(seed), 150])
    result = {"root": base}
    for split, count, tag in (
        ("training", num_training, "train"),
        ("validation", num_validation, "val"),
    ):
        records = []
        samples = _fake_samples(count, rng, min_size, max_size, 6, seed, 1, tag)
        for i, (image, mask) in enumerate(samples):
            name = f"ADE_{tag}_{i + 1:08d}"
            image_path = os.path.join(base, "images", split, name + ".jpg")
            mask_path = os.path.join(base, "annotations", split, name + ".png")
            stored = np.where(mask == 255, 0, mask.astype(np.int64) + 1)
            _save_image(image_path, image)
            _save_mask(mask_path, stored, "ids")
            records.append((image_path, mask_path, mask.astype(np.int32)))
        result[split] = {
            "images": [r[0] for r in records],
            "masks": [r[1] for r in records],
            "labels": [r[2] for r in records],
        }
    return result
