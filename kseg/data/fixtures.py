"""Fake dataset folders on disk, in the layouts of the real datasets, for tests and smoke runs.

`write_fake_voc`, `write_fake_cityscapes`, `write_fake_ade20k` and
`write_fake_folder` write small trees of real image and mask files (JPEG and
PNG, the masks in each dataset's own encoding) with the textured shapes of
`kseg.data.synthetic`, so that the readers, the checkers and the recipes run
on them as on the real data. Each returns what a reader must find there.
"""

import json
import os

import numpy as np
from PIL import Image

from kseg.data.palette import CITYSCAPES_COLORS, voc_palette
from kseg.data.synthetic import make_synthetic_sample


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
