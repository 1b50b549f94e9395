"""Cityscapes (fine annotations) reader and checker.

Expected layout (`leftImg8bit_trainvaltest.zip` and `gtFine_trainvaltest.zip`
extracted into one folder)::

    cityscapes/
      leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
      gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
      gtFine/.../<city>_<seq>_<frame>_gtFine_labelTrainIds.png   optional

The 19 training classes are the `trainId`s of cityscapesScripts'
`labels.py`. When a split's `gtFine` folder holds `*_gtFine_labelTrainIds.png`
files (written by cityscapesScripts' `createTrainIdLabelImgs.py`) they are
read as they are; otherwise the `*_gtFine_labelIds.png` files are converted
with `CITYSCAPES_LABEL_TO_TRAIN` while decoding. Labels with no training id
become 255 (ignored).

The test split has no public labels (its `gtFine/test` files are
placeholders), so `cityscapes_dataset(..., "test")` raises: predict on the
`leftImg8bit/test` images instead.
"""

import os

import tensorflow as tf

from kseg.data._reader import (
    LabelMap,
    build_dataset,
    check_splits,
    first_existing,
    pair_by_name,
    raise_problems,
)
from kseg.data.errors import DataError

#: Splits of the fine annotations that `cityscapes_dataset` reads.
CITYSCAPES_SPLITS = ("train", "val")

#: Cityscapes `labelId` -> `trainId` (255: not a training class), the `id` and `trainId`
#: columns of cityscapesScripts `cityscapesscripts/helpers/labels.py`. Label -1 (license
#: plate, trainId -1 there) never occurs in the labelIds images and is ignored too.
CITYSCAPES_LABEL_TO_TRAIN = {
    0: 255,  # unlabeled
    1: 255,  # ego vehicle
    2: 255,  # rectification border
    3: 255,  # out of roi
    4: 255,  # static
    5: 255,  # dynamic
    6: 255,  # ground
    7: 0,  # road
    8: 1,  # sidewalk
    9: 255,  # parking
    10: 255,  # rail track
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    14: 255,  # guard rail
    15: 255,  # bridge
    16: 255,  # tunnel
    17: 5,  # pole
    18: 255,  # polegroup
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    29: 255,  # caravan
    30: 255,  # trailer
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
    -1: 255,  # license plate
}

_IMAGE_SUFFIX = "_leftImg8bit.png"
_TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"
_LABEL_ID_SUFFIX = "_gtFine_labelIds.png"
_NUM_CLASSES = 19


def find_cityscapes_root(data_dir):
    """Returns the folder that holds `leftImg8bit` and `gtFine`.

    Accepts that folder or its parent (a folder holding `cityscapes/`);
    raises `FileNotFoundError` otherwise.
    """
    data_dir = os.fspath(data_dir)
    root = first_existing([data_dir, os.path.join(data_dir, "cityscapes")], "leftImg8bit")
    if root is None:
        raise FileNotFoundError(
            f"No Cityscapes folder found in {data_dir!r}: expected 'leftImg8bit' (and 'gtFine') "
            "inside it or inside 'cityscapes/' in it. Extract leftImg8bit_trainvaltest.zip and "
            "gtFine_trainvaltest.zip into one folder."
        )
    return root


def _split_files(data_dir, split):
    """`(images, masks, label_map, problems)` of a split; raises on a missing folder or split."""
    if split == "test":
        raise ValueError(
            "The Cityscapes test split has no public labels (its gtFine/test files are "
            "placeholders), so it cannot be trained or evaluated on: predict on "
            "leftImg8bit/test instead. Expected `split` in ('train', 'val'). Received: "
            "split='test'"
        )
    if split not in CITYSCAPES_SPLITS:
        raise ValueError(
            f"Expected `split` to be one of {CITYSCAPES_SPLITS}. Received: split={split!r}"
        )
    root = find_cityscapes_root(data_dir)
    image_folder = os.path.join(root, "leftImg8bit", split)
    mask_folder = os.path.join(root, "gtFine", split)
    for folder in (image_folder, mask_folder):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"Cityscapes split {split!r}: folder not found: {folder}")
    has_train_ids = any(
        name.endswith(_TRAIN_ID_SUFFIX) for _, _, names in os.walk(mask_folder) for name in names
    )
    if has_train_ids:
        suffix = _TRAIN_ID_SUFFIX
        label_map = LabelMap(_NUM_CLASSES)
    else:
        suffix = _LABEL_ID_SUFFIX
        table = {k: v for k, v in CITYSCAPES_LABEL_TO_TRAIN.items() if k >= 0}
        label_map = LabelMap(_NUM_CLASSES, mask_format="ids", id_map=table)
    images, masks, problems = pair_by_name(image_folder, mask_folder, _IMAGE_SUFFIX, suffix)
    if not images and not problems:
        raise DataError(
            f"Cityscapes split {split!r} is empty: no *{_IMAGE_SUFFIX} files in {image_folder}."
        )
    return images, masks, label_map, problems


def cityscapes_file_list(data_dir, split="train"):
    """Lists the `(image, mask)` paths of a Cityscapes split, sorted by city and name.

    The masks are the `*_gtFine_labelTrainIds.png` files when the split has
    any, else the `*_gtFine_labelIds.png` files.

    Args:
        data_dir: see `find_cityscapes_root`.
        split: "train" (2975 images) or "val" (500).

    Returns:
        Two lists of paths, images and masks.

    Raises:
        ValueError: `split` is "test" (no labels) or unknown.
        FileNotFoundError: a folder is missing (the message names it).
        DataError: the split is empty, or an image has no mask or a mask no
            image (the message lists the files).
    """
    images, masks, _, problems = _split_files(data_dir, split)
    raise_problems(problems)
    return images, masks


def cityscapes_dataset(
    data_dir,
    split="train",
    *,
    shuffle=False,
    seed=None,
    num_parallel_calls=tf.data.AUTOTUNE,
):
    """A Cityscapes split (fine annotations, 19 classes) as a `tf.data.Dataset`.

    Files are decoded with Pillow in parallel; labelIds masks are converted to
    trainIds (`CITYSCAPES_LABEL_TO_TRAIN`) while decoding. A corrupt file, a
    size mismatch or a label id outside the table stops iteration with a
    `tf.errors.InvalidArgumentError` naming the file. Run
    `python -m kseg.data --check DATA_DIR --dataset cityscapes` to list every
    bad file.

    Args:
        data_dir: see `find_cityscapes_root`.
        split: "train" or "val". "test" raises (no public labels).
        shuffle: reshuffle the file order at every iteration (deterministic
            under `seed`).
        seed: integer seed for `shuffle`.
        num_parallel_calls: decoding parallelism. Defaults to AUTOTUNE.

    Returns:
        An unbatched dataset of `(image, mask)`: image float32 `(H, W, 3)` RGB
        in [0, 255], mask int32 `(H, W)` of train ids 0-18, 255 = ignore.
        Describe it with `kseg.data.dataset_description("cityscapes")`.

    Raises:
        ValueError, FileNotFoundError, DataError: see `cityscapes_file_list`.
    """
    images, masks, label_map, problems = _split_files(data_dir, split)
    raise_problems(problems)
    return build_dataset(
        images,
        masks,
        label_map,
        shuffle=shuffle,
        seed=seed,
        num_parallel_calls=num_parallel_calls,
    )


def check_cityscapes(data_dir, splits=None):
    """Checks every file of Cityscapes splits and returns all problems.

    Args:
        data_dir: see `find_cityscapes_root`.
        splits: splits to check. Defaults to ("train", "val").

    Returns:
        A list of `(path, message)`, one per bad or unpaired file, missing
        folder or empty split; empty when the data is good.
    """
    return check_splits(data_dir, splits or CITYSCAPES_SPLITS, find_cityscapes_root, _split_files)
