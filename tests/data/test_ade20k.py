import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import kseg.data
from kseg.data import DataError


def _collect(ds):
    return [(np.asarray(i), np.asarray(m)) for i, m in ds]


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return kseg.data.write_fake_ade20k(tmp_path_factory.mktemp("ade"))


def test_fake_splits_read_back(fake):
    for split, count in (("training", 3), ("validation", 2)):
        samples = _collect(kseg.data.ade20k_dataset(fake["root"], split))
        assert len(samples) == count
        for (image, mask), labels in zip(samples, fake[split]["labels"]):
            assert image.shape == labels.shape + (3,) and mask.dtype == np.int32
            np.testing.assert_array_equal(mask, labels)
    assert kseg.data.check_ade20k(fake["root"]) == []


def test_shift_hand_worked(fake, tmp_path):
    root = shutil.copytree(fake["root"], tmp_path / "ADEChallengeData2016")
    images, masks = kseg.data.ade20k_file_list(tmp_path, "validation")
    height, width = np.asarray(Image.open(images[0])).shape[:2]
    stored = np.zeros((height, width), np.uint8)
    stored[0, :6] = [0, 1, 2, 75, 150, 255]
    stored[1, :3] = [3, 0, 149]
    Image.fromarray(stored, "L").save(masks[0])
    # 0 ("other objects") -> 255; v -> v - 1; 255 stays ignored.
    expected = np.full((height, width), 255)
    expected[0, :6] = [255, 0, 1, 74, 149, 255]
    expected[1, :3] = [2, 255, 148]
    mask = _collect(kseg.data.ade20k_dataset(root, "validation"))[0][1]
    np.testing.assert_array_equal(mask, expected)
    stored[2, 2] = 151
    Image.fromarray(stored, "L").save(masks[0])
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(masks[0]) + r".*\[151\]"):
        _collect(kseg.data.ade20k_dataset(root, "validation"))
    problems = kseg.data.check_ade20k(tmp_path, ["validation"])
    assert [p for p, _ in problems] == [masks[0]] and "[0, 150]" in problems[0][1]


def test_description():
    description = kseg.data.dataset_description("ade20k")
    names, palette = description["class_names"], description["palette"]
    assert len(names) == len(palette) == 150 and len(set(names)) == 150
    # Values from objectInfo150 / mmsegmentation's ADE20KDataset, written out.
    assert names[:8] == ["wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed"]
    assert names[12] == "person" and names[20] == "car" and names[149] == "flag"
    assert palette[0] == [120, 120, 120] and palette[1] == [180, 120, 120]
    assert palette[12] == [150, 5, 61] and palette[149] == [92, 0, 255]
    assert description["ignore_index"] == 255 and description["name"] == "ade20k"


def test_roots_splits_and_missing_files(fake, tmp_path):
    parent = os.path.dirname(fake["root"])
    assert kseg.data.find_ade20k_root(parent) == fake["root"]
    assert kseg.data.find_ade20k_root(fake["root"]) == fake["root"]
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        kseg.data.ade20k_dataset(tmp_path)
    with pytest.raises(ValueError, match="Received: split='val'"):
        kseg.data.ade20k_dataset(fake["root"], "val")
    root = shutil.copytree(fake["root"], tmp_path / "ADEChallengeData2016")
    _, masks = kseg.data.ade20k_file_list(root, "training")
    os.remove(masks[1])
    with pytest.raises(DataError, match=r"ADE_train_00000002.jpg: image without a mask"):
        kseg.data.ade20k_dataset(root, "training")
    shutil.rmtree(root / "annotations" / "validation")
    with pytest.raises(
        FileNotFoundError, match=re.escape(os.path.join("annotations", "validation"))
    ):
        kseg.data.ade20k_dataset(root, "validation")
    for name in os.listdir(root / "images" / "training"):
        os.remove(root / "images" / "training" / name)
    for name in os.listdir(root / "annotations" / "training"):
        os.remove(root / "annotations" / "training" / name)
    with pytest.raises(DataError, match="split 'training' is empty"):
        kseg.data.ade20k_dataset(root, "training")


def test_ade20k_through_eval_pipeline(fake):
    ds = kseg.data.eval_pipeline(kseg.data.ade20k_dataset(fake["root"], "validation"), size=48)
    images, masks = next(iter(ds))
    assert images.shape[1:] == (48, 48, 3) and masks.shape[1:] == (48, 48)
    assert set(np.unique(masks.numpy()).tolist()) <= set(range(150)) | {255}
