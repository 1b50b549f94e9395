"""recipes/convert.py: a torchvision checkpoint to a .keras file that evaluate.py and predict.py use.

Each backend's session runs it under its own backend, so the converted file is
written, reloaded with `safe_mode=True`, evaluated and used for prediction on
TensorFlow, JAX and torch.
"""

import json

import convert  # recipes/convert.py (tests/recipes/__init__.py puts recipes/ on sys.path)
import evaluate
import keras
import numpy as np
import predict
import pytest
from PIL import Image

import kseg.data
from kseg.data.palette import dataset_description
from tests.torch_refs import import_reference, randomize_batchnorm


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torchvision = import_reference("torchvision")
    import torch

    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True
    )
    path = tmp_path_factory.mktemp("torchvision") / "fcn_resnet50.pth"
    torch.save(randomize_batchnorm(model).state_dict(), path)
    return str(path)


def _convert(checkpoint, output, capsys):
    argv = ["--from", "torchvision", "--arch", "fcn_resnet50", "--weights", checkpoint]
    convert.main([*argv, "--output", str(output)])
    out = capsys.readouterr().out
    assert "21 classes, VOC class names" in out and "identical outputs" in out
    model = keras.saving.load_model(output, compile=False, safe_mode=True)
    assert model.dataset["class_names"] == dataset_description("voc")["class_names"]
    assert set(model.output) == {"main", "aux"}
    return model


def test_convert_then_predict(checkpoint, tmp_path, capsys):
    """The recipe reloads its file with safe_mode=True and compares outputs itself."""
    output = tmp_path / "fcn.keras"
    model = _convert(checkpoint, output, capsys)
    images = tmp_path / "images"
    images.mkdir()
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(image).save(images / "a.png")
    predict.main(
        [
            str(images),
            "--checkpoint",
            str(output),
            "--output-dir",
            str(tmp_path / "p"),
            "--no-size-buckets",
        ]
    )
    with Image.open(tmp_path / "p" / "a_mask.png") as png:
        mask = np.asarray(png)
    logits = keras.ops.convert_to_numpy(model(image[None].astype("float32"))["main"][0])
    np.testing.assert_array_equal(mask, np.argmax(logits, axis=-1))


@pytest.mark.large
def test_convert_then_evaluate(checkpoint, tmp_path, capsys):
    output = tmp_path / "fcn.keras"
    _convert(checkpoint, output, capsys)
    data = tmp_path / "data"
    kseg.data.write_fake_voc(data, num_train=1, num_val=1)
    results = tmp_path / "results.json"
    evaluate.main(
        [str(output), "--data-dir", str(data), "--max-images", "1", "--output-json", str(results)]
    )
    with open(results) as handle:
        scores = json.load(handle)
    assert scores["dataset"] == "voc"
    assert list(scores["per_class_iou"]) == dataset_description("voc")["class_names"]


@pytest.mark.large
def test_new_class_count_has_no_voc_names(checkpoint, tmp_path, capsys):
    output = tmp_path / "fcn5.keras"
    argv = ["--from", "torchvision", "--arch", "fcn_resnet50", "--weights", checkpoint]
    convert.main([*argv, "--output", str(output), "--num-classes", "5", "--skip-check"])
    assert "5 classes" in capsys.readouterr().out
    model = keras.saving.load_model(output, compile=False)
    assert not isinstance(model, kseg.models.SegmentationModel)
    with pytest.raises(SystemExit, match="voc has 21 classes, the model 5"):
        convert.main([*argv, "--output", str(output), "--num-classes", "5", "--dataset", "voc"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--weights", "/no/such.pth", "--output", "m.keras"], "argument --weights: no such file"),
        (["--output", "model.h5"], "argument --output: expected a .keras file name"),
        (["--output", "m.keras", "--num-classes", "0"], "argument --num-classes: must be >= 1"),
    ],
)
def test_bad_arguments_name_the_argument(checkpoint, extra, message, capsys):
    argv = ["--from", "torchvision", "--arch", "resnet50", "--weights", checkpoint, *extra]
    with pytest.raises(SystemExit) as info:
        convert.parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err
