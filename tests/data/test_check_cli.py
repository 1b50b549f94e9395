import os
import runpy
import sys

import numpy as np
import pytest
from PIL import Image

import kseg.data
from kseg.data.__main__ import main


def test_folder_check_lists_every_bad_file(tmp_path, capsys):
    fake = kseg.data.write_fake_folder(tmp_path, num_classes=3, num_samples=4)
    assert main(["--check", str(tmp_path), "--dataset", "folder", "--num-classes", "3"]) == 0
    assert "OK" in capsys.readouterr().out
    os.remove(fake["masks"][0])  # image without a mask
    lonely = str(tmp_path / "masks" / "a" / "lonely.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(lonely)  # mask without an image
    with open(fake["images"][1], "wb") as f:
        f.write(b"broken")  # corrupt image
    height, width = fake["labels"][2].shape
    Image.fromarray(np.full((height, width), 7, np.uint8)).save(fake["masks"][2])  # bad value
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(fake["masks"][3])  # size mismatch
    assert main(["--check", str(tmp_path), "--dataset", "folder", "--num-classes", "3"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 5 and "5 problem(s)" in captured.err
    expected = [
        (fake["images"][0], "image without a mask"),
        (lonely, "mask without an image"),
        (fake["images"][1], "corrupt"),
        (fake["masks"][2], "[7]"),
        (fake["masks"][3], "differs"),
    ]
    for path, words in expected:
        assert any(line.startswith(path) and words in line for line in lines), (path, lines)


def test_folder_options_reach_the_checker(tmp_path, capsys):
    fake = kseg.data.write_fake_folder(
        tmp_path, num_classes=3, num_samples=2, image_suffix=".png", list_file="l.txt"
    )
    for mask in fake["masks"]:
        values = np.asarray(Image.open(mask)).astype(np.int64)
        Image.fromarray(np.where(values == 255, 0, values + 1).astype(np.uint8)).save(mask)
    args = ["--check", str(tmp_path), "--dataset", "folder", "--num-classes", "3"]
    assert main(args + ["--image-suffix", ".png", "--reduce-zero-label"]) == 0
    assert main(args + ["--list-file", "l.txt", "--reduce-zero-label"]) == 0
    assert main(args + ["--list-file", "l.txt"]) == 1  # stored 3 is not a class without the shift
    assert main(args + ["--mask-format", "palette", "--image-suffix", ".png"]) == 1
    assert "mode 'L'" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="only for --dataset folder"):
        main(["--check", str(tmp_path), "--dataset", "ade20k", "--mask-dir", "x"])


def test_cityscapes_ade20k_and_voc_checks(tmp_path, capsys):
    cs = kseg.data.write_fake_cityscapes(tmp_path, cities=("ulm",), per_city={"train": 1, "val": 1})
    ade = kseg.data.write_fake_ade20k(tmp_path, num_training=1, num_validation=1)
    voc = kseg.data.write_fake_voc(tmp_path, num_train=1, num_val=1)
    assert main(["--check", str(tmp_path), "--dataset", "cityscapes"]) == 0
    assert main(["--check", str(tmp_path), "--dataset", "ade20k"]) == 0
    assert main(["--check", str(tmp_path), "--dataset", "voc"]) == 0
    capsys.readouterr()
    Image.fromarray(np.full((24, 48), 40, np.uint8)).save(cs["val"]["label_ids"][0])
    assert main(["--check", str(tmp_path), "--dataset", "cityscapes", "--split", "train"]) == 0
    capsys.readouterr()
    assert main(["--check", str(tmp_path), "--dataset", "cityscapes"]) == 1
    assert capsys.readouterr().out.startswith(cs["val"]["label_ids"][0] + ": mask values [40]")
    os.remove(ade["training"]["images"][0])
    assert main(["--check", str(tmp_path), "--dataset", "ade20k"]) == 1
    assert "mask without an image" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--split"):
        main(["--check", str(tmp_path), "--dataset", "ade20k", "--split", "train"])
    os.remove(os.path.join(voc, "JPEGImages", "2007_000001.jpg"))
    assert main(["--check", str(tmp_path), "--dataset", "voc", "--split", "train"]) == 1


def test_module_entry_point_exit_status(tmp_path, monkeypatch, capsys):
    kseg.data.write_fake_ade20k(tmp_path, num_training=1, num_validation=1)
    image = os.path.join(tmp_path, "ADEChallengeData2016", "images", "validation")
    os.remove(os.path.join(image, "ADE_val_00000001.jpg"))
    argv = ["python -m kseg.data", "--check", str(tmp_path), "--dataset", "ade20k"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.delitem(sys.modules, "kseg.data.__main__", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("kseg.data", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 1
    assert "ADE_val_00000001.png: mask without an image" in capsys.readouterr().out
