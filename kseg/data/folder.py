"""A reader for any folder of images and masks (the layout most users' own data has).

Two layouts are read:

* paired folders (the default): every image under `root/images` pairs with the
  mask of the same relative path and file stem under `root/masks`
  (`images/a/x.jpg` with `masks/a/x.png`; subfolders are followed);
* a list file (PaddleSeg's convention): one `image_path mask_path` line per
  sample, paths relative to `root`.

An image without a mask and a mask without an image are errors, never skipped.

Options may also come from a JSON file beside the data, `root/dataset.json`
(every key optional; unknown keys are errors)::

    {
      "name": "roads",                        dataset name (default: the folder's name)
      "class_names": ["background", "road"],  one name per class
      "num_classes": 2,                       when there are no class names
      "palette": [[0, 0, 0], [128, 64, 128]], one RGB colour per class, for display
      "ignore_index": 255,                    label that is not a class
      "mask_format": "rgb",                   "auto", "ids", "palette" or "rgb"
      "colors": [[0, 0, 0], [128, 64, 128]],  colour of each stored value, for "rgb" masks
      "id_map": {"7": 1, "0": 255},           stored value -> class id (or the ignore label)
      "reduce_zero_label": false              stored 0 ignored, v -> class v - 1
    }

An argument left at its default takes the JSON's value; an argument given a
different value than the JSON's is an error (the two would disagree on what a
label means).
"""

import os

import numpy as np
import tensorflow as tf

from kseg.data._reader import (
    LabelMap,
    _check_colors,
    build_dataset,
    check_pairs,
    load_json_object,
    pair_by_name,
    raise_problems,
    read_list_file,
    require_files,
)
from kseg.data.errors import DataError
from kseg.data.palette import IGNORE_INDEX, voc_palette

#: Name of the optional description file in a dataset folder.
DESCRIPTION_FILE = "dataset.json"

#: Options that `dataset.json` may set, with the defaults of the readers' arguments.
_OPTION_DEFAULTS = {
    "name": None,
    "class_names": None,
    "num_classes": None,
    "palette": None,
    "ignore_index": IGNORE_INDEX,
    "mask_format": "auto",
    "colors": None,
    "id_map": None,
    "reduce_zero_label": False,
}


def _root(root):
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Dataset folder not found: {root}")
    return root


def _comparable(key, value):
    if value is None:
        return None
    if key in ("colors", "palette"):
        return np.asarray(value).tolist()
    if key == "class_names":
        return list(value)
    return value


def _json_options(root):
    path = os.path.join(root, DESCRIPTION_FILE)
    if not os.path.isfile(path):
        return {}, path
    options = load_json_object(path)
    unknown = sorted(set(options) - set(_OPTION_DEFAULTS))
    if unknown:
        raise DataError(
            f"{path}: unknown key(s) {unknown}; expected some of {sorted(_OPTION_DEFAULTS)}."
        )
    if options.get("id_map") is not None:
        id_map = options["id_map"]
        if not isinstance(id_map, dict):
            raise DataError(f"{path}: expected 'id_map' to be an object. Received: {id_map!r}")
        converted = {}
        for key, value in id_map.items():
            try:
                converted[int(key)] = value
            except ValueError:
                raise DataError(
                    f"{path}: expected the keys of 'id_map' to be integers. Received: {key!r}"
                ) from None
        options["id_map"] = converted
    return options, path


def _resolve(root, options):
    """The effective options (arguments merged with `dataset.json`) and the `LabelMap`."""
    from_json, json_path = _json_options(root)
    merged = {}
    for key, default in _OPTION_DEFAULTS.items():
        value = options[key]
        if key in from_json:
            stored = from_json[key]
            given = _comparable(key, value) != _comparable(key, default)
            if given and _comparable(key, value) != _comparable(key, stored):
                raise ValueError(
                    f"`{key}` disagrees with {json_path}: the argument is {value!r}, the file "
                    f"says {stored!r}. Leave the argument at its default or fix the file."
                )
            value = stored
        merged[key] = value

    class_names, num_classes = merged["class_names"], merged["num_classes"]
    if class_names is not None:
        if isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names):
            raise ValueError(
                f"Expected `class_names` to be a list of strings. Received: {class_names!r}"
            )
        class_names = list(class_names)
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(
                f"`num_classes`={num_classes!r} differs from the {len(class_names)} `class_names`."
            )
        num_classes = len(class_names)
    elif num_classes is None:
        raise ValueError(
            f"The classes of {root} are unknown: pass `class_names` or `num_classes`, or set "
            f"'class_names' or 'num_classes' in {json_path}."
        )
    label_map = LabelMap(
        num_classes,
        ignore_index=merged["ignore_index"],
        mask_format=merged["mask_format"],
        colors=merged["colors"],
        id_map=merged["id_map"],
        reduce_zero_label=merged["reduce_zero_label"],
    )
    if class_names is None:
        class_names = [f"class_{i}" for i in range(num_classes)]
    palette = merged["palette"]
    if palette is not None:
        palette = _check_colors(palette)
        if len(palette) != num_classes:
            raise ValueError(
                f"Expected one `palette` colour per class ({num_classes}). "
                f"Received: {len(palette)} colours"
            )
    elif (
        label_map.colors is not None
        and label_map.id_map is None
        and not label_map.reduce_zero_label
        and len(label_map.colors) == num_classes
    ):
        palette = label_map.colors  # colour masks: class i is drawn in its own colour
    elif num_classes <= 256:
        palette = voc_palette(num_classes)
    else:
        raise ValueError(f"Pass a `palette` (one RGB colour per class) for {num_classes} classes.")
    name = merged["name"]
    if name is None:
        name = os.path.basename(os.path.normpath(os.path.abspath(root)))
    if not isinstance(name, str):
        raise ValueError(f"Expected `name` to be a string. Received: name={name!r}")
    description = {
        "name": name,
        "class_names": class_names,
        "palette": [[int(v) for v in c] for c in palette],
        "ignore_index": label_map.ignore_index,
    }
    return description, label_map


def _pairs(root, image_dir, mask_dir, list_file, image_suffix, mask_suffix):
    """`(images, masks, problems, context)` of a folder dataset."""
    if list_file is not None:
        list_path = os.path.join(root, os.fspath(list_file))
        images, masks = read_list_file(list_path, root)
        return images, masks, [], f"listed in {list_path}"
    images, masks, problems = pair_by_name(
        os.path.join(root, image_dir), os.path.join(root, mask_dir), image_suffix, mask_suffix
    )
    if not images and not problems:
        raise DataError(f"No images in {os.path.join(root, image_dir)} (suffix {image_suffix!r}).")
    return images, masks, problems, "paired"


def folder_file_list(
    root,
    *,
    image_dir="images",
    mask_dir="masks",
    list_file=None,
    image_suffix=".jpg",
    mask_suffix=".png",
):
    """Lists the `(image, mask)` pairs of a folder dataset.

    Args:
        root: the dataset folder.
        image_dir, mask_dir: folders (relative to `root`) of the images and
            masks, paired by relative path and stem. Default "images", "masks".
        list_file: a file of `image_path mask_path` lines, paths relative to
            `root` (the file itself relative to `root` or absolute); when
            given, `image_dir` and `mask_dir` are not used.
        image_suffix: file-name ending of the images, or a tuple of endings
            (e.g. `(".jpg", ".png")`). Defaults to ".jpg".
        mask_suffix: file-name ending(s) of the masks. Defaults to ".png".

    Returns:
        Two lists of paths, images and masks (sorted by name, or in
        list-file order).

    Raises:
        FileNotFoundError: `root`, a folder or the list file is missing.
        DataError: an image has no mask or a mask no image, two files share a
            name, the folder has no images, a list-file line is not two paths,
            or a listed file is missing; the message names the files.
    """
    root = _root(root)
    images, masks, problems, context = _pairs(
        root, image_dir, mask_dir, list_file, image_suffix, mask_suffix
    )
    raise_problems(problems)
    require_files(images, masks, context)
    return images, masks


def folder_description(
    root,
    *,
    image_dir="images",
    mask_dir="masks",
    list_file=None,
    image_suffix=".jpg",
    mask_suffix=".png",
    mask_format="auto",
    colors=None,
    id_map=None,
    reduce_zero_label=False,
    num_classes=None,
    ignore_index=IGNORE_INDEX,
    class_names=None,
    palette=None,
    name=None,
):
    """The description of a folder dataset: `{"name", "class_names", "palette", "ignore_index"}`.

    Takes the arguments of `folder_dataset` (the layout ones are not used)
    merged with `root/dataset.json`. The name defaults to the folder's name,
    the class names to "class_0", "class_1", ..., the palette to the colour
    table of RGB masks (one colour per class) or else the VOC palette.

    Raises:
        ValueError: the classes are unknown (no class names or class count),
            an argument disagrees with `dataset.json`, or an option is bad.
        DataError: `dataset.json` is unreadable or has unknown keys.
    """
    options = dict(locals())
    root = _root(root)
    return _resolve(root, options)[0]


def folder_dataset(
    root,
    *,
    image_dir="images",
    mask_dir="masks",
    list_file=None,
    image_suffix=".jpg",
    mask_suffix=".png",
    mask_format="auto",
    colors=None,
    id_map=None,
    reduce_zero_label=False,
    num_classes=None,
    ignore_index=IGNORE_INDEX,
    class_names=None,
    palette=None,
    name=None,
    shuffle=False,
    seed=None,
    num_parallel_calls=tf.data.AUTOTUNE,
):
    """A folder of images and masks as a `tf.data.Dataset`.

    Images are read as RGB (any format Pillow reads). Masks are read by
    `mask_format`:

    * "ids": grayscale PNGs of class ids, 8 or 16 bit;
    * "palette": palette ("P") PNGs, the palette index is the class (VOC);
    * "rgb": colour masks; the pixel of colour `colors[i]` has value `i`;
    * "auto" (default): "P" and grayscale masks are ids; an RGB mask needs `colors`.

    The stored values then become class ids through `id_map` or
    `reduce_zero_label` (see `kseg.data._reader.LabelMap`). Any value or
    colour not mapped to a class or `ignore_index` is an error naming the
    file and the value.

    Args:
        root: the dataset folder (options may also be in `root/dataset.json`;
            see this module's docstring for the schema).
        image_dir, mask_dir, list_file, image_suffix, mask_suffix: see
            `folder_file_list`.
        mask_format: "auto", "ids", "palette" or "rgb".
        colors: `(N, 3)` RGB table for colour masks (index = stored value).
        id_map: dict `{stored value: class id or ignore_index}`; unmapped
            values are errors (`ignore_index` stays ignored unless mapped).
        reduce_zero_label: stored 0 -> ignore, v -> v - 1 (mmsegmentation).
        num_classes: class count, needed when there are no `class_names`.
        ignore_index: label that is not a class. Defaults to 255.
        class_names, palette, name: the description (`folder_description`).
        shuffle: reshuffle the file order at every iteration (deterministic
            under `seed`).
        seed: integer seed for `shuffle`.
        num_parallel_calls: decoding parallelism. Defaults to AUTOTUNE.

    Returns:
        An unbatched dataset of `(image, mask)`: image float32 `(H, W, 3)` RGB
        in [0, 255], mask int32 `(H, W)` of class ids, `ignore_index` ignored.
        A corrupt file, a size mismatch or a bad value stops iteration with a
        `tf.errors.InvalidArgumentError` naming the file; run
        `python -m kseg.data --check ROOT --dataset folder` to list them all.

    Raises:
        FileNotFoundError, DataError: see `folder_file_list`.
        ValueError: see `folder_description`.
    """
    options = dict(locals())
    root = _root(root)
    _, label_map = _resolve(root, options)
    images, masks = folder_file_list(
        root,
        image_dir=image_dir,
        mask_dir=mask_dir,
        list_file=list_file,
        image_suffix=image_suffix,
        mask_suffix=mask_suffix,
    )
    return build_dataset(
        images,
        masks,
        label_map,
        shuffle=shuffle,
        seed=seed,
        num_parallel_calls=num_parallel_calls,
    )


def check_folder(
    root,
    *,
    image_dir="images",
    mask_dir="masks",
    list_file=None,
    image_suffix=".jpg",
    mask_suffix=".png",
    mask_format="auto",
    colors=None,
    id_map=None,
    reduce_zero_label=False,
    num_classes=None,
    ignore_index=IGNORE_INDEX,
    class_names=None,
    palette=None,
    name=None,
):
    """Checks every file of a folder dataset and returns all problems.

    Takes the arguments of `folder_description`.

    Returns:
        A list of `(path, message)`: every unpaired, missing, unreadable or
        mismatched file and every bad mask value, each once; a bad option
        or list file is reported against `root`. Empty when the data is good.
    """
    options = dict(locals())
    try:
        root = _root(root)
        _, label_map = _resolve(root, options)
        images, masks, problems, _ = _pairs(
            root, image_dir, mask_dir, list_file, image_suffix, mask_suffix
        )
    except (FileNotFoundError, DataError, ValueError) as e:
        return [(os.fspath(root), str(e))]
    return check_pairs(images, masks, label_map, problems)
