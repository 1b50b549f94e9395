import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import kseg.data
from kseg.data import DataError

# cityscapesScripts `cityscapesscripts/helpers/labels.py`: (name, id, trainId), written out.
LABELS_PY = [
    ("unlabeled", 0, 255),
    ("ego vehicle", 1, 255),
    ("rectification border", 2, 255),
    ("out of roi", 3, 255),
    ("static", 4, 255),
    ("dynamic", 5, 255),
    ("ground", 6, 255),
    ("road", 7, 0),
    ("sidewalk", 8, 1),
    ("parking", 9, 255),
    ("rail track", 10, 255),
    ("building", 11, 2),
    ("wall", 12, 3),
    ("fence", 13, 4),
    ("guard rail", 14, 255),
    ("bridge", 15, 255),
    ("tunnel", 16, 255),
    ("pole", 17, 5),
    ("polegroup", 18, 255),
    ("traffic light", 19, 6),
    ("traffic sign", 20, 7),
    ("vegetation", 21, 8),
    ("terrain", 22, 9),
    ("sky", 23, 10),
    ("person", 24, 11),
    ("rider", 25, 12),
    ("car", 26, 13),
    ("truck", 27, 14),
    ("bus", 28, 15),
    ("caravan", 29, 255),
    ("trailer", 30, 255),
    ("train", 31, 16),
    ("motorcycle", 32, 17),
    ("bicycle", 33, 18),
    ("license plate", -1, -1),
]


def _collect(ds):
    return [(np.asarray(i), np.asarray(m)) for i, m in ds]


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return kseg.data.write_fake_cityscapes(tmp_path_factory.mktemp("cs"))


def test_label_table_matches_labels_py():
    expected = {i: (255 if t in (255, -1) else t) for _, i, t in LABELS_PY}
    assert kseg.data.CITYSCAPES_LABEL_TO_TRAIN == expected
    # The 19 training classes, in trainId order, are the description's class names.
    train_names = [n for n, _, t in sorted(LABELS_PY, key=lambda r: r[2]) if 0 <= t < 255]
    description = kseg.data.dataset_description("cityscapes")
    assert description["class_names"] == train_names
    assert len(description["palette"]) == 19 and description["ignore_index"] == 255


def test_label_ids_converted_to_train_ids(fake, tmp_path):
    for split, count in (("train", 4), ("val", 2)):
        samples = _collect(kseg.data.cityscapes_dataset(fake["root"], split))
        assert len(samples) == count
        for (image, mask), labels in zip(samples, fake[split]["labels"]):
            assert image.shape == (24, 48, 3) and mask.dtype == np.int32
            np.testing.assert_array_equal(mask, labels)
    # Every label id of one hand-made mask, through the table written out above.
    images, masks = kseg.data.cityscapes_file_list(fake["root"], "val")
    assert all(m.endswith("_gtFine_labelIds.png") for m in masks)
    stored = np.zeros((24, 48), np.uint8)
    stored[:, :34] = [i for _, i, _ in LABELS_PY if i >= 0]
    copy = os.path.join(tmp_path, "cityscapes")
    shutil.copytree(fake["root"], copy)
    mask_path = os.path.join(copy, os.path.relpath(masks[0], fake["root"]))
    Image.fromarray(stored, "L").save(mask_path)
    (_, mask), _ = _collect(kseg.data.cityscapes_dataset(tmp_path, "val"))
    expected = np.full((24, 48), 255)
    expected[:, :34] = [255 if t in (255, -1) else t for _, i, t in LABELS_PY if i >= 0]
    np.testing.assert_array_equal(mask, expected)
    # An id outside the table is an error naming the file and the value.
    stored[0, 40] = 34
    Image.fromarray(stored, "L").save(mask_path)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(mask_path) + r".*\[34\]"):
        _collect(kseg.data.cityscapes_dataset(tmp_path, "val"))
    problems = kseg.data.check_cityscapes(copy)
    assert [p for p, _ in problems] == [mask_path]


def test_train_id_files_are_preferred(tmp_path):
    fake = kseg.data.write_fake_cityscapes(
        tmp_path, cities=("ulm",), per_city={"train": 1}, train_ids=True
    )
    images, masks = kseg.data.cityscapes_file_list(tmp_path, "train")
    assert masks == fake["train"]["train_ids"]
    # The trainIds file is what is read: change it and the read labels follow.
    Image.fromarray(np.full((24, 48), 5, np.uint8), "L").save(masks[0])
    ((_, mask),) = _collect(kseg.data.cityscapes_dataset(tmp_path, "train"))
    np.testing.assert_array_equal(mask, np.full((24, 48), 5))
    Image.fromarray(np.full((24, 48), 19, np.uint8), "L").save(masks[0])
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(masks[0]) + r".*\[19\]"):
        _collect(kseg.data.cityscapes_dataset(tmp_path, "train"))


def test_roots_splits_and_missing_files(fake, tmp_path):
    parent = os.path.dirname(fake["root"])
    assert kseg.data.find_cityscapes_root(parent) == fake["root"]
    assert kseg.data.find_cityscapes_root(fake["root"]) == fake["root"]
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        kseg.data.cityscapes_dataset(tmp_path)
    with pytest.raises(ValueError, match="test split has no public labels.*split='test'"):
        kseg.data.cityscapes_dataset(fake["root"], "test")
    with pytest.raises(ValueError, match="Received: split='training'"):
        kseg.data.cityscapes_dataset(fake["root"], "training")
    fresh = kseg.data.write_fake_cityscapes(tmp_path, per_city={"train": 1, "val": 1})
    os.remove(fresh["val"]["label_ids"][1])
    with pytest.raises(DataError, match=re.escape(fresh["val"]["images"][1]) + ": image without"):
        kseg.data.cityscapes_dataset(tmp_path, "val")
    shutil.rmtree(os.path.join(fresh["root"], "gtFine", "train"))
    with pytest.raises(FileNotFoundError, match=re.escape(os.path.join("gtFine", "train"))):
        kseg.data.cityscapes_dataset(tmp_path, "train")
    empty = tmp_path / "empty" / "cityscapes"
    os.makedirs(empty / "leftImg8bit" / "val")
    os.makedirs(empty / "gtFine" / "val")
    with pytest.raises(DataError, match="split 'val' is empty"):
        kseg.data.cityscapes_dataset(empty, "val")


def test_cityscapes_through_train_pipeline(fake):
    ds = kseg.data.train_pipeline(
        kseg.data.cityscapes_dataset(fake["root"], "train", shuffle=True, seed=1),
        batch_size=2,
        crop_size=16,
        seed=0,
    )
    images, masks = next(iter(ds))
    assert images.shape == (2, 16, 16, 3)
    assert set(np.unique(masks.numpy()).tolist()) <= set(range(19)) | {255}
