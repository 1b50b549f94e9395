import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kseg.data import DataError, voc
from kseg.data.fixtures import write_fake_voc
from kseg.data.palette import voc_palette


@pytest.fixture(scope="module")
def fake_voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    path = write_fake_voc(root, num_train=3, num_val=2, augmented=True, num_aug_only=1)
    return str(root), path


@pytest.fixture
def fresh_voc(tmp_path):
    path = write_fake_voc(tmp_path, num_train=3, num_val=2)
    return str(tmp_path), path


def _write_palette_png(path, mask):
    png = Image.fromarray(np.asarray(mask, np.uint8), "P")
    png.putpalette(voc_palette().reshape(-1).tolist())
    png.save(path)


def _collect(ds):
    return [(np.asarray(i), np.asarray(m)) for i, m in ds]


def test_find_root_accepts_three_levels(fake_voc):
    root, path = fake_voc
    for candidate in (root, os.path.join(root, "VOCdevkit"), path):
        assert voc.find_voc_root(candidate) == path
    with pytest.raises(FileNotFoundError, match="VOCdevkit"):
        voc.find_voc_root(os.path.join(root, "nowhere"))


@pytest.mark.parametrize(
    "split,count", [("train", 3), ("val", 2), ("trainval", 5), ("train_aug", 4)]
)
def test_dataset_shapes_and_dtypes(fake_voc, split, count):
    root, _ = fake_voc
    ds = voc.voc_dataset(root, split)
    assert ds.element_spec[0].dtype == tf.float32 and ds.element_spec[1].dtype == tf.int32
    samples = _collect(ds)
    assert len(samples) == count
    for image, mask in samples:
        assert image.ndim == 3 and image.shape[-1] == 3
        assert mask.shape == image.shape[:2]
        assert 0.0 <= image.min() and image.max() <= 255.0


def test_palette_indices_are_read_as_class_ids(fake_voc):
    root, path = fake_voc
    images, masks = voc.voc_file_list(root, "train")
    samples = _collect(voc.voc_dataset(root, "train"))
    for mask_path, (_, mask) in zip(masks, samples):
        with Image.open(mask_path) as png:
            assert png.mode == "P"
            np.testing.assert_array_equal(mask, np.array(png.getdata()).reshape(mask.shape))
        assert 255 in mask  # boundaries kept as ignore, not remapped


def test_hand_written_palette_png(fresh_voc):
    root, path = fresh_voc
    images, masks = voc.voc_file_list(root, "train")
    height, width = np.asarray(Image.open(images[0])).shape[:2]
    expected = np.zeros((height, width), np.uint8)
    expected[: height // 2] = 15  # person, colour (192, 128, 128)
    expected[:, : width // 3] = 20
    expected[0, :] = 255
    _write_palette_png(masks[0], expected)
    _, mask = next(iter(voc.voc_dataset(root, "train")))
    np.testing.assert_array_equal(np.asarray(mask), expected.astype(np.int32))


def test_train_aug_reads_grayscale_masks_and_pair_lines(fake_voc, tmp_path):
    root, path = fake_voc
    images, masks = voc.voc_file_list(root, "train_aug")
    assert all("SegmentationClassAug" in m for m in masks)
    # The two-path line format of some published train_aug lists.
    copy = shutil.copytree(path, tmp_path / "VOC2012")
    names = [os.path.splitext(os.path.basename(p))[0] for p in images]
    with open(copy / "ImageSets" / "Segmentation" / "train_aug.txt", "w") as f:
        for n in names:
            f.write(f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n")
    images2, masks2 = voc.voc_file_list(copy, "train_aug")
    assert [os.path.basename(p) for p in images2] == [os.path.basename(p) for p in images]
    assert [os.path.basename(p) for p in masks2] == [os.path.basename(p) for p in masks]


def test_shuffle_is_deterministic_under_seed(fake_voc):
    root, _ = fake_voc
    first = [m.shape for _, m in _collect(voc.voc_dataset(root, "trainval", shuffle=True, seed=3))]
    again = [m.shape for _, m in _collect(voc.voc_dataset(root, "trainval", shuffle=True, seed=3))]
    plain = [m.shape for _, m in _collect(voc.voc_dataset(root, "trainval"))]
    assert first == again
    assert sorted(first) == sorted(plain)


# Bad data: each case names the file.


def test_missing_list_file(fresh_voc):
    root, path = fresh_voc
    os.remove(os.path.join(path, "ImageSets", "Segmentation", "val.txt"))
    with pytest.raises(FileNotFoundError, match=re.escape(os.path.join("Segmentation", "val.txt"))):
        voc.voc_dataset(root, "val")
    with pytest.raises(FileNotFoundError, match="train_aug"):
        voc.voc_dataset(root, "train_aug")


def test_missing_listed_file(fresh_voc):
    root, path = fresh_voc
    images, _ = voc.voc_file_list(root, "train")
    os.remove(images[1])
    with pytest.raises(voc.VOCDataError, match=re.escape(os.path.basename(images[1]))):
        voc.voc_dataset(root, "train")


def test_corrupt_image(fresh_voc):
    root, path = fresh_voc
    images, masks = voc.voc_file_list(root, "train")
    with open(images[1], "wb") as f:
        f.write(b"this is not a jpeg")
    with pytest.raises(DataError, match=re.escape(images[1]) + ".*corrupt"):
        voc.read_sample(images[1], masks[1])
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(images[1])):
        _collect(voc.voc_dataset(root, "train"))


def test_mask_size_differs_from_image(fresh_voc):
    root, path = fresh_voc
    images, masks = voc.voc_file_list(root, "train")
    _write_palette_png(masks[0], np.zeros((5, 7), np.uint8))
    with pytest.raises(DataError, match=re.escape(masks[0]) + ".*differs"):
        voc.read_sample(images[0], masks[0])
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(masks[0])):
        _collect(voc.voc_dataset(root, "train"))


def test_mask_values_outside_classes(fresh_voc):
    root, path = fresh_voc
    images, masks = voc.voc_file_list(root, "train")
    height, width = np.asarray(Image.open(images[2])).shape[:2]
    bad = np.zeros((height, width), np.uint8)
    bad[0, 0], bad[1, 1], bad[2, 2] = 21, 254, 255
    _write_palette_png(masks[2], bad)
    with pytest.raises(DataError, match=re.escape(masks[2]) + r".*\[21, 254\]"):
        voc.read_sample(images[2], masks[2])
    # With more classes 21 is fine, 254 still is not.
    with pytest.raises(DataError, match=r"\[254\]"):
        voc.read_sample(images[2], masks[2], num_classes=22)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(masks[2])):
        _collect(voc.voc_dataset(root, "train"))


def test_rgb_mask_is_rejected(fresh_voc):
    root, path = fresh_voc
    images, masks = voc.voc_file_list(root, "val")
    height, width = np.asarray(Image.open(images[0])).shape[:2]
    Image.fromarray(np.zeros((height, width, 3), np.uint8), "RGB").save(masks[0])
    with pytest.raises(DataError, match=re.escape(masks[0]) + ".*'RGB'"):
        voc.read_mask(masks[0])


def _break_everything(path):
    """Introduces one problem of each kind; returns the paths that must be reported."""
    images, masks = voc.voc_file_list(path, "train")
    with open(images[0], "wb") as f:
        f.write(b"\xff\xd8garbage")
    _write_palette_png(masks[1], np.zeros((3, 3), np.uint8))
    height, width = np.asarray(Image.open(images[2])).shape[:2]
    _write_palette_png(masks[2], np.full((height, width), 40, np.uint8))
    val_images, val_masks = voc.voc_file_list(path, "val")
    os.remove(val_masks[0])
    return [images[0], masks[1], masks[2], val_masks[0]]


def test_checker_reports_every_bad_file(fresh_voc):
    root, path = fresh_voc
    expected = _break_everything(path)
    problems = voc.check_voc(root)
    reported = [p for p, _ in problems]
    assert sorted(set(reported)) == sorted(expected)
    assert len(reported) == len(expected)  # trainval repeats the files: each reported once
    os.remove(os.path.join(path, "ImageSets", "Segmentation", "trainval.txt"))
    problems = voc.check_voc(root)
    assert any(p.endswith("trainval.txt") for p, _ in problems)


def test_checker_cli(fresh_voc, capsys):
    root, path = fresh_voc
    assert voc.main(["--check", root]) == 0
    assert "OK" in capsys.readouterr().out
    expected = _break_everything(path)
    assert voc.main(["--check", root]) == 1
    out = capsys.readouterr().out
    for bad in expected:
        assert bad in out


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="backend-independent and slow (a fresh interpreter): run under one backend",
)
def test_checker_as_module(fresh_voc):
    root, path = fresh_voc
    images, _ = voc.voc_file_list(root, "train")
    with open(images[0], "wb") as f:
        f.write(b"broken")
    result = subprocess.run(
        [sys.executable, "-m", "kseg.data.voc", "--check", root],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 1, result.stderr
    assert images[0] in result.stdout


def test_bad_split_argument(fake_voc):
    root, _ = fake_voc
    with pytest.raises(ValueError, match="Received: split='test'"):
        voc.voc_dataset(root, "test")


# The generic image and mask readers: `DataError`, any channel count.


def test_reader_errors_are_data_errors_without_voc(tmp_path):
    assert issubclass(voc.VOCDataError, DataError)
    assert issubclass(DataError, ValueError)
    corrupt = tmp_path / "bad.png"
    corrupt.write_bytes(b"not a png")
    for read, path, reason in [
        (voc.read_image, corrupt, "corrupt image"),
        (voc.read_image, tmp_path / "missing.png", "not found"),
        (voc.read_mask, corrupt, "corrupt mask"),
    ]:
        with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + reason) as e:
            read(path)
        assert type(e.value) is DataError
        assert "VOC" not in type(e.value).__name__ + type(e.value).__module__ + str(e.value)


@pytest.mark.parametrize(
    "mode, array, channels, expected",
    [
        ("L", [[0, 9], [200, 255]], 1, [[[0], [9]], [[200], [255]]]),
        ("L", [[0, 9]], 3, [[[0, 0, 0], [9, 9, 9]]]),
        ("RGB", [[[5, 5, 5], [7, 7, 7]]], 1, [[[5], [7]]]),  # grey stored as RGB
        ("RGB", [[[1, 2, 3], [4, 5, 6]]], 3, [[[1, 2, 3], [4, 5, 6]]]),
        ("RGBA", [[[1, 2, 3, 4], [5, 6, 7, 8]]], 4, [[[1, 2, 3, 4], [5, 6, 7, 8]]]),
        ("RGBA", [[[1, 2, 3, 4], [5, 6, 7, 8]]], 3, [[[1, 2, 3], [5, 6, 7]]]),
        ("I;16", [[0, 1000]], 1, [[[0], [1000]]]),
    ],
)
def test_read_image_channels(tmp_path, mode, array, channels, expected):
    path = str(tmp_path / "image.png")
    if mode == "I;16":  # a 16-bit grayscale PNG
        Image.fromarray(np.asarray(array, np.uint16)).save(path)
    else:
        Image.fromarray(np.asarray(array, np.uint8), mode).save(path)
    image = voc.read_image(path, channels=channels)
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, np.asarray(expected, np.float32))


@pytest.mark.parametrize(
    "mode, array, channels, message",
    [
        ("RGB", [[[1, 2, 3]]], 1, r"1 channel.*Received: mode 'RGB'"),
        ("RGB", [[[1, 2, 3]]], 4, r"4 channels.*Received: mode 'RGB'"),
        ("L", [[1]], 4, r"4 channels.*Received: mode 'L'"),
    ],
)
def test_read_image_refuses_channels_it_cannot_convert(tmp_path, mode, array, channels, message):
    path = str(tmp_path / "image.png")
    Image.fromarray(np.asarray(array, np.uint8), mode).save(path)
    with pytest.raises(DataError, match=re.escape(path) + ".*" + message):
        voc.read_image(path, channels=channels)


def test_read_image_bad_channels_argument(tmp_path):
    with pytest.raises(ValueError, match="Received: channels=2"):
        voc.read_image(tmp_path / "x.png", channels=2)
