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

import tensorflow as tf

from kseg.data._reader import (
    LabelMap,
    build_dataset,
    check_pairs,
    read_image,  # noqa: F401  (public here: kseg.data.read_image, recipes)
    read_pair,
    report_problems,
    require_files,
)
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


def read_mask(path, num_classes=21, ignore_index=255):
    """Reads a class-id PNG (palette "P" or grayscale "L"/16-bit) as an int32 `(H, W)` array.

    Palette PNGs are read as palette indices, which are the class ids (as in
    VOC's `SegmentationClass`); they are never converted to colours. Values
    other than `[0, num_classes)` and `ignore_index` raise `DataError`.
    """
    return LabelMap(num_classes, ignore_index=ignore_index).read(path)


def read_sample(image_path, mask_path, num_classes=21, ignore_index=255):
    """Reads and checks one `(image, mask)` pair; errors name the bad file.

    Returns:
        image float32 `(H, W, 3)` in [0, 255] and mask int32 `(H, W)`.
    """
    return read_pair(image_path, mask_path, LabelMap(num_classes, ignore_index=ignore_index))


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
    label_map = LabelMap(num_classes, ignore_index=ignore_index)
    require_files(images, masks, f"listed in split {split!r}", error=VOCDataError)
    return build_dataset(
        images,
        masks,
        label_map,
        shuffle=shuffle,
        seed=seed,
        num_parallel_calls=num_parallel_calls,
    )


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
    label_map = LabelMap(num_classes, ignore_index=ignore_index)
    seen = set()
    for split in splits:
        try:
            images, masks = voc_file_list(root, split)
        except (FileNotFoundError, VOCDataError) as e:
            problems.append(
                (os.path.join(root, "ImageSets", "Segmentation", split + ".txt"), str(e))
            )
            continue
        # A file listed in several splits is reported once.
        problems = check_pairs(images, masks, label_map, problems, seen)
    return problems


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
    return report_problems(problems, args.check)


if __name__ == "__main__":
    sys.exit(main())
