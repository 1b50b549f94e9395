"""What every dataset reader shares: file pairing, image and mask decoding, label tables,
the `tf.data` builder and the checker loop.

The readers (`voc`, `folder`, `cityscapes`, `ade20k`) only find their files and
describe how the stored mask values become class ids (a `LabelMap`); reading,
checking and streaming are done here, once.
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf
from PIL import Image

from kseg.data.errors import DataError

#: Mask formats understood by `LabelMap`.
MASK_FORMATS = ("auto", "ids", "palette", "rgb")

#: Size of the lookup table from stored mask values to class ids: every 8- and 16-bit value.
TABLE_SIZE = 65536

#: Pillow modes of one-band integer masks (bilevel, 8-bit, 16-bit, 32-bit).
_ID_MODES = ("1", "L", "I;16", "I;16B", "I;16L", "I")

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


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _short(values, limit=8):
    values = list(values)
    text = ", ".join(str(v) for v in values[:limit])
    return f"[{text}, ... ({len(values)} in all)]" if len(values) > limit else f"[{text}]"


class LabelMap:
    """How the values stored in a mask file become class ids.

    Stored values are first read from the file (`mask_format`): the pixel
    values of a grayscale PNG ("ids", 8 or 16 bit), the palette indices of a
    "P" PNG ("palette"), or for a colour mask ("rgb") the row of its colour in
    `colors`. They then go through one lookup table of `TABLE_SIZE` entries:
    the identity, `reduce_zero_label` or `id_map`. A stored value the table
    does not map to a class or to `ignore_index` is an error naming the file.

    Args:
        num_classes: number of classes (class ids `[0, num_classes)`).
        ignore_index: label of pixels that are not scored. Defaults to 255.
        mask_format: "auto" (palette or grayscale PNGs are ids; an RGB mask
            needs `colors`), "ids", "palette" or "rgb".
        colors: `(N, 3)` RGB colours; a pixel of colour `colors[i]` has the
            stored value `i`. Needed for "rgb" masks.
        id_map: dict `{stored value: class id or ignore_index}`; other stored
            values are errors, except `ignore_index`, which stays ignored
            unless the dict maps it.
        reduce_zero_label: stored 0 becomes `ignore_index` and every other
            value `v` becomes `v - 1`; `ignore_index` stays ignored (the
            convention of mmsegmentation's `reduce_zero_label`, used for ADE20K).
    """

    def __init__(
        self,
        num_classes,
        *,
        ignore_index=255,
        mask_format="auto",
        colors=None,
        id_map=None,
        reduce_zero_label=False,
    ):
        if not _is_int(num_classes) or num_classes < 1:
            raise ValueError(
                f"Expected `num_classes` to be a positive integer. Received: num_classes={num_classes!r}"
            )
        if not _is_int(ignore_index) or not 0 <= ignore_index < TABLE_SIZE:
            raise ValueError(
                f"Expected `ignore_index` to be an integer in [0, {TABLE_SIZE}). "
                f"Received: ignore_index={ignore_index!r}"
            )
        if 0 <= ignore_index < num_classes:
            raise ValueError(
                f"Expected `ignore_index` outside the classes [0, {num_classes}). "
                f"Received: ignore_index={ignore_index}"
            )
        if mask_format not in MASK_FORMATS:
            raise ValueError(
                f"Expected `mask_format` to be one of {MASK_FORMATS}. "
                f"Received: mask_format={mask_format!r}"
            )
        if not isinstance(reduce_zero_label, (bool, np.bool_)):
            raise ValueError(
                "Expected `reduce_zero_label` to be True or False. "
                f"Received: reduce_zero_label={reduce_zero_label!r}"
            )
        if id_map is not None and reduce_zero_label:
            raise ValueError(
                "Pass either `id_map` or `reduce_zero_label=True`, not both: write the shift "
                "into `id_map` (stored 0 -> ignore, v -> v - 1) if both are meant."
            )
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.mask_format = mask_format
        self.colors = None if colors is None else _check_colors(colors)
        if mask_format == "rgb" and self.colors is None:
            raise ValueError(
                "mask_format='rgb' needs `colors`: one RGB colour per stored value "
                "(e.g. per class). Received: colors=None"
            )
        self.reduce_zero_label = bool(reduce_zero_label)
        self.id_map = None if id_map is None else _check_id_map(id_map, num_classes, ignore_index)
        self.table = self._build_table()
        if self.colors is not None:
            codes = _color_codes(self.colors)
            self._color_order = np.argsort(codes, kind="stable")
            self._sorted_codes = codes[self._color_order]

    def _build_table(self):
        ignore = self.ignore_index
        if self.id_map is not None:
            table = np.full(TABLE_SIZE, -1, np.int64)
            table[ignore] = ignore
            for key, value in self.id_map.items():
                table[key] = value
            return table
        table = np.arange(TABLE_SIZE, dtype=np.int64)
        if self.reduce_zero_label:
            table = table - 1
            table[0] = ignore
        table[(table >= self.num_classes) & (table != ignore)] = -1
        table[ignore] = ignore
        return table

    def _expected(self):
        """What stored values are allowed, in words."""
        if self.id_map is not None:
            return f"the keys of `id_map` {_short(sorted(self.id_map))} and {self.ignore_index}"
        if self.reduce_zero_label:
            return (
                f"[0, {self.num_classes}] (reduce_zero_label: 0 is ignored, v is class v - 1) "
                f"and the ignore value {self.ignore_index}"
            )
        return f"the classes [0, {self.num_classes}) and the ignore value {self.ignore_index}"

    def read(self, path):
        """Reads a mask file as an int32 `(H, W)` array of class ids and `ignore_index`.

        Raises:
            DataError: the file is missing, unreadable, of a mode the
                `mask_format` does not take, or holds a value (or colour) that
                is not mapped to a class; the message names the file and value.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise DataError(f"{path}: mask file not found.")
        try:
            with Image.open(path) as img:
                img.load()
                stored = self._stored_values(path, img)
        except DataError:
            raise
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{path}: unreadable or corrupt mask ({e}).") from None
        return self.apply(stored, path)

    def _stored_values(self, path, img):
        mode, fmt = img.mode, self.mask_format
        if fmt == "auto":
            if mode == "P" or mode in _ID_MODES:
                return np.asarray(img, dtype=np.int64)
            if mode == "RGB" and self.colors is not None:
                return self._colors_to_values(path, np.asarray(img))
            if mode == "RGB":
                raise DataError(
                    f"{path}: expected a palette ('P') or grayscale ('L', 16-bit) PNG of class "
                    f"ids. Received: mode {mode!r}. An RGB-coloured mask needs a colour table "
                    "(`colors`, one RGB per class) or must be converted to class ids first."
                )
        elif fmt == "ids" and mode in _ID_MODES:
            return np.asarray(img, dtype=np.int64)
        elif fmt == "palette" and mode == "P":
            return np.asarray(img, dtype=np.int64)
        elif fmt == "rgb" and mode in ("RGB", "P"):
            return self._colors_to_values(path, np.asarray(img.convert("RGB")))
        wanted = {
            "auto": "a palette ('P'), grayscale ('L', 16-bit) or, with `colors`, RGB mask",
            "ids": "a grayscale mask of class ids (mode 'L', 'I;16' or 'I')",
            "palette": "a palette PNG (mode 'P')",
            "rgb": "an RGB colour mask (mode 'RGB' or 'P')",
        }[fmt]
        raise DataError(f"{path}: mask_format={fmt!r} expects {wanted}. Received: mode {mode!r}.")

    def _colors_to_values(self, path, rgb):
        codes = _color_codes(rgb.reshape(-1, 3)).reshape(rgb.shape[:2])
        pos = np.searchsorted(self._sorted_codes, codes)
        pos = np.minimum(pos, len(self._sorted_codes) - 1)
        known = self._sorted_codes[pos] == codes
        if not known.all():
            unknown = np.unique(codes[~known])
            colours = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in unknown.tolist()]
            raise DataError(
                f"{path}: {int((~known).sum())} pixel(s) have colours that are not in the colour "
                f"table (`colors`): {_short(colours, 5)}."
            )
        return self._color_order[pos]

    def apply(self, stored, path="<array>"):
        """Maps an integer array of stored values to class ids (int32); errors name `path`."""
        stored = np.asarray(stored)
        if stored.size and (stored.min() < 0 or stored.max() >= TABLE_SIZE):
            bad = np.unique(stored[(stored < 0) | (stored >= TABLE_SIZE)])
            raise DataError(
                f"{path}: mask values {_short(bad.tolist())} are outside [0, {TABLE_SIZE}); "
                f"expected {self._expected()}."
            )
        labels = self.table[stored]
        if (labels < 0).any():
            bad = np.unique(stored[labels < 0])
            raise DataError(
                f"{path}: mask values {_short(bad.tolist())} are outside {self._expected()}."
            )
        return labels.astype(np.int32)


def _check_colors(colors):
    try:
        array = np.asarray(colors)
    except (TypeError, ValueError):
        array = None
    if (
        array is None
        or array.ndim != 2
        or array.shape[1] != 3
        or not len(array)
        or not np.issubdtype(array.dtype, np.integer)
        or array.min() < 0
        or array.max() > 255
    ):
        raise ValueError(
            "Expected `colors` to be a list of [r, g, b] integers in [0, 255], one per stored "
            f"value. Received: colors={colors!r}"
        )
    if len(array) > TABLE_SIZE:
        raise ValueError(f"Expected at most {TABLE_SIZE} `colors`. Received: {len(array)}")
    codes = _color_codes(array)
    unique, first, counts = np.unique(codes, return_index=True, return_counts=True)
    if (counts > 1).any():
        code = unique[counts > 1][0]
        rows = np.flatnonzero(codes == code).tolist()
        raise ValueError(
            f"`colors` gives the colour {array[rows[0]].tolist()} to several values: {rows}."
        )
    return array.astype(np.int64)


def _color_codes(rgb):
    rgb = np.asarray(rgb, dtype=np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _check_id_map(id_map, num_classes, ignore_index):
    if not isinstance(id_map, dict):
        raise ValueError(
            f"Expected `id_map` to be a dict {{stored value: class id}}. Received: {id_map!r}"
        )
    checked = {}
    for key, value in id_map.items():
        if not _is_int(key) or not 0 <= key < TABLE_SIZE:
            raise ValueError(
                f"Expected the keys of `id_map` to be integers in [0, {TABLE_SIZE}). "
                f"Received: key {key!r}"
            )
        if not _is_int(value) or not (0 <= value < num_classes or value == ignore_index):
            raise ValueError(
                f"Expected `id_map` values in [0, {num_classes}) or the ignore value "
                f"{ignore_index}. Received: id_map[{key}]={value!r}"
            )
        checked[int(key)] = int(value)
    return checked


def read_pair(image_path, mask_path, label_map):
    """Reads and checks one `(image, mask)` pair; errors name the bad file.

    Returns:
        image float32 `(H, W, 3)` in [0, 255] and mask int32 `(H, W)`.
    """
    image = read_image(image_path)
    mask = label_map.read(mask_path)
    _check_sizes(image_path, image, mask_path, mask)
    return image, mask


def _size_message(image_path, image, mask_path, mask):
    return (
        f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from its "
        f"image {image_path} ({image.shape[1]}x{image.shape[0]})."
    )


def _check_sizes(image_path, image, mask_path, mask):
    if image.shape[:2] != mask.shape:
        raise DataError(_size_message(image_path, image, mask_path, mask))


def _suffixes(value, name):
    values = (value,) if isinstance(value, str) else tuple(value)
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ValueError(
            f"Expected `{name}` to be a non-empty string or a tuple of them. "
            f"Received: {name}={value!r}"
        )
    return values


def _index_folder(folder, suffixes, what):
    """Maps `relative path without suffix` -> file for every file under `folder` (recursively)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    index, problems = {}, []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for filename in sorted(filenames):
            matches = [s for s in suffixes if filename.endswith(s) and len(filename) > len(s)]
            if not matches:
                continue
            suffix = max(matches, key=len)
            path = os.path.join(dirpath, filename)
            key = os.path.relpath(path, folder)[: -len(suffix)]
            if key in index:
                problems.append(
                    (path, f"{path}: two {what} files with the same name: {index[key]} and {path}.")
                )
                continue
            index[key] = path
    return index, problems


def pair_by_name(image_folder, mask_folder, image_suffix, mask_suffix):
    """Pairs the images and masks of two folder trees by relative path and file stem.

    `images/a/x.jpg` pairs with `masks/a/x.png`; subfolders are followed. A
    file whose name ends with none of the suffixes is not a sample.

    Returns:
        `(images, masks, problems)`: the paired paths sorted by name, and
        `(path, message)` for every image without a mask, mask without an
        image and name given to two files.

    Raises:
        FileNotFoundError: a folder is missing.
    """
    image_suffixes = _suffixes(image_suffix, "image_suffix")
    mask_suffixes = _suffixes(mask_suffix, "mask_suffix")
    image_index, problems = _index_folder(image_folder, image_suffixes, "image")
    mask_index, mask_problems = _index_folder(mask_folder, mask_suffixes, "mask")
    problems += mask_problems
    images, masks = [], []
    for key in sorted(set(image_index) | set(mask_index)):
        if key not in mask_index:
            path = image_index[key]
            expected = os.path.join(mask_folder, key) + " + " + "|".join(mask_suffixes)
            problems.append((path, f"{path}: image without a mask (expected {expected})."))
        elif key not in image_index:
            path = mask_index[key]
            expected = os.path.join(image_folder, key) + " + " + "|".join(image_suffixes)
            problems.append((path, f"{path}: mask without an image (expected {expected})."))
        else:
            images.append(image_index[key])
            masks.append(mask_index[key])
    return images, masks, problems


def raise_problems(problems, error=DataError, limit=10):
    """Raises `error` listing the first `limit` problems (with the count of the rest), if any."""
    if not problems:
        return
    lines = [message for _, message in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more problem(s).")
    raise error("\n".join(lines))


def read_list_file(list_path, root):
    """Reads a list file of `image mask` lines, paths relative to `root` (PaddleSeg's format).

    Returns:
        `(images, masks)` lists of paths.

    Raises:
        FileNotFoundError: the list file is missing.
        DataError: a line does not hold two paths (a one-column line has no
            mask, which training cannot use), or the file is empty; the
            message names the file and line.
    """
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"List file not found: {list_path}")
    images, masks = [], []
    with open(list_path) as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                why = " (an image without a mask cannot be trained on)" if len(parts) == 1 else ""
                raise DataError(
                    f"{list_path}, line {line_no}: expected 'image_path mask_path'{why}. "
                    f"Received: {line.strip()!r}"
                )
            images.append(os.path.join(root, parts[0].lstrip("/")))
            masks.append(os.path.join(root, parts[1].lstrip("/")))
    if not images:
        raise DataError(f"{list_path}: the list file is empty.")
    return images, masks


def missing_files(images, masks, context):
    """`(path, message)` for every listed file that does not exist."""
    return [
        (p, f"{p}: {context} but not found.")
        for pair in zip(images, masks)
        for p in pair
        if not os.path.isfile(p)
    ]


def require_files(images, masks, context, error=DataError):
    """Raises `error` naming the first missing file (and how many more) of the pairs."""
    missing = missing_files(images, masks, context)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise error(f"{missing[0][0]}: {context} but not found{more}.")


def build_dataset(images, masks, label_map, *, shuffle, seed, num_parallel_calls):
    """The one `tf.data` pipeline of every reader: paths in, decoded pairs out.

    Only the two path lists are held; files are decoded with Pillow in the
    parallel map (in order, `deterministic=True`), so the dataset streams. A
    bad file stops iteration with a `tf.errors.InvalidArgumentError` naming it.
    """
    if not images:
        raise DataError("No samples to read: the list of image files is empty.")

    def load(image_path, mask_path):
        return read_pair(image_path.decode(), mask_path.decode(), label_map)

    def tf_load(image_path, mask_path):
        image, mask = tf.numpy_function(
            load, [image_path, mask_path], [tf.float32, tf.int32], stateful=False
        )
        image.set_shape([None, None, 3])
        mask.set_shape([None, None])
        return image, mask

    ds = tf.data.Dataset.from_tensor_slices((list(images), list(masks)))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return ds.map(tf_load, num_parallel_calls=num_parallel_calls, deterministic=True)


def check_pairs(images, masks, label_map, problems=None, seen=None):
    """Reads every pair and returns all problems as `(path, message)`, each reported once.

    Args:
        images, masks: paired path lists.
        label_map: the `LabelMap` of the masks.
        problems: an earlier list to extend (pairing problems, ...).
        seen: a set of pairs already checked (a file listed in several splits).
    """
    problems = [] if problems is None else list(problems)
    seen = set() if seen is None else seen
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
            mask = label_map.read(mask_path)
        except DataError as e:
            problems.append((mask_path, str(e)))
        if image is not None and mask is not None and image.shape[:2] != mask.shape:
            problems.append((mask_path, _size_message(image_path, image, mask_path, mask)))
    unique, reported = [], set()
    for item in problems:
        if item not in reported:
            reported.add(item)
            unique.append(item)
    return unique


def check_splits(data_dir, splits, find_root, split_files):
    """Checks every file of several splits of a dataset folder; returns all problems.

    Args:
        data_dir: the dataset folder.
        splits: the splits to check.
        find_root: `find_root(data_dir)` raises `FileNotFoundError` when the
            folder is not a dataset of this kind.
        split_files: `split_files(data_dir, split)` returns `(images, masks,
            label_map, pairing_problems)`, or raises for a missing folder or
            an empty split.

    Returns:
        A list of `(path, message)`, one per bad or unpaired file, missing
        folder or empty split, each file reported once; empty when the data
        is good.
    """
    try:
        find_root(data_dir)
    except FileNotFoundError as e:
        return [(os.fspath(data_dir), str(e))]
    problems, seen = [], set()
    for split in splits:
        try:
            images, masks, label_map, pairing = split_files(data_dir, split)
        except (FileNotFoundError, DataError, ValueError) as e:
            problems.append((os.fspath(data_dir), str(e)))
            continue
        problems = check_pairs(images, masks, label_map, problems + pairing, seen)
    return problems


def report_problems(problems, where):
    """Prints one line per problem (and a count on stderr); returns the exit status.

    The checkers' command lines share it: 1 when there is any problem, else 0.
    """
    for _, message in problems:
        print(message)
    if problems:
        print(f"{len(problems)} problem(s) found in {where}.", file=sys.stderr)
        return 1
    print(f"OK: no problems found in {where}.")
    return 0


def first_existing(candidates, marker):
    """The first of `candidates` that holds `marker` (a sub-path), or None."""
    for path in candidates:
        if os.path.exists(os.path.join(path, marker)):
            return path
    return None


def load_json_object(path):
    """Reads a JSON file holding an object; errors name the file."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable JSON ({e}).") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object. Received: {type(value).__name__}")
    return value
