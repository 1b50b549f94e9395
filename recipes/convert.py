"""Converts a torchvision, Hugging Face or smp checkpoint into a kseg `.keras` model.

    python recipes/convert.py --from torchvision --arch deeplabv3_resnet101 \\
        --weights deeplabv3_resnet101_coco-586e9e4e.pth --output deeplabv3_resnet101.keras
    python recipes/convert.py --from torchvision --arch fcn_resnet50 \\
        --weights fcn_resnet50_coco-1167a1af.pth --output fcn_resnet50.keras
    python recipes/convert.py --from torchvision --arch resnet50 \\
        --weights resnet50-11ad3fa6.pth --output resnet50_features.keras
    python recipes/convert.py --from huggingface \\
        --weights nvidia/segformer-b0-finetuned-ade-512-512 --output segformer_b0_ade.keras
    python recipes/convert.py --from huggingface --weights ./my-segformer --output mine.keras
    python recipes/convert.py --from smp --weights ./my-pspnet --output pspnet.keras

torchvision: the model has torchvision's layout, built from kseg's builders
(`kseg.convert.from_torchvision`), and takes RGB images in [0, 255]: it
normalises them with the ImageNet mean and std on [0, 1] inside, as
torchvision's checkpoints expect. torchvision's segmentation checkpoints were
trained on a subset of COCO with the 21 PASCAL VOC classes, so a model that
keeps their 21 classes carries the VOC class names and palette (`--dataset`);
`--num-classes N` keeps every weight but the classifiers' for fine-tuning.

Hugging Face: `--weights` is a model folder (`config.json` and
`model.safetensors` or `pytorch_model.bin`, as `save_pretrained` or
`hf download` write it) of a SegFormer (`SegformerForSemanticSegmentation`,
or the Mix Transformer encoder alone), or the name of a published one, which
is downloaded on first use (`pip install kseg[huggingface]`;
`kseg.convert.from_huggingface`). The model carries the checkpoint's class
names (`id2label`); with `--dataset auto` a checkpoint whose class names are
those of ADE20K, Cityscapes or VOC carries that dataset's palette too.

smp (segmentation_models.pytorch 0.6): `--weights` is the folder an smp
model's `save_pretrained` writes (`config.json` and `model.safetensors`) of a
`Unet`, `UnetPlusPlus`, `FPN`, `Linknet`, `PSPNet`, `DeepLabV3`,
`DeepLabV3Plus` or `UPerNet` on a ResNet-18/34/50/101 encoder
(`kseg.convert.from_smp`, which names what it does not convert). The model
takes RGB images in [0, 255] and normalises them inside with the ImageNet
mean and std on [0, 1], what smp's ResNet encoders expect; its logits equal
smp's at the sizes smp takes (see `from_smp`), and it takes any other size.
smp checkpoints carry no class names: `--dataset` gives them (`--dataset
auto` is `none`).

The converted file is reloaded (`safe_mode=True`) and checked against the
model in memory on one image before the recipe exits; `--skip-check` skips it.
Reading a `.pth` or `.bin` file needs PyTorch (the CPU wheel is enough, on any
Keras backend); a `.safetensors` file does not.
"""

import argparse
import os

import _common

ARCHS = (
    "resnet50",
    "resnet101",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "fcn_resnet50",
    "fcn_resnet101",
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="convert.py",
        description="Convert a torchvision, Hugging Face or segmentation_models.pytorch "
        "checkpoint into a kseg .keras model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=("torchvision", "huggingface", "smp"),
        help="checkpoint family",
    )
    parser.add_argument("--arch", choices=ARCHS, help="torchvision: the architecture (required)")
    parser.add_argument(
        "--weights",
        required=True,
        help="torchvision: the checkpoint, .pth (state dict) or .safetensors; huggingface: "
        "a model folder or a published model's name (downloaded on first use); smp: the "
        "folder an smp model's save_pretrained writes (config.json, model.safetensors)",
    )
    parser.add_argument("--output", required=True, help="the .keras file to write")
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="a new class count for fine-tuning (default: the checkpoint's)",
    )
    parser.add_argument(
        "--dataset",
        default="auto",
        choices=("auto", "voc", "ade20k", "cityscapes", "none"),
        help="the class names and palette the model carries; auto: torchvision: voc when the "
        "model keeps the checkpoint's 21 classes, none otherwise; huggingface: the dataset "
        "whose class names are the checkpoint's, else the checkpoint's names; smp: none",
    )
    parser.add_argument(
        "--skip-check", action="store_true", help="do not reload the file to check it"
    )
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.source in ("huggingface", "smp"):
        if args.arch is not None:
            family = "a Hugging Face" if args.source == "huggingface" else "an smp"
            parser.error(
                f"argument --arch: the architecture of {family} model is in its "
                f"config.json. Received: --arch {args.arch}"
            )
        if args.source == "smp" and not os.path.isdir(args.weights):
            parser.error(
                "argument --weights: expected the folder an smp model's save_pretrained "
                f"writes (config.json, model.safetensors). Received: {args.weights!r}"
            )
    elif args.arch is None:
        parser.error("argument --arch: required with --from torchvision")
    elif not os.path.isfile(args.weights):
        parser.error(f"argument --weights: no such file: {args.weights!r}")
    if not args.output.endswith(".keras"):
        parser.error(f"argument --output: expected a .keras file name. Received: {args.output!r}")
    if args.num_classes is not None and args.num_classes < 1:
        parser.error(f"argument --num-classes: must be >= 1. Received: {args.num_classes}")
    if (
        args.source == "torchvision"
        and args.arch.startswith("resnet")
        and (args.num_classes is not None or args.dataset == "voc")
    ):
        parser.error(
            f"argument --arch: {args.arch} is a feature extractor (no classes); drop "
            "--num-classes and --dataset"
        )
    return args


def main(argv=None):
    """Converts, saves, and (unless --skip-check) reloads and compares. Returns the model."""
    args = parse_args(argv)
    _common.quiet_tensorflow()
    import keras
    import numpy as np

    import kseg

    if args.source == "huggingface":
        try:
            model = kseg.convert.from_huggingface(args.weights, num_classes=args.num_classes)
        except (OSError, ValueError, ImportError) as error:
            raise SystemExit(f"convert.py: error: argument --weights: {error}") from None
        arch = getattr(model, "builder", None) or model.name
    elif args.source == "smp":
        try:
            model = kseg.convert.from_smp(args.weights, num_classes=args.num_classes)
        except (OSError, ValueError, ImportError) as error:
            raise SystemExit(f"convert.py: error: argument --weights: {error}") from None
        arch = model.builder
    else:
        model = kseg.convert.from_torchvision(args.arch, args.weights, num_classes=args.num_classes)
        arch = args.arch
    classes = _classes(model)
    dataset = args.dataset
    if dataset == "auto":
        dataset = _auto_dataset(args.source, model, classes)
    if dataset == "none":
        if getattr(model, "dataset", None) is not None and args.dataset == "none":
            model = kseg.models.with_dataset(model, None)
    elif dataset != "checkpoint":
        from kseg.data.palette import dataset_description

        description = dataset_description(dataset)
        if classes != len(description["class_names"]):
            raise SystemExit(
                f"convert.py: error: argument --dataset: {dataset} has "
                f"{len(description['class_names'])} classes, the model {classes}"
            )
        model = kseg.models.with_dataset(model, description)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    model.save(args.output)
    outputs = ", ".join(sorted(model.output)) if isinstance(model.output, dict) else "logits"
    names = {"voc": "VOC", "ade20k": "ADE20K", "cityscapes": "Cityscapes"}
    described = {
        "checkpoint": "the checkpoint's class names",
        **{key: f"{value} class names" for key, value in names.items()},
    }
    print(
        f"Wrote {args.output}: {arch} from {args.source}, {model.count_params():,} "
        f"parameters, outputs {outputs}"
        + (f", {classes} classes" if classes else "")
        + (f", {described[dataset]}" if dataset in described else "")
    )
    if not args.skip_check:
        reloaded = keras.saving.load_model(args.output, compile=False, safe_mode=True)
        image = np.random.default_rng(0).uniform(0, 255, (1, 65, 97, 3)).astype("float32")
        expected = keras.tree.flatten(model.predict(image, verbose=0))
        got = keras.tree.flatten(reloaded.predict(image, verbose=0))
        worst = max(float(np.max(np.abs(a - b))) for a, b in zip(expected, got))
        if worst > 0:
            raise SystemExit(f"convert.py: the reloaded model differs by {worst:.3g}")
        print("Reloaded with safe_mode=True: identical outputs.")
    return model


def _classes(model):
    """The class count of a segmentation model's logits; None for a feature extractor."""
    if isinstance(model.output, dict) and "main" not in model.output:
        return None  # a backbone's dict of features
    logits = model.output["main"] if isinstance(model.output, dict) else model.output
    return int(logits.shape[-1])


def _auto_dataset(source, model, classes):
    """`--dataset auto`: the dataset whose classes the model keeps (or "checkpoint" / "none")."""
    if source == "torchvision":
        return "voc" if classes == 21 else "none"
    if source == "smp":
        return "none"  # smp checkpoints carry no class names
    carried = getattr(model, "dataset", None)
    if carried is None:
        return "none"
    from kseg.data.palette import dataset_description

    # A published checkpoint names its dataset; another is matched by its class names
    # (compared without case and surrounding spaces: ADE20K's id2label has "bed ").
    wanted = [name.strip().lower() for name in carried["class_names"]]
    for name in ("ade20k", "cityscapes", "voc"):
        known = [n.strip().lower() for n in dataset_description(name)["class_names"]]
        if len(known) == len(wanted) and (carried.get("name") == name or known == wanted):
            return name
    return "checkpoint"


if __name__ == "__main__":
    main()
