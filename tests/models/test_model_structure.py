"""Models remember what they are: the builder, its arguments, the dataset, through every reload.

Every builder returns a `kseg.models.SegmentationModel` whose config holds the
builder's name and arguments and the dataset description; `.keras` files and
`from_config` restore them with the architecture and weights. Keras' own
`model.export` exports a kseg model as `kseg.export.export_model` does. Files
written by kseg 0.1.0 (tests/models/release_0_1_0) still load.
"""

import importlib.util
import os

import keras
import numpy as np
import pytest

import kseg
from tests.helpers import BACKEND, to_numpy
from tests.models.conftest import tiny_resnet
from tests.models.test_mixed_precision import BUILDERS

RELEASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "release_0_1_0")
DATASET = {"name": "toy", "class_names": ["bg", "a", "b"], "palette": None, "ignore_index": 255}
# The builder each BUILDERS entry calls (read from its source, not from the model).
BUILDER_NAMES = {
    "fcn8s": "FCN8s", "unet": "UNet", "segnet": "SegNet", "pspnet": "PSPNet",
    "deeplabv1": "DeepLabV1", "deeplabv2": "DeepLabV2", "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus", "gcunet": "GCUNet", "glorenet": "GloReNet",
    "ginet": "GINet", "segformer": "SegFormer", "fpn": "FPN", "linknet": "Linknet",
    "unetplusplus": "UNetPlusPlus", "upernet": "UPerNet",
}


def _images(size=(40, 48), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (1, *size, 3)).astype("float32")


def _main(outputs):
    return to_numpy(outputs["main"] if isinstance(outputs, dict) else outputs)


def test_every_builder_is_named():
    assert sorted(BUILDER_NAMES) == sorted(BUILDERS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_builder_reloads_with_its_arguments_and_dataset(name, tmp_path):
    model = kseg.models.with_dataset(BUILDERS[name](), DATASET)
    assert isinstance(model, kseg.models.SegmentationModel)
    assert model.builder == BUILDER_NAMES[name]
    arguments = model.arguments
    assert arguments["num_classes"] == 3 and arguments["name"] == model.name
    path = str(tmp_path / "model.keras")
    model.save(path)
    for again in (
        keras.saving.load_model(path, safe_mode=True, compile=False),
        kseg.models.SegmentationModel.from_config(model.get_config()),
    ):
        assert type(again) is kseg.models.SegmentationModel
        assert again.builder == model.builder and again.arguments == arguments
        assert again.dataset == DATASET
        assert [w.shape for w in again.weights] == [w.shape for w in model.weights]
    x = _images()
    reloaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(
        _main(reloaded(x, training=False)), _main(model(x, training=False)), atol=1e-5, rtol=1e-5
    )


def test_arguments_record_defaults_and_describe_a_backbone_model():
    backbone = tiny_resnet(8)
    model = kseg.models.DeepLabV3Plus(num_classes=4, backbone=backbone, aspp_filters=8)
    arguments = model.arguments
    assert arguments["backbone"] == f"<keras.Model {backbone.name!r}>"
    assert arguments["aspp_filters"] == 8 and arguments["input_shape"] == [None, None, 3]
    import inspect

    defaults = {
        k: p.default
        for k, p in inspect.signature(kseg.models.DeepLabV3Plus).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    for key, value in defaults.items():
        if key not in ("backbone", "aspp_filters", "input_shape"):
            expected = list(value) if isinstance(value, tuple) else value
            assert arguments[key] == expected, key


@pytest.mark.parametrize("file", ["unet.keras", "deeplabv3plus.keras"])
def test_models_saved_by_release_0_1_0_still_load(file):
    old = keras.saving.load_model(os.path.join(RELEASE, file), safe_mode=True, compile=False)
    assert isinstance(old, keras.Model)
    # Built today with the arguments of tests/models/release_0_1_0/write.py, the same
    # architecture takes the old file's weights and gives the old model's outputs.
    if file == "unet.keras":
        new = kseg.models.UNet(3, depth=2, base_filters=4, padding="same", batch_norm=True)
    else:
        assert old.dataset["class_names"] == ["bg", "a", "b"]
        new = kseg.models.DeepLabV3Plus(
            num_classes=3, backbone=tiny_resnet(8), aspp_filters=8, low_level_filters=4,
            decoder_filters=8,
        )
    new.load_weights(os.path.join(RELEASE, file))
    x = _images(seed=1)
    np.testing.assert_allclose(
        _main(new(x, training=False)), _main(old(x, training=False)), atol=1e-5, rtol=1e-5
    )


def test_a_backbone_saved_by_release_0_1_0_still_loads():
    old = keras.saving.load_model(
        os.path.join(RELEASE, "resnet_tiny.keras"), safe_mode=True, compile=False
    )
    new = kseg.backbones.ResNet(blocks=(1, 1, 1, 1), width=4, output_stride=8)
    new.set_weights(old.get_weights())
    x = _images(seed=2)
    for key, value in old(x).items():
        np.testing.assert_allclose(to_numpy(new(x)[key]), to_numpy(value), atol=1e-5)


HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnxruntime",)) and (
    (BACKEND == "tensorflow" and importlib.util.find_spec("tf2onnx"))
    or (BACKEND == "jax" and importlib.util.find_spec("jax2onnx"))
)


@pytest.mark.skipif(BACKEND == "torch", reason="kseg exports from TensorFlow and JAX")
@pytest.mark.parametrize("format", ["onnx", "tf_saved_model"])
def test_keras_model_export_works_as_kseg_export(format, tmp_path):
    if format == "onnx" and not HAVE_ONNX:
        pytest.skip("no ONNX exporter or onnxruntime")
    model = BUILDERS["deeplabv3plus"]()  # max pooling in the backbone, a dict output
    path = str(tmp_path / ("m.onnx" if format == "onnx" else "saved"))
    model.export(path, format=format)
    assert os.path.isfile(kseg.export.description_path(path))
    x = _images((37, 45), seed=3)
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
    else:
        import tensorflow as tf

        loaded = tf.saved_model.load(path)  # kept while it runs: it owns the variables
        got = loaded.serve(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, _main(model(x, training=False)), atol=1e-4, rtol=1e-4)


def test_backbones_keep_their_feature_info_through_a_reload(tmp_path):
    backbone = kseg.backbones.ResNet(blocks=(1, 1, 1, 1), width=4, output_stride=8)
    expected = kseg.backbones.feature_info(backbone)
    assert isinstance(backbone, kseg.backbones.Backbone)
    assert expected.stride("stage4") == 8 and expected.low_level == "stage1"
    path = str(tmp_path / "backbone.keras")
    backbone.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    assert kseg.backbones.feature_info(reloaded) == expected
    # ... and inside a model.
    model = kseg.models.DeepLabV3Plus(
        num_classes=3, backbone=backbone, aspp_filters=8, low_level_filters=4, decoder_filters=8
    )
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    inner = [layer for layer in reloaded.layers if isinstance(layer, kseg.backbones.Backbone)]
    assert len(inner) == 1 and kseg.backbones.feature_info(inner[0]) == expected
    # A reloaded backbone can be built on again.
    again = kseg.models.DeepLabV3Plus(num_classes=3, backbone=inner[0], aspp_filters=8)
    assert again.arguments["backbone"] == f"<keras.Model {backbone.name!r}>"
