import numpy as np
import pytest

from kseg.data.palette import VOC_CLASSES, colorize, overlay, voc_palette

# Colours of the PASCAL VOC 2012 devkit colour map (VOCdevkit/VOCcode/VOClabelcolormap.m).
KNOWN = {
    0: (0, 0, 0),
    1: (128, 0, 0),
    2: (0, 128, 0),
    3: (128, 128, 0),
    4: (0, 0, 128),
    8: (64, 0, 0),
    15: (192, 128, 128),
    20: (0, 64, 128),
    255: (224, 224, 192),
}


def test_voc_palette_known_colours():
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    for index, rgb in KNOWN.items():
        assert tuple(palette[index]) == rgb
    assert len({tuple(c) for c in palette}) == 256
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[15] == "person"


def test_colorize_and_overlay():
    mask = np.array([[0, 1], [15, 255]])
    rgb = colorize(mask)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert [tuple(v) for v in rgb.reshape(-1, 3)] == [KNOWN[0], KNOWN[1], KNOWN[15], KNOWN[255]]
    np.testing.assert_array_equal(colorize(mask[None, ..., None]), rgb[None])
    image = np.full((2, 2, 3), 100.0)
    out = overlay(image, mask, alpha=0.5)
    np.testing.assert_array_equal(out[0, 1], [114, 50, 50])  # (100 + 128) / 2, 100 / 2
    np.testing.assert_array_equal(out[1, 1], [100, 100, 100])  # ignore keeps the image


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: num_colors=300"):
        voc_palette(300)
    with pytest.raises(ValueError, match="Received: values in"):
        colorize(np.array([[0, 300]]))
    with pytest.raises(TypeError, match="mask.dtype=float"):
        colorize(np.zeros((2, 2)))


def test_dataset_descriptions():
    from kseg.data.palette import CITYSCAPES_CLASSES, dataset_description

    voc = dataset_description("voc")
    assert voc["name"] == "voc" and voc["ignore_index"] == 255
    assert voc["class_names"] == list(VOC_CLASSES)
    assert voc["palette"][1] == [128, 0, 0] and len(voc["palette"]) == 21
    city = dataset_description("cityscapes")
    assert city["class_names"] == list(CITYSCAPES_CLASSES) and len(city["palette"]) == 19
    assert city["palette"][0] == [128, 64, 128]  # road
    assert dataset_description("synthetic")["class_names"][0] == "background"
    voc["class_names"][0] = "changed"  # a fresh dict every call
    assert dataset_description("voc")["class_names"][0] == "background"
    with pytest.raises(ValueError, match="Received: name='ade'"):
        dataset_description("ade")
