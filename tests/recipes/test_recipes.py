"""End-to-end checks of the recipes, run as scripts under the current backend.

Each recipe runs in a subprocess (`sys.executable`, this process' KERAS_BACKEND)
on a fake VOC folder written by `kseg.data.write_fake_voc`, in `--smoke` mode.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import kseg.data
from kseg.data.palette import SYNTHETIC_CLASSES
from tests.helpers import BACKEND
from tests.recipes import RECIPES, ROOT

NUM_CLASSES = 21


@pytest.fixture(scope="module")
def env():
    environ = dict(os.environ)
    environ["KERAS_BACKEND"] = keras.backend.backend()
    environ["PYTHONPATH"] = os.pathsep.join([ROOT, environ.get("PYTHONPATH", "")])
    environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    # The subprocesses share JAX's compiled initialisers and steps (keyed by the
    # computation and the JAX version, so a cache left by an earlier session is safe).
    environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), "kseg-tests-jax-compilation-cache"
    )
    environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return environ


def run_recipe(env, script, *args, check=True):
    result = subprocess.run(
        [sys.executable, os.path.join(RECIPES, script), *map(str, args)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{script} {' '.join(map(str, args))} exited with {result.returncode}\n"
            f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result


@pytest.fixture(scope="module")
def voc_dir(tmp_path_factory):
    return kseg.data.write_fake_voc(
        tmp_path_factory.mktemp("data"), num_train=4, num_val=2, augmented=True, num_aug_only=2
    )


@pytest.fixture(scope="module")
def smoke_run(env, voc_dir, tmp_path_factory):
    """One epoch of the default model on the fake VOC folder."""
    logdir = tmp_path_factory.mktemp("runs") / "smoke"
    result = run_recipe(
        env, "train_voc.py", "--smoke", "--data-dir", voc_dir, "--logdir", logdir, "--epochs", 1
    )
    return logdir, result.stdout


def read_events(folder):
    """`{tag: sorted steps}` of every summary in the event files of `folder`."""
    files = glob.glob(os.path.join(str(folder), "events.out.tfevents.*"))
    assert files, f"no event files in {folder}"
    tags = {}
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, set()).add(event.step)
    return {tag: sorted(steps) for tag, steps in tags.items()}


def read_model_config(path):
    """The model config stored in a `.keras` file (without building the model)."""
    with zipfile.ZipFile(path) as archive:
        assert "model.weights.h5" in archive.namelist()
        return json.loads(archive.read("config.json"))


def parse_miou(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("Validation mIoU:")]
    assert lines, stdout[-2000:]
    return float(lines[-1].split(":")[1])


def parse_iou_table(stdout):
    """`{class: IoU or None}` from the recipe's per-class IoU table."""
    lines = stdout.splitlines()
    start = lines.index("Per-class IoU") + 3
    table = {}
    for line in lines[start:]:
        if not line.strip():
            break
        name, value = line.split()
        table[name] = None if value == "n/a" else float(value)
    return table


def numpy_miou(model, batches):
    """Mean IoU over the classes present in labels or predictions, scored in NumPy."""
    confusion = None
    for images, masks in batches:
        logits = keras.ops.convert_to_numpy(model.predict_on_batch(images))
        preds = logits.argmax(-1)
        masks = masks.reshape(preds.shape)
        k = logits.shape[-1]
        confusion = np.zeros((k, k), np.int64) if confusion is None else confusion
        keep = (masks >= 0) & (masks < k)
        np.add.at(confusion, (masks[keep], preds[keep]), 1)
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return (tp[union > 0] / union[union > 0]).mean()


def test_smoke_run_writes_tensorboard_logs_checkpoint_and_summary(smoke_run, voc_dir):
    logdir, stdout = smoke_run
    assert "PASCAL VOC 2012" in stdout and "'train_aug' (6 images)" in stdout
    assert "Per-class IoU" in stdout and "aeroplane" in stdout
    # The printed mIoU is that of the trained model (one epoch: best.keras) on the smoke
    # validation batches (crop size 32, resized), scored here in NumPy.
    model = keras.saving.load_model(logdir / "best.keras", compile=False)
    val = kseg.data.eval_pipeline(
        kseg.data.voc_dataset(voc_dir, "val"), batch_size=2, size=32, policy="resize"
    )
    miou = numpy_miou(model, val.take(2).as_numpy_iterator())
    np.testing.assert_allclose(parse_miou(stdout), miou, atol=5e-5)
    present = [v for v in parse_iou_table(stdout).values() if v is not None]
    np.testing.assert_allclose(np.mean(present), miou, atol=5e-4)
    assert f"tensorboard --logdir {logdir}" in stdout

    train = read_events(logdir / "train")
    for tag in ("epoch_loss", "epoch_mean_iou", "epoch_pixel_accuracy", "learning_rate"):
        assert train.get(tag) == [0], (tag, sorted(train))
    validation = read_events(logdir / "validation")
    for tag in ("epoch_loss", "epoch_mean_iou", "epoch_pixel_accuracy", "samples"):
        assert validation.get(tag) == [0], (tag, sorted(validation))
    assert validation.get("per_class_iou/background") == [0], sorted(validation)

    # The checkpoint carries its dataset: what predict.py and evaluate_voc.py read.
    config = read_model_config(logdir / "best.keras")
    assert config["registered_name"] == "kseg>SegmentationModel"
    dataset = config["config"]["dataset"]
    assert dataset["name"] == "voc" and dataset["class_names"] == list(kseg.data.VOC_CLASSES)
    assert dataset["palette"][1] == [128, 0, 0] and dataset["ignore_index"] == 255
    assert "Dataset 'voc': 21 classes" in stdout
    with open(logdir / "args.json") as f:
        assert json.load(f)["model"] == "deeplabv3plus"


def test_init_from_fine_tunes_a_model_on_other_classes(env, smoke_run, tmp_path):
    """--init-from: the smoke run's 21-class model fine-tuned on the synthetic classes."""
    source = smoke_run[0] / "best.keras"
    logdir = tmp_path / "tuned"
    result = run_recipe(
        env, "train.py", "--smoke", "--init-from", source, "--logdir", logdir, "--epochs", 1
    )
    classes = len(SYNTHETIC_CLASSES)
    assert f"but classifier (new for {classes} classes)" in result.stdout, result.stdout[-3000:]
    old = keras.saving.load_model(source, compile=False)
    tuned = keras.saving.load_model(logdir / "best.keras", compile=False)
    assert tuned.output.shape[-1] == classes and tuned.builder == "DeepLabV3Plus"
    assert tuned.dataset["class_names"] == list(SYNTHETIC_CLASSES)
    with open(logdir / "args.json") as f:
        assert json.load(f)["model"] == "deeplabv3plus"
    # Every weight but the classifier's started from the file: same shapes, layer by layer.
    shapes = [[tuple(v.shape) for v in layer.weights] for layer in old.layers]
    tuned_shapes = [[tuple(v.shape) for v in layer.weights] for layer in tuned.layers]
    differ = [old.layers[i].name for i in range(len(shapes)) if shapes[i] != tuned_shapes[i]]
    assert differ == ["classifier"]
    refused = run_recipe(
        env, "train.py", "--smoke", "--init-from", source, "--backbone", "resnet50", check=False
    )
    assert refused.returncode == 2 and "drop --backbone" in refused.stderr, refused.stderr[-2000:]


@pytest.mark.large  # resuming is tested in the default suite by tests/recipes/test_preemption.py
def test_resume_continues_from_the_saved_epoch(env, smoke_run, tmp_path):
    logdir = tmp_path / "resumed"
    shutil.copytree(smoke_run[0], logdir)
    result = run_recipe(env, "train_voc.py", "--resume", "--logdir", logdir, "--epochs", 2)
    # The saved arguments (--smoke, --data-dir) are the defaults of the resumed run.
    assert "PASCAL VOC 2012" in result.stdout and "Configuration (smoke)" in result.stdout
    assert "Epoch 2/2" in result.stdout and "Epoch 1/2" not in result.stdout
    validation = read_events(logdir / "validation")
    assert validation["epoch_mean_iou"] == [0, 1]
    with open(logdir / "backup" / "training_metadata.json") as f:
        assert json.load(f)["epoch"] == 2


# predict.py and evaluate_voc.py on binary (one-logit) and 1- or 4-channel models, and on
# folders with bad files. The models are saved here, not trained by the recipe.


def _save_pointwise_model(path, channels, num_outputs, seed):
    """A 1x1-conv `.keras` model; returns its NumPy logits function."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, channels))
    x = keras.layers.Rescaling(1 / 64.0, offset=-2.0)(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(num_outputs, 1, name="conv")(x))
    model.save(path)
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in model.get_layer("conv").weights)

    def logits(images):
        x = np.asarray(images, np.float64) / 64.0 - 2.0
        return np.einsum("...c,ck->...k", x, kernel[0, 0]) + bias

    return logits


def _random_pixels(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def test_predict_binary_grayscale_reports_bad_files_and_goes_on(env, tmp_path):
    checkpoint = tmp_path / "binary.keras"
    logits = _save_pointwise_model(checkpoint, channels=1, num_outputs=1, seed=3)
    folder = tmp_path / "images"
    folder.mkdir()
    grey = {"a": _random_pixels((12, 10), 0), "d": _random_pixels((9, 14), 1)}
    for name, pixels in grey.items():
        Image.fromarray(pixels, "L").save(folder / f"{name}.png")
    Image.fromarray(_random_pixels((8, 8, 3), 2), "RGB").save(folder / "b.png")  # colour
    (folder / "c.png").write_bytes(b"not a png")  # corrupt
    out = tmp_path / "out"
    result = run_recipe(
        env, "predict.py", folder, "--checkpoint", checkpoint, "--output-dir", out, check=False
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "VOC" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("predict.py: error:")]
    assert len(errors) == 3, result.stderr[-2000:]
    assert str(folder / "b.png") in errors[0] and "'RGB'" in errors[0]
    assert str(folder / "c.png") in errors[1] and "corrupt" in errors[1]
    assert "2 of 4 images failed" in errors[2]
    for name, pixels in grey.items():
        expected = (logits(pixels[..., None])[..., 0] > 0).astype(np.uint8)
        with Image.open(out / f"{name}_mask.png") as png:
            assert png.mode == "P"
            assert png.getpalette() == [0, 0, 0, 128, 0, 0]  # two colours
            np.testing.assert_array_equal(np.asarray(png), expected)
        with Image.open(out / f"{name}_overlay.png") as png:
            assert png.mode == "RGB"
            overlay = np.asarray(png, np.float64)
        colours = np.array([[0, 0, 0], [128, 0, 0]], np.float64)[expected]
        blend = 0.5 * np.repeat(pixels[..., None], 3, -1) + 0.5 * colours
        np.testing.assert_allclose(overlay, blend, atol=0.51)
    assert not (out / "b_mask.png").exists() and not (out / "c_mask.png").exists()


def test_predict_four_channel_images(env, tmp_path):
    checkpoint = tmp_path / "rgbn.keras"
    logits = _save_pointwise_model(checkpoint, channels=4, num_outputs=3, seed=4)
    pixels = _random_pixels((10, 11, 4), 5)
    Image.fromarray(pixels, "RGBA").save(tmp_path / "rgbn.png")
    Image.fromarray(pixels[..., :3], "RGB").save(tmp_path / "rgb.png")
    out = tmp_path / "out"
    result = run_recipe(
        env,
        "predict.py",
        tmp_path / "rgbn.png",
        tmp_path / "rgb.png",
        "--checkpoint",
        checkpoint,
        "--output-dir",
        out,
        "--crop-size",
        8,
        check=False,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "rgb.png: expected an image with 4 channels" in result.stderr, result.stderr
    assert "1 of 2 images failed" in result.stderr
    with Image.open(out / "rgbn_mask.png") as png:
        np.testing.assert_array_equal(np.asarray(png), np.argmax(logits(pixels), -1))
    with Image.open(out / "rgbn_overlay.png") as png:
        assert png.mode == "RGB" and png.size == (11, 10)
    # evaluate_voc.py's data is RGB: a 4-channel model is refused in one line.
    result = run_recipe(env, "evaluate_voc.py", checkpoint, "--max-images", 1, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "evaluate_voc.py: error: the model takes 4-channel images" in result.stderr


def test_evaluate_binary_model_scores_two_classes(env, tmp_path):
    checkpoint = tmp_path / "binary.keras"
    logits = _save_pointwise_model(checkpoint, channels=3, num_outputs=1, seed=6)
    results = tmp_path / "results.json"
    run_recipe(env, "evaluate_voc.py", checkpoint, "--max-images", 3, "--output-json", results)
    with open(results) as f:
        scores = json.load(f)
    assert len(scores["per_class_iou"]) == 2
    confusion = np.zeros((2, 2), np.int64)
    dataset = kseg.data.synthetic_dataset("val", num_classes=2, seed=0).take(3)
    for image, mask in dataset.as_numpy_iterator():
        pred = (logits(image)[..., 0] > 0).astype(np.int64)
        keep = mask != 255
        np.add.at(confusion, (mask[keep], pred[keep]), 1)
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    np.testing.assert_allclose(scores["mean_iou"], iou.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        scores["pixel_accuracy"], tp.sum() / confusion.sum(), rtol=1e-5, atol=1e-6
    )


def write_images(folder, count, size=32):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size + 3, 3)).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(folder / f"image{i}.png")
    return folder


# The encoder-decoder and transformer models on their compact networks: 20-60 s a run on a
# 2-core CPU (-m large); SegFormer's smoke run is in the default suite through
# tests/recipes/test_convert_huggingface.py (fine-tuning a converted checkpoint).
@pytest.mark.large
@pytest.mark.parametrize("model", ["segformer", "fpn", "linknet", "unetplusplus", "upernet"])
def test_smoke_run_of_the_encoder_decoder_models(env, tmp_path, model):
    logdir = tmp_path / "run"
    result = run_recipe(env, "train.py", "--smoke", "--model", model, "--logdir", logdir)
    present = [v for v in parse_iou_table(result.stdout).values() if v is not None]
    np.testing.assert_allclose(parse_miou(result.stdout), np.mean(present), atol=5e-4)
    assert (logdir / "best.keras").is_file()


# Full-size encoders take 1-2 minutes a run on a 2-core CPU (-m large); the default suite
# builds the recipe's models on named encoders in tests/recipes/test_datasets.py.
@pytest.mark.large
@pytest.mark.parametrize(
    "model, backbone",
    [("deeplabv3plus", "mobilenetv2"), ("deeplabv3plus", "xception65"), ("unet", "mobilenetv2")],
)
def test_smoke_run_on_a_named_encoder(env, tmp_path, model, backbone):
    logdir = tmp_path / "run"
    result = run_recipe(
        env, "train.py", "--smoke", "--model", model, "--backbone", backbone, "--logdir", logdir
    )
    assert f"backbone {backbone} (full size, compact heads)" in result.stdout, result.stdout
    table = parse_iou_table(result.stdout)
    present = [v for v in table.values() if v is not None]
    np.testing.assert_allclose(parse_miou(result.stdout), np.mean(present), atol=5e-4)
    layers = [layer["config"]["name"] for layer in read_model_config(logdir / "best.keras")["config"]["layers"]]
    assert backbone in layers, layers


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="the recipe's wiring of GINet's outputs is the same on every backend; "
    "tests/models/test_ginet.py trains GINet with its semantic context loss on each",
)
def test_ginet_on_synthetic_data_trains_with_aux_and_semantic_context_losses(env, tmp_path):
    logdir = tmp_path / "ginet"
    result = run_recipe(env, "train_voc.py", "--smoke", "--model", "ginet", "--logdir", logdir)
    assert "SYNTHETIC dataset" in result.stdout
    assert "semantic context loss" in result.stdout
    # No shipped embeddings for the synthetic classes: a learned table, by name not by count.
    assert "GINet: class embeddings 'learned'" in result.stdout
    table = parse_iou_table(result.stdout)
    assert len(table) == 6, table
    present = [v for v in table.values() if v is not None]
    np.testing.assert_allclose(parse_miou(result.stdout), np.mean(present), atol=5e-4)
    train = read_events(logdir / "train")
    for tag in ("epoch_loss", "epoch_main_loss", "epoch_aux_loss", "epoch_presence_loss"):
        assert tag in train, sorted(train)
    assert "epoch_main_mean_iou" in read_events(logdir / "validation")
    config = read_model_config(logdir / "best.keras")["config"]
    assert sorted(config["output_layers"]) == ["aux", "main", "presence"]
    assert config["dataset"]["class_names"] == list(SYNTHETIC_CLASSES)

    # predict.py names the classes with the names the checkpoint carries.
    images = write_images(tmp_path / "images", 1)
    out = run_recipe(
        env,
        "predict.py",
        images,
        "--checkpoint",
        logdir / "best.keras",
        "--output-dir",
        tmp_path / "out",
    )
    present = re.search(r"image0_overlay.png \((.*)\)", out.stdout).group(1).split(", ")
    assert set(present) <= set(SYNTHETIC_CLASSES), out.stdout
    assert "no dataset description" not in out.stdout


def save_model(path, num_classes, dataset=None):
    """A tiny per-pixel classifier saved as a recipe checkpoint (with or without a dataset)."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    logits = keras.layers.Conv2D(num_classes, 1, kernel_initializer="random_normal")(x)
    model = keras.Model(inputs, logits, name="tiny")
    if dataset is not None:
        model = kseg.models.with_dataset(model, dataset)
    model.save(path)
    return path


def test_predict_and_evaluate_read_the_class_names_the_model_carries(env, tmp_path):
    # A 6-class model that is not the synthetic set: its own names and colours are used.
    names = ["void", "circle", "square", "triangle", "star", "ring"]
    colors = [[0, 0, 0], [10, 20, 30], [40, 50, 60], [70, 80, 90], [1, 2, 3], [4, 5, 6]]
    checkpoint = save_model(
        tmp_path / "shapes.keras",
        6,
        {"name": "shapes", "class_names": names, "palette": colors, "ignore_index": 255},
    )
    results = tmp_path / "results.json"
    evaluation = run_recipe(
        env, "evaluate_voc.py", checkpoint, "--max-images", 2, "--output-json", results
    )
    assert re.search(r"^  circle +\d", evaluation.stdout, re.M), evaluation.stdout
    assert not re.search(r"^  red +\d", evaluation.stdout, re.M)  # not the synthetic names
    with open(results) as f:
        assert list(json.load(f)["per_class_iou"]) == names

    images = write_images(tmp_path / "images", 2)
    out = tmp_path / "out"
    prediction = run_recipe(
        env, "predict.py", images, "--checkpoint", checkpoint, "--output-dir", out
    )
    for line in prediction.stdout.splitlines():
        if "_overlay.png (" in line:
            present = line.rsplit("(", 1)[1].rstrip(")").split(", ")
            assert set(present) <= set(names), line
    with Image.open(out / "image0_mask.png") as png:
        assert png.getpalette()[: 3 * 6] == [v for c in colors for v in c]


def test_model_without_description_gets_generic_names_said_once(env, tmp_path):
    # 21 classes do not make a model PASCAL VOC: no VOC names are guessed.
    checkpoint = save_model(tmp_path / "plain.keras", NUM_CLASSES)
    images = write_images(tmp_path / "images", 2)
    result = run_recipe(
        env, "predict.py", images, "--checkpoint", checkpoint, "--output-dir", tmp_path / "out"
    )
    assert result.stdout.count("no dataset description") == 1, result.stdout
    assert "class_0 to class_20" in result.stdout
    overlays = [line for line in result.stdout.splitlines() if "_overlay.png (" in line]
    assert len(overlays) == 2, result.stdout
    for line in overlays:
        present = line.rsplit("(", 1)[1].rstrip(")").split(", ")
        assert all(re.fullmatch(r"class_\d+", name) for name in present), line


@pytest.mark.parametrize(
    "script, args, message",
    [
        (
            "train_voc.py",
            ["--model", "nosuchnet"],
            r"argument --model: invalid choice: 'nosuchnet'",
        ),
        ("train_voc.py", ["--data-dir", "/no/such/folder"], r"argument --data-dir: no such folder"),
        ("train_voc.py", ["--model", "unet", "--backbone", "vgg16"], r"argument --backbone"),
        ("train_voc.py", ["--model", "deeplabv3plus", "--aux-weight", "0.4"], r"--aux-weight"),
        ("train_voc.py", ["--epochs", "2", "--steps", "5"], r"argument --steps: not allowed"),
        ("train_voc.py", ["--resume"], r"argument --resume: needs --logdir"),
        ("evaluate_voc.py", ["/no/such.keras"], r"argument checkpoint: no such file"),
        ("predict.py", ["x.jpg"], r"the following arguments are required: --checkpoint"),
    ],
)
def test_bad_arguments_name_the_argument(env, script, args, message):
    result = run_recipe(env, script, *args, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert re.search(message, result.stderr), result.stderr[-2000:]


def test_missing_voc_folder_inside_data_dir(env, tmp_path):
    result = run_recipe(env, "train_voc.py", "--smoke", "--data-dir", tmp_path, check=False)
    assert result.returncode != 0
    assert "argument --data-dir" in result.stderr and "VOCdevkit" in result.stderr


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_checkpoint_is_named_not_reported_missing(env, tmp_path, damage):
    checkpoint = tmp_path / "best.keras"
    _save_pointwise_model(checkpoint, channels=3, num_outputs=2, seed=0)
    data = bytearray(checkpoint.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]  # a copy or a save cut short: no zip directory
    else:
        data[len(data) // 3] ^= 0xFF  # one damaged byte inside a member
    checkpoint.write_bytes(bytes(data))
    image = tmp_path / "a.png"
    Image.fromarray(_random_pixels((8, 8, 3), 0), "RGB").save(image)
    for script, args in (
        ("predict.py", [image, "--checkpoint", checkpoint, "--output-dir", tmp_path / "out"]),
        ("evaluate.py", [checkpoint]),
    ):
        result = run_recipe(env, script, *args, check=False)
        assert result.returncode != 0
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert f"{checkpoint} is not a valid .keras file (truncated or corrupt" in result.stderr
