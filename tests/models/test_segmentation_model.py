import json
import os
import zipfile

import keras
import numpy as np
import pytest

import kseg
from kseg.models import SegmentationModel, with_dataset
from tests.helpers import to_numpy
from tests.models.conftest import tiny_resnet

VOC_LIKE = {
    "name": "toy",
    "class_names": ["background", "cat", "dog"],
    "palette": [[0, 0, 0], [128, 0, 0], (0, 128, 0)],
    "ignore_index": 255,
}


def _images(shape=(2, 35, 29, 3)):
    return np.random.default_rng(0).uniform(0, 255, shape).astype("float32")


def _ginet(num_classes=3):
    return kseg.models.GINet(
        num_classes,
        backbone=tiny_resnet(8),
        jpu_width=8,
        reduce_filters=8,
        num_state=8,
        num_node=4,
        aux_head=True,
    )


def test_with_dataset_shares_layers_and_outputs():
    base = _ginet()
    model = with_dataset(base, VOC_LIKE)
    assert isinstance(model, SegmentationModel) and model.name == base.name
    assert model.dataset == {**VOC_LIKE, "palette": [[0, 0, 0], [128, 0, 0], [0, 128, 0]]}
    assert [w.path for w in model.weights] == [w.path for w in base.weights]
    assert all(a is b for a, b in zip(model.weights, base.weights))
    x = _images()
    expected, got = to_numpy(base(x)), to_numpy(model(x))
    assert sorted(got) == ["aux", "main", "presence"]
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_safe_mode_round_trip_keeps_dataset_weights_and_outputs(tmp_path):
    model = with_dataset(_ginet(), VOC_LIKE)
    x = _images()
    expected = to_numpy(model(x, training=False))
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    assert config["registered_name"] == "kseg>SegmentationModel"
    assert config["config"]["dataset"]["class_names"] == VOC_LIKE["class_names"]

    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(reloaded, SegmentationModel)
    assert reloaded.dataset == model.dataset
    for a, b in zip(model.weights, reloaded.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(to_numpy(b.value), to_numpy(a.value))
    got = to_numpy(reloaded(x, training=False))
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-5)


def test_description_of_a_known_dataset_and_no_description(tmp_path):
    from kseg.data.palette import dataset_description

    base = kseg.models.UNet(6, depth=2, base_filters=4, padding="same")
    model = with_dataset(base, dataset_description("synthetic"))
    assert model.dataset["class_names"][1] == "red"
    plain = with_dataset(base, None)
    assert plain.dataset is None
    path = os.path.join(tmp_path, "plain.keras")
    plain.save(path)
    assert keras.saving.load_model(path, safe_mode=True).dataset is None


def test_binary_model_takes_two_class_names():
    base = kseg.models.UNet(1, depth=2, base_filters=4, padding="same")
    model = with_dataset(base, {"name": "cells", "class_names": ["background", "cell"]})
    assert model.dataset["ignore_index"] == 255  # the default


@pytest.mark.parametrize(
    "dataset, error, message",
    [
        ({"name": "toy", "class_names": ["a", "b"]}, ValueError, r"\(3\).*Received: 2 class"),
        ({"class_names": ["a", "b", "c"]}, ValueError, r"'name' entry"),
        ({"name": "toy", "class_names": "abc"}, ValueError, r"class_names='abc'"),
        ({"name": "toy", "class_names": ["a", 1, "c"]}, ValueError, r"hold strings"),
        ({**VOC_LIKE, "palette": [[0, 0, 0]]}, ValueError, r"3 colours"),
        ({**VOC_LIKE, "palette": [[0, 0, 0]] * 2 + [[0, 0, 256]]}, ValueError, r"palette="),
        ({**VOC_LIKE, "ignore_index": "255"}, ValueError, r"ignore_index='255'"),
        ({**VOC_LIKE, "colors": []}, ValueError, r"unknown keys \['colors'\]"),
        (["a", "b", "c"], TypeError, r"Received: dataset=\['a'"),
    ],
)
def test_bad_descriptions(dataset, error, message):
    base = kseg.models.UNet(3, depth=2, base_filters=4, padding="same")
    with pytest.raises(error, match=message):
        with_dataset(base, dataset)


def test_with_dataset_needs_a_functional_model():
    with pytest.raises(TypeError, match="keras.Model"):
        with_dataset("unet", VOC_LIKE)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="functional"):
        with_dataset(Subclassed(), VOC_LIKE)
