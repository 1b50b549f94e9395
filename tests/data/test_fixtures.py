"""kseg.data.fixtures: fake dataset folders in the layouts of the real datasets."""

import os

import numpy as np
from PIL import Image

import kseg
from kseg.data import fixtures


def test_kseg_data_exports_the_writers():
    for name in (
        "write_fake_voc",
        "write_fake_folder",
        "write_fake_cityscapes",
        "write_fake_ade20k",
    ):
        assert getattr(kseg.data, name) is getattr(fixtures, name)


def test_write_fake_voc(tmp_path):
    path = fixtures.write_fake_voc(tmp_path, num_train=2, num_val=1, augmented=True, num_aug_only=1)
    assert path == os.path.join(str(tmp_path), "VOCdevkit", "VOC2012")
    lists = os.path.join(path, "ImageSets", "Segmentation")
    read = lambda name: open(os.path.join(lists, name)).read().split()  # noqa: E731
    assert read("train.txt") == ["2007_000001", "2007_000002"]
    assert read("val.txt") == ["2007_000003"]
    assert read("trainval.txt") == read("train.txt") + read("val.txt")
    assert read("train_aug.txt") == read("train.txt") + ["2007_000004"]
    for name in read("trainval.txt"):
        with Image.open(os.path.join(path, "JPEGImages", name + ".jpg")) as jpg:
            assert jpg.format == "JPEG" and jpg.mode == "RGB"
            size = jpg.size
        with Image.open(os.path.join(path, "SegmentationClass", name + ".png")) as png:
            assert png.format == "PNG" and png.mode == "P" and png.size == size
            values = set(np.unique(np.asarray(png)).tolist())
            assert values <= set(range(21)) | {255} and 255 in values
    for name in read("train_aug.txt"):
        with Image.open(os.path.join(path, "SegmentationClassAug", name + ".png")) as png:
            assert png.mode == "L"
