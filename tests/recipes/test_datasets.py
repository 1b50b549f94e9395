"""train.py, evaluate.py and predict.py on every dataset of the recipes' registry.

The recipes run in this process (their `main(argv)`; a subprocess would pay
the imports again) on fake folders written by `kseg.data.write_fake_*`, in
`--smoke` mode. The resolved configurations are checked against the values
of the papers and of mmsegmentation, written out here with their source.

The datasets are read by tf.data whatever the backend, and the synthetic and VOC
runs take the recipes through training, evaluation (sliding window, scales,
flip) and prediction on every backend; the Cityscapes, ADE20K and folder runs,
which differ from them only in the reader, run in the TensorFlow session.
"""

import json
import os

import _common  # recipes/_common.py (tests/recipes/__init__.py puts recipes/ on sys.path)
import evaluate
import evaluate_voc
import keras
import numpy as np
import predict
import pytest
import train
from PIL import Image

import kseg.data
from kseg.data.palette import dataset_description
from tests.helpers import BACKEND, batch_norms

# --- resolved configurations (parse_args only) --------------------------------------------

# Values written out from their sources; SGD is always momentum 0.9 with poly decay.
EXPECTED = {
    # DeepLab v3+ (Chen et al. 2018), section 4 and PSPNet (Zhao et al. 2017), section 5.1:
    # crop 512 (513), batch 16, lr 0.01, weight decay 1e-4, 30k iterations, scales 0.5-2.
    "voc": ((512, 512), 16, 30000, 0.01, 1e-4, (512, 512)),
    # mmsegmentation configs/_base_/datasets/cityscapes.py (crop 512 x 1024, RandomResize
    # ratio 0.5-2.0), schedules/schedule_80k.py (SGD lr 0.01, weight_decay 0.0005,
    # max_iters 80000), 4xb2 = batch 8. Per-epoch validation at half resolution.
    "cityscapes": ((512, 1024), 8, 80000, 0.01, 5e-4, (512, 1024)),
    # mmsegmentation configs/_base_/datasets/ade20k.py (crop 512 x 512),
    # schedules/schedule_160k.py (lr 0.01, weight_decay 0.0005, 160000 iterations), 4xb4 = 16.
    "ade20k": ((512, 512), 16, 160000, 0.01, 5e-4, (512, 512)),
    # The recipe's own folder default (train.py docstring): mmsegmentation's 20k schedule.
    "folder": ((512, 512), 8, 20000, 0.01, 5e-4, (512, 512)),
}


def folder_args(tmp_path):
    (tmp_path / "val").mkdir(exist_ok=True)
    return ["--val-dir", str(tmp_path / "val")]


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_paper_configuration_of_each_dataset(dataset, tmp_path):
    extra = folder_args(tmp_path) if dataset == "folder" else []
    argv = ["--dataset", dataset, "--data-dir", str(tmp_path), "--model", "pspnet", *extra]
    args = train.parse_args(argv)
    crop, batch, steps, lr, weight_decay, val_size = EXPECTED[dataset]
    assert args.config == dataset
    assert args.crop_size == crop and args.batch_size == batch
    assert args.steps == steps and args.epochs is None
    assert args.optimizer == "sgd" and args.lr == lr and args.weight_decay == weight_decay
    assert args.scale_range == (0.5, 2.0)
    # PSPNet's backbone (ResNet-101, ImageNet weights) and aux loss weight 0.4 (section 4.4).
    assert args.backbone == "resnet101" and args.backbone_weights == "imagenet"
    assert args.aux_weight == 0.4
    assert args.val_size == val_size
    assert not args.compact
    # Poly power 0.9 (DeepLab, TPAMI 2017, section 4), no warm-up, one rate, decay on all.
    assert (args.poly_power, args.warmup_steps, args.warmup_mode) == (0.9, 0, "multiply")
    assert args.lr_multipliers == {} and args.decay_exclude == ()
    assert getattr(args, "eval_stride", None) is None


def test_demo_and_voc_entry_point_configurations(tmp_path):
    # train_voc.py: the synthetic demo without --data-dir, VOC with it (as before train.py).
    demo = train.parse_args([], prog="train_voc.py", voc_entry=True)
    assert (demo.dataset, demo.config, demo.crop_size, demo.batch_size) == (
        "synthetic",
        "demo",
        (96, 96),
        8,
    )
    assert (demo.epochs, demo.optimizer, demo.lr, demo.backbone) == (1, "adam", 3e-3, "compact")
    voc = train.parse_args(["--data-dir", str(tmp_path)], prog="train_voc.py", voc_entry=True)
    assert (voc.dataset, voc.config, voc.crop_size, voc.steps) == ("voc", "voc", (512, 512), 30000)
    assert train.parse_args([]).dataset == "synthetic"
    # FCN's paper backbone is VGG-16.
    fcn = train.parse_args(["--dataset", "ade20k", "--data-dir", str(tmp_path), "--model", "fcn8s"])
    assert fcn.backbone == "vgg16" and fcn.crop_size == (512, 512)
    # U-Net: the paper's network (compact in the demo) unless an encoder is named.
    unet = train.parse_args(["--model", "unet"])
    assert unet.backbone == "none" and unet.compact and unet.backbone_weights is None
    paper = train.parse_args(
        ["--dataset", "ade20k", "--data-dir", str(tmp_path), "--model", "unet"]
    )
    assert paper.backbone == "none" and not paper.compact and paper.backbone_weights is None
    encoder = train.parse_args(["--model", "unet", "--backbone", "xception65", "--smoke"])
    assert encoder.backbone == "xception65" and encoder.compact


def test_named_encoders_keep_their_size_with_compact_heads():
    """Smoke and demo runs on a named encoder: the encoder as named, the head shrunk."""
    unet = _common.build_model("unet", 3, backbone="mobilenetv2", compact=_common.SMOKE_RESNET)
    assert unet.get_layer("mobilenetv2").count_params() > 1_000_000
    widths = [unet.get_layer(f"decoder_block{i}_conv1").conv.filters for i in range(1, 6)]
    assert widths == [16, 8, 4, 4, 4]
    deeplab = _common.build_model(
        "deeplabv3plus", 3, backbone="mobilenetv2", compact=_common.SMOKE_RESNET
    )
    assert deeplab.get_layer("mobilenetv2").count_params() > 1_000_000
    assert deeplab.get_layer("aspp").filters == 16


@pytest.mark.parametrize(
    "model_name, backbone",
    [("deeplabv3plus", "mobilenetv2"), ("unet", "mobilenetv2"), ("pspnet", "compact")],
)
def test_every_batch_norm_has_the_momentum_of_torch(model_name, backbone):
    """The recipes pass no momentum: the builders' 0.9 reaches the encoder's BatchNorm too."""
    model = _common.build_model(model_name, 3, backbone=backbone, compact=_common.SMOKE_RESNET)
    norms = batch_norms(model)
    assert norms and {layer.momentum for layer in norms} == {0.9}


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "adamw"])
def test_compiled_model_has_its_optimizer_variables_before_fit(optimizer, tmp_path):
    # Built in `fit` instead, on TensorFlow they are created inside the first trace of the
    # train step, and tf.function then traces the whole step a second time.
    args = train.parse_args(["--smoke", "--optimizer", optimizer, "--logdir", str(tmp_path)])
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    train.compile_model(model, args, 3, 10, False, keras, kseg, 255)
    assert model.optimizer.built
    # Adam's two moments, SGD's momentum: the kernel's slots exist already.
    slots = [v for v in model.optimizer.variables if "kernel" in v.path]
    assert len(slots) == (1 if optimizer == "sgd" else 2), [v.path for v in slots]


# SegFormer as mmsegmentation 1.x trains it, written out from configs/segformer/
# segformer_mit-b0_8xb2-160k_ade20k-512x512.py and segformer_mit-b0_8xb1-160k_cityscapes-
# 1024x1024.py: AdamW lr 0.00006, weight_decay 0.01; custom_keys 'head': lr_mult 10 (kseg:
# decode_head, classifier), 'norm': decay_mult 0; LinearLR(start_factor=1e-6, end=1500) then
# PolyLR(power=1.0, eta_min=0, begin=1500, end=160000); mit_b0 pretrained on ImageNet.
SEGFORMER = {
    "optimizer": "adamw",
    "lr": 6e-5,
    "weight_decay": 0.01,
    "lr_multipliers": {"decode_head": 10.0, "classifier": 10.0},
    "decay_exclude": ("norm",),
    "warmup_steps": 1500,
    "warmup_start_factor": 1e-6,
    "warmup_mode": "sequential",
    "poly_power": 1.0,
    "backbone": "mit_b0",
    "backbone_weights": "imagenet",
}
#: crop, batch (GPUs x per GPU), iterations, sliding-window stride of the final evaluation.
SEGFORMER_DATA = {
    "ade20k": ((512, 512), 8 * 2, 160000, None),
    "cityscapes": ((1024, 1024), 8 * 1, 160000, (768, 768)),
    "voc": EXPECTED["voc"][:3] + (None,),  # the dataset's own crop, batch and length
}


@pytest.mark.parametrize("dataset", sorted(SEGFORMER_DATA))
def test_segformer_paper_configuration(dataset):
    import _configs

    preset = _configs.paper_config(dataset, "segformer")
    crop, batch, steps, stride = SEGFORMER_DATA[dataset]
    assert {key: preset[key] for key in SEGFORMER} == SEGFORMER
    assert (tuple(preset["crop_size"]), preset["batch_size"], preset["steps"]) == (
        crop,
        batch,
        steps,
    )
    assert preset.get("eval_stride") == stride
    # The other models keep their dataset's configuration.
    assert _configs.paper_config(dataset, "pspnet") == {
        **_configs.PAPER_CONFIGS[dataset],
        "backbone": "resnet101",
    }


def _named_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="decode_head_conv")(inputs)
    x = keras.layers.BatchNormalization(name="decode_head_norm")(x)
    return keras.Model(inputs, keras.layers.Conv2D(3, 1, name="classifier")(x))


def test_model_configuration_reaches_the_compiled_optimizer(monkeypatch, tmp_path):
    """A model of `_configs.MODEL_CONFIGS` (SegFormer's, given here to PSPNet) on Cityscapes."""
    import _configs

    training = {k: v for k, v in _configs.SEGFORMER_TRAINING.items() if k != "backbone"}
    monkeypatch.setitem(_configs.MODEL_CONFIGS, "pspnet", (training, _configs.SEGFORMER_DATA))
    argv = ["--dataset", "cityscapes", "--data-dir", str(tmp_path), "--model", "pspnet"]
    args = train.parse_args([*argv, "--logdir", str(tmp_path / "run")])
    assert {key: getattr(args, key) for key in SEGFORMER if key != "backbone"} == {
        k: v for k, v in SEGFORMER.items() if k != "backbone"
    }
    assert args.backbone == "resnet101" and args.eval_stride == (768, 768)
    assert args.crop_size == (1024, 1024) and args.steps == 160000
    # Another crop: kseg's default stride (two thirds of it), not mmseg's for 1024.
    other = train.parse_args([*argv, "--crop-size", "512", "--decay-exclude"])
    assert getattr(other, "eval_stride", None) is None and other.decay_exclude == ()

    model = _named_model()
    train.compile_model(model, args, 3, 160000, False, keras, kseg, 255)
    optimizer = model.optimizer
    assert isinstance(optimizer, kseg.training.AdamW) and optimizer.built
    assert optimizer.weight_decay == 0.01 and optimizer.epsilon == 1e-8
    assert optimizer.lr_multipliers == {"decode_head": 10.0, "classifier": 10.0}
    assert optimizer.decay_exclude == ("norm",)
    schedule = optimizer.get_config()["learning_rate"]["config"]
    expected = dict(initial_learning_rate=6e-5, decay_steps=160000, power=1.0, warmup_steps=1500)
    expected.update(warmup_start_factor=1e-6, warmup_mode="sequential", end_learning_rate=0.0)
    assert {key: schedule[key] for key in expected} == expected


def test_lr_multipliers_and_decay_exclusions_from_the_command_line(tmp_path):
    argv = ["--smoke", "--logdir", str(tmp_path), "--lr-multipliers", "classifier=10", "conv=0.5"]
    argv += ["--decay-exclude", "norm", "--warmup-steps", "5", "--warmup-mode", "sequential"]
    sgd = train.parse_args([*argv, "--optimizer", "sgd", "--weight-decay", "1e-4"])
    assert sgd.lr_multipliers == {"classifier": 10.0, "conv": 0.5}
    assert sgd.decay_exclude == ("norm",)
    model = _named_model()
    train.compile_model(model, sgd, 3, 3, False, keras, kseg, 255)
    assert isinstance(model.optimizer, kseg.training.SGD) and model.optimizer.l2 == 1e-4
    assert model.optimizer.lr_multipliers == {"classifier": 10.0, "conv": 0.5}
    # Shorter than the warm-up: the sequential warm-up keeps one step for the decay.
    assert model.optimizer.get_config()["learning_rate"]["config"]["warmup_steps"] == 2

    typo = train.parse_args([*argv, "--optimizer", "adamw", "--lr-multipliers", "decoder=10"])
    with pytest.raises(SystemExit, match=r"--lr-multipliers.*matching no variable: \['decoder'\]"):
        train.compile_model(_named_model(), typo, 3, 10, False, keras, kseg, 255)


@pytest.mark.parametrize(
    "argv, crop",
    [(["--crop-size", "769"], (769, 769)), (["--crop-size", "256", "512"], (256, 512))],
)
def test_crop_size_square_or_height_width(argv, crop, tmp_path):
    args = train.parse_args(["--dataset", "cityscapes", "--data-dir", str(tmp_path), *argv])
    assert args.crop_size == crop
    assert args.val_size == (512, 1024)  # Cityscapes' own, not the crop


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "cityscapes"], "argument --data-dir: --dataset cityscapes reads"),
        (["--dataset", "synthetic", "--data-dir", "."], "argument --data-dir: --dataset synth"),
        (["--crop-size", "1", "2", "3"], "argument --crop-size: expected S or H W, got 3"),
        (["--crop-size", "0"], r"argument --crop-size: must be >= 1, got \[0\]"),
        (
            ["--dataset", "ade20k", "--data-dir", ".", "--train-split", "train"],
            "argument --train-split: dataset 'ade20k' has the splits auto, training, valid",
        ),
        (["--dataset", "folder", "--data-dir", "."], "argument --val-dir: --dataset folder needs"),
        (
            ["--dataset", "ade20k", "--data-dir", ".", "--backbone", "resnet50_v1c"],
            "argument --backbone-weights: resnet50_v1c has no ImageNet download",
        ),
        (["--backbone", "resnet50_v2"], "argument --backbone: model 'deeplabv3plus' takes one of"),
        (
            ["--dataset", "ade20k", "--data-dir", ".", "--backbone", "xception65"],
            "argument --backbone-weights: xception65 has no ImageNet download",
        ),
        (["--model", "unet", "--backbone", "vgg19x"], "argument --backbone: model 'unet' takes"),
        (
            ["--dataset", "folder", "--data-dir", ".", "--val-dir", "/no/such"],
            "argument --val-dir: no such folder: '/no/such'",
        ),
        (["--lr-multipliers", "head"], "argument --lr-multipliers: expected KEY=MULT .* 'head'"),
        (["--lr-multipliers", "head=-1"], "argument --lr-multipliers: expected KEY=MULT"),
        (
            ["--optimizer", "adam", "--decay-exclude", "norm"],
            "argument --decay-exclude: --optimizer adam .* takes no per-variable",
        ),
        (["--warmup-start-factor", "2"], r"argument --warmup-start-factor: must be in \[0, 1\]"),
        (["--poly-power", "-1"], "argument --poly-power: must be >= 0"),
    ],
)
def test_bad_train_arguments_name_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(argv)
    assert exit_info.value.code == 2
    import re

    assert re.search(message, capsys.readouterr().err)


# --- smoke runs on fake folders ---------------------------------------------------------------


def _val_samples(dataset, data_dir, count=2):
    """The first validation samples as the reader gives them (the reference of the scores)."""
    if dataset == "synthetic":
        ds = kseg.data.synthetic_dataset("val", num_classes=6, seed=0)
    elif dataset == "voc":
        ds = kseg.data.voc_dataset(data_dir, "val")
    elif dataset == "cityscapes":
        ds = kseg.data.cityscapes_dataset(data_dir, "val")
    elif dataset == "ade20k":
        ds = kseg.data.ade20k_dataset(data_dir, "validation")
    else:
        ds = kseg.data.folder_dataset(data_dir)
    return list(ds.take(count).as_numpy_iterator())


def _confusion(pairs, num_classes):
    """NumPy confusion matrix of `(truth, prediction)` label maps; 255 is not scored."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for truth, pred in pairs:
        keep = truth != 255
        np.add.at(confusion, (truth[keep], pred[keep]), 1)
    return confusion


def _scores(confusion):
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return (tp[union > 0] / union[union > 0]).mean(), tp.sum() / confusion.sum()


def run_smoke(dataset, data_dir, tmp_path, capsys, train_argv=(), crop_args=()):
    """train.py --smoke, then evaluate.py and predict.py on its checkpoint; checks all three."""
    logdir = tmp_path / "run"
    argv = ["--dataset", dataset, "--smoke", "--logdir", str(logdir), *train_argv]
    if dataset != "synthetic":
        argv += ["--data-dir", str(data_dir)]
    train.main(argv)
    out = capsys.readouterr().out
    assert f"Dataset '{dataset}'" in out or dataset == "folder", out[-3000:]
    with open(logdir / "args.json") as f:
        saved = json.load(f)
    assert saved["dataset"] == dataset and saved["smoke"] is True
    checkpoint = logdir / "best.keras"
    model = keras.saving.load_model(checkpoint, compile=False)
    description = model.dataset
    class_names = description["class_names"]
    num_classes = len(class_names)

    # evaluate.py picks the dataset the checkpoint carries (no --dataset given).
    results = tmp_path / "results.json"
    eval_argv = [str(checkpoint), "--max-images", "2", "--output-json", str(results)]
    if dataset != "synthetic":
        eval_argv += ["--data-dir", str(data_dir)]
    if dataset == "folder":
        eval_argv += ["--dataset", "folder", *train_argv]
    evaluate.main([*eval_argv, *crop_args])
    eval_out = capsys.readouterr().out
    with open(results) as f:
        scores = json.load(f)
    assert scores["dataset"] == dataset
    assert list(scores["per_class_iou"]) == class_names

    # predict.py on the same images (saved losslessly), scored here in NumPy.
    samples = _val_samples(dataset, data_dir if dataset != "folder" else _val_dir(train_argv))
    images = tmp_path / "images"
    images.mkdir()
    for i, (image, _) in enumerate(samples):
        assert np.array_equal(image, np.round(image))
        Image.fromarray(image.astype(np.uint8), "RGB").save(images / f"val{i}.png")
    predictions = tmp_path / "predictions"
    predict.main(
        [str(images), "--checkpoint", str(checkpoint), "--output-dir", str(predictions), *crop_args]
    )
    predict_out = capsys.readouterr().out
    assert "no dataset description" not in predict_out
    pairs = []
    for i, (_, mask) in enumerate(samples):
        with Image.open(predictions / f"val{i}_mask.png") as png:
            assert png.getpalette()[:6] == [v for c in description["palette"][:2] for v in c]
            pred = np.asarray(png, np.int64)
        pairs.append((mask, pred))
        line = next(x for x in predict_out.splitlines() if f"val{i}_overlay.png (" in x)
        present = line.rsplit("(", 1)[1].rstrip(")").split(", ")
        assert set(present) <= set(class_names), line
    miou, accuracy = _scores(_confusion(pairs, num_classes))
    np.testing.assert_allclose(scores["mean_iou"], miou, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores["pixel_accuracy"], accuracy, rtol=1e-5, atol=1e-6)
    return out, eval_out, saved


def _val_dir(train_argv):
    return train_argv[train_argv.index("--val-dir") + 1]


# The readers are tf.data whatever the Keras backend, so a reader's run is the same on every
# backend: it runs in the TensorFlow session. The synthetic run covers the recipes on each
# backend, and tests/inference/ test-time augmentation (windows, scales, flips).
READER_RUN = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="a reader's run (tf.data on every backend); the synthetic run covers the backend",
)


def test_synthetic_smoke_train_evaluate_predict(tmp_path, capsys):
    out, eval_out, saved = run_smoke("synthetic", None, tmp_path, capsys)
    assert "Configuration (smoke)" in out and "SYNTHETIC dataset" in out
    assert saved["crop_size"] == [32, 32]
    assert "SYNTHETIC validation set" in eval_out


@READER_RUN
def test_voc_smoke_train_evaluate_predict(tmp_path, capsys):
    voc = kseg.data.write_fake_voc(tmp_path / "data", num_train=4, num_val=2)
    # With test-time augmentation: sliding window, two scales and the flip.
    tta = ["--crop-size", "32", "--scales", "0.75", "1.0", "--flip"]
    out, eval_out, saved = run_smoke("voc", tmp_path / "data", tmp_path, capsys, crop_args=tta)
    assert "PASCAL VOC 2012 from" in out and "'train' (4 images)" in out
    assert "PASCAL VOC 2012 'val'" in eval_out
    assert dataset_description("voc")["class_names"][20] in eval_out
    assert os.path.isdir(voc)


def test_evaluate_voc_entry_point_keeps_its_splits(capsys, tmp_path):
    with pytest.raises(SystemExit):
        evaluate_voc.main([str(tmp_path / "none.keras")])
    assert "argument checkpoint: no such file" in capsys.readouterr().err


@READER_RUN
def test_cityscapes_smoke_scores_full_images_with_a_sliding_window(tmp_path, capsys):
    # 48 x 96 images: larger than the 32 x 64 smoke crop, so 2 x 2 windows slide over each.
    kseg.data.write_fake_cityscapes(tmp_path / "data", size=(48, 96))
    crop = ["--crop-size", "32", "64"]
    out, eval_out, saved = run_smoke(
        "cityscapes", tmp_path / "data", tmp_path, capsys, crop_args=crop
    )
    assert "Cityscapes from" in out and "'train' (4 images)" in out
    assert saved["crop_size"] == [32, 64] and saved["val_size"] == [512, 1024]
    assert "full validation images with a sliding window of 32 x 64" in out
    # train.py's final figure is evaluate.py's on the same full images and windows.
    final = float(out.split("Validation mIoU:")[1].split()[0])
    evaluated = float(eval_out.split("Mean IoU:")[1].split()[0])
    assert final == evaluated
    assert "Cityscapes 'val'" in eval_out and "(512, 1024)" not in eval_out
    assert "'crop_size': (32, 64)" in eval_out


@READER_RUN
def test_ade20k_smoke_train_evaluate_predict(tmp_path, capsys):
    kseg.data.write_fake_ade20k(tmp_path / "data")
    out, eval_out, _ = run_smoke(
        "ade20k", tmp_path / "data", tmp_path, capsys, crop_args=["--crop-size", "32"]
    )
    assert "'training' (3 images)" in out and "Dataset 'ade20k': 150 classes" in out
    assert "ADE20K (SceneParsing, ADEChallengeData2016) 'validation'" in eval_out


@READER_RUN
def test_folder_smoke_train_evaluate_predict(tmp_path, capsys):
    fake = kseg.data.write_fake_folder(tmp_path / "train", num_samples=4, description=True)
    kseg.data.write_fake_folder(tmp_path / "val", num_samples=2, description=True, seed=1)
    out, eval_out, saved = run_smoke(
        "folder",
        tmp_path / "train",
        tmp_path,
        capsys,
        train_argv=["--val-dir", str(tmp_path / "val")],
    )
    assert "an image/mask folder from" in out and "(4 images)" in out
    assert saved["val_dir"] == str(tmp_path / "val")
    for name in fake["class_names"]:
        assert name in eval_out  # the per-class table names the folder's classes
