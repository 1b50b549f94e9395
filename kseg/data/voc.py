"""PASCAL VOC 2012 segmentation reader (tf.data) and a data checker.

Run `python -m kseg.data.voc --check DATA_DIR` to check a VOC folder: it
reports every unreadable image, missing file, size mismatch and bad label at
once and exits with status 1 when there is any.

Expected layout (the VOC 2012 tarball, optionally with the SBD-augmented
`SegmentationClassAug` added next to `SegmentationClass`)::

    VOCdevkit/VOC2012/
      JPEGImages/<name>.jpg
      SegmentationClass/<name>.png        palette PNGs: pixel value = class id
      SegmentationClassAug/<name>.png     optional, grayscale class-id PNGs
      ImageSets/Segmentation/train.txt, val.txt, trainval.txt
      ImageSets/Segmentation/train_aug.txt   optional (or VOC2012/train_aug.txt)

`DATA_DIR` may be the `VOC2012` folder itself, the `VOCdevkit` folder or
the folder that contains `VOCdevkit`.
"""

import argparse
import os
import sys

import numpy as np
import tensorflow as tf
from PIL import Image

from kseg.data.errors import DataError

#: Splits understood by `voc_dataset`; "train_aug" reads `SegmentationClassAug`.
VOC_SPLITS = ("train", "val", "trainval", "train_aug")


class VOCDataError(DataError):
    """A VOC folder's list file is bad or a listed file is missing; the message names the file.

    The image and mask readers raise its parent `kseg.data.DataError`, which
    `except DataError` catches along with this class.
    """


def find_voc_root(data_dir):
    """Returns the `VOC2012` folder inside `data_dir`.

    Accepts the `VOC2012` folder, a `VOCdevkit` folder or a folder that
    contains `VOCdevkit/VOC2012`; raises `FileNotFoundError` otherwise.
    """
    data_dir = os.fspath(data_dir)
    candidates = [
        data_dir,
        os.path.join(data_dir, "VOC2012"),
        os.path.join(data_dir, "VOCdevkit", "VOC2012"),
    ]
    for path in candidates:
        if os.path.isdir(os.path.join(path, "JPEGImages")):
            return path
    raise FileNotFoundError(
        f"No PASCAL VOC 2012 folder found in {data_dir!r}: expected "
        "'VOCdevkit/VOC2012/JPEGImages' (or 'VOC2012/JPEGImages' or 'JPEGImages') inside it. "
        "Download and extract VOCtrainval_11-May-2012.tar, then pass the folder that holds "
        "VOCdevkit."
    )


def _list_file(root, split):
    candidates = [os.path.join(root, "ImageSets", "Segmentation", split + ".txt")]
    if split == "train_aug":
        candidates.append(os.path.join(root, "train_aug.txt"))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"Missing list file for split {split!r}: {candidates[0]} does not exist."
        + (
            " The 'train_aug' split needs SegmentationClassAug and its list "
            "(ImageSets/Segmentation/train_aug.txt) from the SBD-augmented VOC set."
            if split == "train_aug"
            else ""
        )
    )


def voc_file_list(data_dir, split="train"):
    """Lists the `(image_path, mask_path)` pairs of a VOC split.

    Lines of the list file are either a sample name (`2007_000032`) or two
    paths relative to the `VOC2012` folder (`/JPEGImages/2007_000032.jpg
    /SegmentationClassAug/2007_000032.png`, the format of some published
    `train_aug.txt` files).

    Args:
        data_dir: see `find_voc_root`.
        split: one of `VOC_SPLITS`.

    Returns:
        Two lists of paths, images and masks, in list-file order.

    Raises:
        FileNotFoundError: the folder or the list file is missing (the
            message names the file).
    """
    if split not in VOC_SPLITS:
        raise ValueError(f"Expected `split` to be one of {VOC_SPLITS}. Received: split={split!r}")
    root = find_voc_root(data_dir)
    list_path = _list_file(root, split)
    mask_dir = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
    images, masks = [], []
    with open(list_path) as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 1:
                images.append(os.path.join(root, "JPEGImages", parts[0] + ".jpg"))
                masks.append(os.path.join(root, mask_dir, parts[0] + ".png"))
            elif len(parts) == 2:
                images.append(os.path.join(root, parts[0].lstrip("/")))
                masks.append(os.path.join(root, parts[1].lstrip("/")))
            else:
                raise VOCDataError(
                    f"{list_path}, line {line_no}: expected a sample name or two paths. "
                    f"Received: {line.strip()!r}"
                )
    if not images:
        raise VOCDataError(f"{list_path}: the list file is empty.")
    return images, masks


#: Pillow modes of one-band images read as they are stored (8-bit, 16-bit, 32-bit, float).
_ONE_BAND_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F")


def read_image(path, channels=3):
    """Reads an image file as a float32 `(H, W, channels)` array (8-bit values in [0, 255]).

    Args:
        path: the image file.
        channels: the channel count to return. 3 (default): RGB; any image
            Pillow converts to RGB (grayscale, palette, RGBA without its alpha,
            ...). 1: a one-band image (8-bit, 16-bit or float values as stored)
            or an RGB image whose three channels are equal (a grey image
            stored as RGB). 4: a four-band image (RGBA, or a 4-band TIFF/PNG
            such as RGB-NIR), bands in the file's order.

    Raises:
        DataError: the file is missing or unreadable, or its channels cannot
            be converted to `channels` (a colour image for 1, fewer bands for 4).
    """
    if channels not in (1, 3, 4):
        raise ValueError(f"Expected `channels` to be 1, 3 or 4. Received: channels={channels!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: image file not found.")
    try:
        with Image.open(path) as img:
            img.load()
            mode, bands = img.mode, len(img.getbands())
            if channels == 3:
                return np.asarray(img.convert("RGB"), dtype=np.float32)
            if channels == 4:
                if bands == 4 and mode != "CMYK":
                    return np.asarray(img, dtype=np.float32)
            elif mode in _ONE_BAND_MODES:
                return np.asarray(img.convert("L") if mode == "1" else img, np.float32)[..., None]
            elif mode in ("RGB", "P"):
                rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
                if (rgb == rgb[..., :1]).all():
                    return rgb[..., :1]
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable or corrupt image ({e}).") from None
    if channels == 1:
        wanted = "1 channel (a grayscale image, or an RGB one whose channels are equal)"
    else:
        wanted = "4 channels (RGBA or a 4-band image)"
    colour = ", a colour image" if channels == 1 and mode in ("RGB", "P") else ""
    raise DataError(
        f"{path}: expected an image with {wanted}. "
        f"Received: mode {mode!r} with {bands} channel(s){colour}."
    )


def read_mask(path, num_classes=21, ignore_index=255):
    """Reads a class-id PNG (palette "P" or grayscale "L") as an int32 `(H, W)` array.

    Palette PNGs are read as palette indices, which are the class ids (as in
    VOC's `SegmentationClass`); they are never converted to colours. Values
    other than `[0, num_classes)` and `ignore_index` raise `DataError`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: mask file not found.")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("P", "L"):
                raise DataError(
                    f"{path}: expected a palette ('P') or grayscale ('L') PNG of class ids. "
                    f"Received: mode {img.mode!r}. An RGB-coloured mask must be converted to "
                    "class ids first."
                )
            mask = np.asarray(img, dtype=np.int32)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable or corrupt mask ({e}).") from None
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != ignore_index)]
    if bad.size:
        raise DataError(
            f"{path}: mask values {bad.tolist()} are outside the classes [0, {num_classes}) "
            f"and the ignore value {ignore_index}."
        )
    return mask


def read_sample(image_path, mask_path, num_classes=21, ignore_index=255):
    """Reads and checks one `(image, mask)` pair; errors name the bad file.

    Returns:
        image float32 `(H, W, 3)` in [0, 255] and mask int32 `(H, W)`.
    """
    image = read_image(image_path)
    mask = read_mask(mask_path, num_classes, ignore_index)
    if image.shape[:2] != mask.shape:
        raise DataError(
            f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from its "
            f"image {image_path} ({image.shape[1]}x{image.shape[0]})."
        )
    return image, mask


def voc_dataset(
    data_dir,
    split="train",
    *,
    num_classes=21,
    ignore_index=255,
    shuffle=False,
    seed=None,
    num_parallel_calls=tf.data.AUTOTUNE,
):
    """A PASCAL VOC 2012 segmentation split as a `tf.data.Dataset`.

    Files are decoded with Pillow in parallel (`num_parallel_calls`), in
    list-file order unless `shuffle`. Missing folders, list files and listed
    files raise at once (`FileNotFoundError` / `VOCDataError`, naming the
    file); a corrupt image, a mask whose size differs from its image or a
    mask value outside `[0, num_classes)` and `ignore_index` stops iteration
    with a `tf.errors.InvalidArgumentError` whose message names the file. Run
    `python -m kseg.data.voc --check DATA_DIR` to list every bad file.

    Args:
        data_dir: see `find_voc_root`.
        split: "train" (1464 images), "val" (1449), "trainval" or
            "train_aug" (10582 images with `SegmentationClassAug` masks).
        num_classes: number of classes. Defaults to 21.
        ignore_index: label of the object outlines, kept as is. Defaults to 255.
        shuffle: reshuffle the file order at every iteration (before
            decoding, so it costs no memory). Deterministic under `seed`.
        seed: integer seed for `shuffle`.
        num_parallel_calls: decoding parallelism. Defaults to AUTOTUNE.

    Returns:
        An unbatched dataset of `(image, mask)`: image float32 `(H, W, 3)`
        RGB in [0, 255], mask int32 `(H, W)` (class ids, 255 = ignore). Sizes
        vary between samples: use `train_pipeline` or `eval_pipeline` to batch.
    """
    images, masks = voc_file_list(data_dir, split)
    missing = [p for p in images + masks if not os.path.isfile(p)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise VOCDataError(f"{missing[0]}: listed in split {split!r} but not found{more}.")

    def load(image_path, mask_path):
        return read_sample(
            image_path.decode(),
            mask_path.decode(),
            num_classes=num_classes,
            ignore_index=ignore_index,
        )

    def tf_load(image_path, mask_path):
        image, mask = tf.numpy_function(
            load, [image_path, mask_path], [tf.float32, tf.int32], stateful=False
        )
        image.set_shape([None, None, 3])
        mask.set_shape([None, None])
        return image, mask

    ds = tf.data.Dataset.from_tensor_slices((images, masks))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return ds.map(tf_load, num_parallel_calls=num_parallel_calls, deterministic=True)


def check_voc(data_dir, splits=None, *, num_classes=21, ignore_index=255):
    """Checks every listed file of a VOC folder and returns all problems.

    Args:
        data_dir: see `find_voc_root`.
        splits: splits to check. Defaults to train, val and trainval, plus
            train_aug when `SegmentationClassAug` exists.
        num_classes, ignore_index: the valid labels.

    Returns:
        A list of `(path, message)` pairs, one per bad file or missing list
        file, each file reported once; empty when the data is good.
    """
    problems = []
    try:
        root = find_voc_root(data_dir)
    except FileNotFoundError as e:
        return [(os.fspath(data_dir), str(e))]
    if splits is None:
        splits = ["train", "val", "trainval"]
        if os.path.isdir(os.path.join(root, "SegmentationClassAug")):
            splits.append("train_aug")
    seen = set()
    for split in splits:
        try:
            images, masks = voc_file_list(root, split)
        except (FileNotFoundError, VOCDataError) as e:
            problems.append(
                (os.path.join(root, "ImageSets", "Segmentation", split + ".txt"), str(e))
            )
            continue
        for image_path, mask_path in zip(images, masks):
            if (image_path, mask_path) in seen:
                continue
            seen.add((image_path, mask_path))
            image = mask = None
            try:
                image = read_image(image_path)
            except DataError as e:
                problems.append((image_path, str(e)))
            try:
                mask = read_mask(mask_path, num_classes, ignore_index)
            except DataError as e:
                problems.append((mask_path, str(e)))
            if image is not None and mask is not None and image.shape[:2] != mask.shape:
                problems.append(
                    (
                        mask_path,
                        f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs "
                        f"from its image {image_path} ({image.shape[1]}x{image.shape[0]}).",
                    )
                )
    # A file listed in several splits is reported once.
    unique, reported = [], set()
    for path, message in problems:
        if (path, message) not in reported:
            reported.add((path, message))
            unique.append((path, message))
    return unique


def main(argv=None):
    """Command line: `python -m kseg.data.voc --check DATA_DIR [--split S ...]`."""
    parser = argparse.ArgumentParser(
        prog="python -m kseg.data.voc", description="Check a PASCAL VOC 2012 segmentation folder."
    )
    parser.add_argument("--check", metavar="DATA_DIR", required=True, help="folder to check")
    parser.add_argument("--split", action="append", choices=VOC_SPLITS, help="split(s) to check")
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--ignore-index", type=int, default=255)
    args = parser.parse_args(argv)
    problems = check_voc(
        args.check, args.split, num_classes=args.num_classes, ignore_index=args.ignore_index
    )
    for _, message in problems:
        print(message)
    if problems:
        print(f"{len(problems)} problem(s) found in {args.check}.", file=sys.stderr)
        return 1
    print(f"OK: no problems found in {args.check}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
