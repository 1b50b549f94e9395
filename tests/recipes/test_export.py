"""recipes/export.py: a .keras checkpoint to a SavedModel / ONNX file, checked by the recipe.

The recipe runs the export with its own runtime and compares it with the Keras
model; the test reads the description written beside it and runs the export
again itself, on an image of another size.
"""

import importlib.util
import json
import os

import export  # recipes/export.py (tests/recipes/__init__.py puts recipes/ on sys.path)
import numpy as np
import pytest

import kseg
from kseg.data.palette import dataset_description
from tests.helpers import BACKEND


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = kseg.models.UNet(21, base_filters=4, depth=2, padding="same", batch_norm=True)
    model = kseg.models.with_dataset(model, dataset_description("voc"))
    path = tmp_path_factory.mktemp("checkpoint") / "best.keras"
    model.save(path)
    return str(path)


@pytest.mark.skipif(BACKEND not in ("tensorflow", "jax"), reason="no export from torch")
@pytest.mark.parametrize("fmt", ["saved_model", "onnx"])
def test_export_then_run(checkpoint, fmt, tmp_path, capsys):
    if fmt == "onnx" and BACKEND == "jax":
        pytest.skip("ONNX from JAX is checked in tests/test_export.py (an export costs 20 s)")
    if fmt == "onnx" and not all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnxruntime")):
        pytest.skip("tf2onnx or onnxruntime is not installed")
    output = str(tmp_path / ("model.onnx" if fmt == "onnx" else "model"))
    export.main(["--checkpoint", checkpoint, "--format", fmt, "--output", output])
    out = capsys.readouterr().out
    assert f"Wrote {output} ({fmt}, from {BACKEND}) and {output}.json" in out
    assert "Check on a 97x131 image: largest logit difference from Keras" in out
    with open(output + ".json") as f:
        described = json.load(f)
    assert described["dataset"]["name"] == "voc"
    assert len(described["dataset"]["class_names"]) == 21
    image = np.random.default_rng(1).uniform(0, 255, (1, 33, 75, 3)).astype("float32")
    model = export._common.load_model(checkpoint)
    expected = kseg.export.inference_model(model)(image)
    got = export.run_exported(fmt, output, image)
    np.testing.assert_allclose(got, np.asarray(expected), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="the other backends refuse some formats")
def test_export_recipe_names_the_backend_that_exports(checkpoint, tmp_path):
    # JAX exports SavedModel and ONNX but not LiteRT; torch exports nothing.
    if BACKEND == "jax":
        argv = ["--format", "litert", "--output", str(tmp_path / "m.tflite"), "--size", "32", "32"]
    else:
        argv = ["--format", "onnx", "--output", str(tmp_path / "m.onnx")]
    argv = ["--checkpoint", checkpoint, *argv]
    with pytest.raises(SystemExit, match=f"KERAS_BACKEND=tensorflow .* backend '{BACKEND}'"):
        export.main(argv)
    assert not os.listdir(tmp_path)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="exported from TensorFlow")
def test_export_recipe_refuses_bad_arguments(checkpoint, tmp_path):
    argv = ["--checkpoint", checkpoint, "--output", str(tmp_path / "m.tflite")]
    with pytest.raises(SystemExit):
        export.main([*argv, "--format", "litert"])
    with pytest.raises(SystemExit, match="argument --checkpoint: no file"):
        export.main(["--checkpoint", str(tmp_path / "x.keras"), "--format", "onnx",
                     "--output", str(tmp_path / "m.onnx"), "--skip-check"])
    (tmp_path / "taken.onnx").write_text("")
    with pytest.raises(SystemExit):
        export.main(["--checkpoint", checkpoint, "--format", "onnx",
                     "--output", str(tmp_path / "taken.onnx")])
