"""ADE20K (SceneParsing, ADEChallengeData2016) reader and checker.

Expected layout (`ADEChallengeData2016.zip` extracted)::

    ADEChallengeData2016/
      images/{training,validation}/ADE_train_00000001.jpg ...
      annotations/{training,validation}/ADE_train_00000001.png ...   grayscale, 0-150

Annotation value 0 ("other objects") is ignored (255) and value v in 1-150 is
class v - 1, as mmsegmentation's `reduce_zero_label` does for ADE20K; the
150 class names are `kseg.data.dataset_description("ade20k")["class_names"]`.
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

#: Splits of ADEChallengeData2016 (20210 and 2000 images).
ADE20K_SPLITS = ("training", "validation")

_NUM_CLASSES = 150


def find_ade20k_root(data_dir):
    """Returns the `ADEChallengeData2016` folder: `data_dir` itself or the one inside it."""
    data_dir = os.fspath(data_dir)
    candidates = [data_dir, os.path.join(data_dir, "ADEChallengeData2016")]
    root = first_existing(candidates, "images")
    if root is None or not os.path.isdir(os.path.join(root, "annotations")):
        raise FileNotFoundError(
            f"No ADE20K folder found in {data_dir!r}: expected 'images' and 'annotations' "
            "inside it or inside 'ADEChallengeData2016/' in it. Extract "
            "ADEChallengeData2016.zip."
        )
    return root


def _label_map():
    return LabelMap(_NUM_CLASSES, mask_format="ids", reduce_zero_label=True)


def _split_files(data_dir, split):
    if split not in ADE20K_SPLITS:
        raise ValueError(
            f"Expected `split` to be one of {ADE20K_SPLITS}. Received: split={split!r}"
        )
    root = find_ade20k_root(data_dir)
    image_folder = os.path.join(root, "images", split)
    mask_folder = os.path.join(root, "annotations", split)
    for folder in (image_folder, mask_folder):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"ADE20K split {split!r}: folder not found: {folder}")
    images, masks, problems = pair_by_name(image_folder, mask_folder, ".jpg", ".png")
    if not images and not problems:
        raise DataError(f"ADE20K split {split!r} is empty: no .jpg files in {image_folder}.")
    return images, masks, problems


def ade20k_file_list(data_dir, split="training"):
    """Lists the `(image, mask)` paths of an ADE20K split, sorted by name.

    Args:
        data_dir: see `find_ade20k_root`.
        split: "training" or "validation".

    Returns:
        Two lists of paths, images and masks.

    Raises:
        ValueError: unknown `split`.
        FileNotFoundError: a folder is missing (the message names it).
        DataError: the split is empty, or an image has no annotation or an
            annotation no image (the message lists the files).
    """
    images, masks, problems = _split_files(data_dir, split)
    raise_problems(problems)
    return images, masks


def ade20k_dataset(
    data_dir,
    split="training",
    *,
    shuffle=False,
    seed=None,
    num_parallel_calls=tf.data.AUTOTUNE,
):
    """An ADE20K split (150 classes) as a `tf.data.Dataset`.

    Files are decoded with Pillow in parallel; annotation 0 becomes 255
    (ignored) and v becomes class v - 1. A corrupt file, a size mismatch or
    an annotation value above 150 stops iteration with a
    `tf.errors.InvalidArgumentError` naming the file. Run
    `python -m kseg.data --check DATA_DIR --dataset ade20k` to list every
    bad file.

    Args:
        data_dir: see `find_ade20k_root`.
        split: "training" or "validation".
        shuffle: reshuffle the file order at every iteration (deterministic
            under `seed`).
        seed: integer seed for `shuffle`.
        num_parallel_calls: decoding parallelism. Defaults to AUTOTUNE.

    Returns:
        An unbatched dataset of `(image, mask)`: image float32 `(H, W, 3)` RGB
        in [0, 255], mask int32 `(H, W)` of class ids 0-149, 255 = ignore.
        Describe it with `kseg.data.dataset_description("ade20k")`.

    Raises:
        ValueError, FileNotFoundError, DataError: see `ade20k_file_list`.
    """
    images, masks = ade20k_file_list(data_dir, split)
    return build_dataset(
        images,
        masks,
        _label_map(),
        shuffle=shuffle,
        seed=seed,
        num_parallel_calls=num_parallel_calls,
    )


def check_ade20k(data_dir, splits=None):
    """Checks every file of ADE20K splits and returns all problems.

    Args:
        data_dir: see `find_ade20k_root`.
        splits: splits to check. Defaults to ("training", "validation").

    Returns:
        A list of `(path, message)`, one per bad or unpaired file, missing
        folder or empty split; empty when the data is good.
    """

    def split_files(data_dir, split):
        images, masks, pairing = _split_files(data_dir, split)
        return images, masks, _label_map(), pairing

    return check_splits(data_dir, splits or ADE20K_SPLITS, find_ade20k_root, split_files)
