import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import kseg.data
from kseg.data import DataError
from kseg.data._reader import LabelMap
from kseg.data.palette import voc_palette


def _collect(ds):
    return [(np.asarray(i), np.asarray(m)) for i, m in ds]


def _write_image(path, height=8, width=10):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def _write_l(path, values, bits=8):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    dtype = np.uint16 if bits == 16 else np.uint8
    Image.fromarray(np.asarray(values, dtype)).save(path)


def _one_pair(root, mask, *, bits=8, name="x"):
    """A folder with one PNG image and one grayscale mask of the given values."""
    mask = np.asarray(mask)
    _write_image(os.path.join(root, "images", name + ".png"), *mask.shape)
    mask_path = os.path.join(root, "masks", name + ".png")
    _write_l(mask_path, mask, bits)
    return mask_path


@pytest.mark.parametrize("mask_format", ["ids", "ids16", "palette", "rgb"])
def test_every_mask_format_reads_the_written_classes(tmp_path, mask_format):
    fake = kseg.data.write_fake_folder(tmp_path, mask_format=mask_format, description=True)
    with Image.open(fake["masks"][0]) as png:
        assert png.mode == {"ids": "L", "ids16": "I;16", "palette": "P", "rgb": "RGB"}[mask_format]
    samples = _collect(kseg.data.folder_dataset(tmp_path))
    assert len(samples) == len(fake["labels"]) == 4
    for (image, mask), expected in zip(samples, fake["labels"]):
        assert image.dtype == np.float32 and image.shape == expected.shape + (3,)
        assert mask.dtype == np.int32
        np.testing.assert_array_equal(mask, expected)
    assert kseg.data.check_folder(tmp_path) == []


def test_subfolders_pairing_and_list_file_agree(tmp_path):
    fake = kseg.data.write_fake_folder(tmp_path, num_classes=3, list_file="train.txt")
    images, masks = kseg.data.folder_file_list(tmp_path)
    assert images == fake["images"] and masks == fake["masks"]
    assert {os.path.basename(os.path.dirname(p)) for p in images} == {"a", "b"}
    listed = kseg.data.folder_file_list(tmp_path, list_file="train.txt")
    assert [os.path.normpath(p) for p in listed[0]] == images
    a = _collect(kseg.data.folder_dataset(tmp_path, num_classes=3, list_file="train.txt"))
    for (_, mask), expected in zip(a, fake["labels"]):
        np.testing.assert_array_equal(mask, expected)


def test_palette_png_is_read_as_indices_not_colours(tmp_path):
    values = np.array([[0, 1, 2], [3, 255, 1]], np.uint8)
    _write_image(str(tmp_path / "images" / "x.jpg"), 2, 3)
    os.makedirs(tmp_path / "masks")
    png = Image.fromarray(values, "P")
    png.putpalette(voc_palette().reshape(-1).tolist())
    png.save(tmp_path / "masks" / "x.png")
    for fmt in ("auto", "palette"):
        ((_, mask),) = _collect(kseg.data.folder_dataset(tmp_path, num_classes=4, mask_format=fmt))
        np.testing.assert_array_equal(mask, values)
    with pytest.raises(tf.errors.InvalidArgumentError, match="x.png.*'ids'.*mode 'P'"):
        _collect(kseg.data.folder_dataset(tmp_path, num_classes=4, mask_format="ids"))


def test_reduce_zero_label_hand_worked(tmp_path):
    stored = np.array([[0, 1, 2, 3], [255, 4, 1, 0]])
    # 0 -> ignore, v -> v - 1, 255 stays ignored (mmsegmentation's reduce_zero_label).
    expected = np.array([[255, 0, 1, 2], [255, 3, 0, 255]])
    mask_path = _one_pair(str(tmp_path), stored, name="a")
    ds = kseg.data.folder_dataset(
        tmp_path, num_classes=4, reduce_zero_label=True, image_suffix=".png"
    )
    ((_, mask),) = _collect(ds)
    np.testing.assert_array_equal(mask, expected)
    # Stored 5 would be class 4, outside 4 classes: an error naming the file and the value.
    _write_l(mask_path, np.where(stored == 3, 5, stored))
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(mask_path) + r".*\[5\]"):
        _collect(ds)


def test_id_map_hand_worked_with_16_bit_masks(tmp_path):
    stored = np.array([[7, 1000, 0], [255, 7, 300]])
    id_map = {7: 0, 1000: 1, 300: 2, 0: 255}
    expected = np.array([[0, 1, 255], [255, 0, 2]])
    mask_path = _one_pair(str(tmp_path), stored, bits=16)
    ds = kseg.data.folder_dataset(tmp_path, num_classes=3, id_map=id_map, image_suffix=".png")
    ((_, mask),) = _collect(ds)
    np.testing.assert_array_equal(mask, expected)
    # An unmapped stored value is an error naming the file and the value, never a class.
    _write_l(mask_path, np.where(stored == 300, 301, stored), bits=16)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(mask_path) + r".*\[301\]"):
        _collect(ds)


def test_ids_outside_classes_named(tmp_path):
    mask_path = _one_pair(str(tmp_path), [[0, 1], [3, 254]])
    problems = kseg.data.check_folder(tmp_path, num_classes=3, image_suffix=".png")
    assert problems == [(mask_path, problems[0][1])]
    assert re.search(re.escape(mask_path) + r".*\[3, 254\].*\[0, 3\)", problems[0][1])


def test_rgb_masks_need_a_colour_table_and_name_unknown_colours(tmp_path):
    colors = [[0, 0, 0], [200, 10, 10], [10, 200, 10]]
    rgb = np.array([[colors[0], colors[1]], [colors[2], colors[1]]], np.uint8)
    _write_image(str(tmp_path / "images" / "x.jpg"), 2, 2)
    mask_path = str(tmp_path / "masks" / "x.png")
    os.makedirs(tmp_path / "masks")
    Image.fromarray(rgb, "RGB").save(mask_path)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(mask_path) + ".*colour"):
        _collect(kseg.data.folder_dataset(tmp_path, num_classes=3))
    ((_, mask),) = _collect(kseg.data.folder_dataset(tmp_path, num_classes=3, colors=colors))
    np.testing.assert_array_equal(mask, [[0, 1], [2, 1]])
    rgb[1, 1] = (1, 2, 3)
    Image.fromarray(rgb, "RGB").save(mask_path)
    problems = kseg.data.check_folder(tmp_path, num_classes=3, colors=colors, mask_format="rgb")
    assert len(problems) == 1 and problems[0][0] == mask_path
    assert "(1, 2, 3)" in problems[0][1]
    # A colour mapped to the ignore label through id_map.
    colors.append([1, 2, 3])
    ((_, mask),) = _collect(
        kseg.data.folder_dataset(
            tmp_path, num_classes=3, colors=colors, id_map={0: 0, 1: 1, 2: 2, 3: 255}
        )
    )
    np.testing.assert_array_equal(mask, [[0, 1], [2, 255]])


def test_unpaired_files_are_errors_both_ways(tmp_path):
    fake = kseg.data.write_fake_folder(tmp_path, num_classes=3, num_samples=3)
    os.remove(fake["masks"][0])
    extra_mask = str(tmp_path / "masks" / "b" / "lonely.png")
    _write_l(extra_mask, np.zeros((4, 4)))
    with pytest.raises(DataError) as e:
        kseg.data.folder_file_list(tmp_path)
    assert f"{fake['images'][0]}: image without a mask" in str(e.value)
    assert f"{extra_mask}: mask without an image" in str(e.value)
    with pytest.raises(DataError, match="lonely"):
        kseg.data.folder_dataset(tmp_path, num_classes=3)
    problems = kseg.data.check_folder(tmp_path, num_classes=3)
    assert sorted(p for p, _ in problems) == sorted([fake["images"][0], extra_mask])


def test_size_mismatch_and_corrupt_image_name_the_file(tmp_path):
    fake = kseg.data.write_fake_folder(tmp_path, num_classes=3, num_samples=2)
    _write_l(fake["masks"][1], np.zeros((5, 7)))
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=re.escape(fake["masks"][1]) + ".*differs"
    ):
        _collect(kseg.data.folder_dataset(tmp_path, num_classes=3))
    with open(fake["images"][0], "wb") as f:
        f.write(b"not an image")
    problems = kseg.data.check_folder(tmp_path, num_classes=3)
    assert [p for p, _ in problems] == [fake["images"][0], fake["masks"][1]]
    assert "corrupt" in problems[0][1] and "5" in problems[1][1]


def test_several_image_suffixes_and_duplicate_stems(tmp_path):
    _write_image(str(tmp_path / "images" / "a.jpg"), 4, 4)
    _write_image(str(tmp_path / "images" / "b.png"), 4, 4)
    for name in ("a", "b"):
        _write_l(str(tmp_path / "masks" / f"{name}.png"), np.zeros((4, 4)))
    images, masks = kseg.data.folder_file_list(tmp_path, image_suffix=(".jpg", ".png"))
    assert [os.path.basename(p) for p in images] == ["a.jpg", "b.png"]
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "masks" / "b.png"))):
        kseg.data.folder_file_list(tmp_path)  # b.png is not a .jpg image: its mask is alone
    _write_image(str(tmp_path / "images" / "a.png"), 4, 4)
    with pytest.raises(DataError, match="two image files with the same name.*a.jpg.*a.png"):
        kseg.data.folder_file_list(tmp_path, image_suffix=(".jpg", ".png"))


def test_list_file_errors(tmp_path):
    fake = kseg.data.write_fake_folder(tmp_path, num_classes=3, num_samples=2)
    rel = os.path.relpath(fake["images"][0], tmp_path)
    (tmp_path / "one.txt").write_text(f"{rel}\n")
    with pytest.raises(DataError, match=r"one.txt, line 1: .*without a mask"):
        kseg.data.folder_file_list(tmp_path, list_file="one.txt")
    (tmp_path / "gone.txt").write_text(f"{rel} masks/nowhere.png\n")
    with pytest.raises(DataError, match=r"nowhere.png: listed in .*gone.txt but not found"):
        kseg.data.folder_file_list(tmp_path, list_file="gone.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="empty.txt: the list file is empty"):
        kseg.data.folder_file_list(tmp_path, list_file="empty.txt")
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        kseg.data.folder_file_list(tmp_path, list_file="absent.txt")


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nothing"))):
        kseg.data.folder_dataset(tmp_path / "nothing", num_classes=2)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "images"))):
        kseg.data.folder_file_list(tmp_path)
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "masks")
    with pytest.raises(DataError, match="No images in " + re.escape(str(tmp_path / "images"))):
        kseg.data.folder_file_list(tmp_path)


def test_description_from_arguments_and_json(tmp_path):
    kseg.data.write_fake_folder(tmp_path / "roads", num_classes=3, num_samples=1)
    root = tmp_path / "roads"
    with pytest.raises(ValueError, match="pass `class_names` or `num_classes`"):
        kseg.data.folder_description(root)
    described = kseg.data.folder_description(root, num_classes=3)
    assert described == {
        "name": "roads",
        "class_names": ["class_0", "class_1", "class_2"],
        "palette": [[0, 0, 0], [128, 0, 0], [0, 128, 0]],
        "ignore_index": 255,
    }
    spec = {
        "name": "my roads",
        "class_names": ["ground", "road", "car"],
        "palette": [[1, 1, 1], [2, 2, 2], [3, 3, 3]],
        "id_map": {"0": 0, "1": 1, "2": 2, "9": 255},
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    described = kseg.data.folder_description(root)
    assert described == {
        "name": "my roads",
        "class_names": ["ground", "road", "car"],
        "palette": [[1, 1, 1], [2, 2, 2], [3, 3, 3]],
        "ignore_index": 255,
    }
    assert kseg.data.folder_description(root, num_classes=3)["name"] == "my roads"
    with pytest.raises(ValueError, match="`num_classes` disagrees|differs from the 3"):
        kseg.data.folder_description(root, num_classes=4)
    with pytest.raises(ValueError, match=r"`name` disagrees with .*dataset.json"):
        kseg.data.folder_description(root, name="other")
    spec["colour"] = [0, 0, 0]
    (root / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"dataset.json: unknown key\(s\) \['colour'\]"):
        kseg.data.folder_dataset(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="dataset.json: unreadable JSON"):
        kseg.data.folder_description(root)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="not both"):
        LabelMap(3, id_map={0: 0}, reduce_zero_label=True)
    with pytest.raises(ValueError, match=r"id_map\[4\]=7"):
        LabelMap(3, id_map={4: 7})
    with pytest.raises(ValueError, match="keys of `id_map`.*-1"):
        LabelMap(3, id_map={-1: 0})
    with pytest.raises(ValueError, match="mask_format='rgb' needs `colors`"):
        LabelMap(3, mask_format="rgb")
    with pytest.raises(ValueError, match="mask_format='jpeg'"):
        LabelMap(3, mask_format="jpeg")
    with pytest.raises(ValueError, match=r"colour \[1, 2, 3\] to several values: \[0, 2\]"):
        LabelMap(3, colors=[[1, 2, 3], [0, 0, 0], [1, 2, 3]])
    with pytest.raises(ValueError, match="outside the classes.*ignore_index=1"):
        LabelMap(3, ignore_index=1)


def test_folder_through_train_pipeline(tmp_path):
    kseg.data.write_fake_folder(tmp_path, num_classes=3, description=True)
    ds = kseg.data.train_pipeline(
        kseg.data.folder_dataset(tmp_path, shuffle=True, seed=0), batch_size=2, crop_size=16, seed=0
    )
    images, masks = next(iter(ds))
    assert images.shape == (2, 16, 16, 3) and masks.shape == (2, 16, 16)
    values = set(np.unique(masks.numpy()).tolist())
    assert values <= {0, 1, 2, 255}
