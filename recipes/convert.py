"""Converts a torchvision checkpoint into a kseg `.keras` model for predict.py and evaluate.py.

    python recipes/convert.py --from torchvision --arch deeplabv3_resnet101 \\
        --weights deeplabv3_resnet101_coco-586e9e4e.pth --output deeplabv3_resnet101.keras
    python recipes/convert.py --from torchvision --arch fcn_resnet50 \\
        --weights fcn_resnet50_coco-1167a1af.pth --output fcn_resnet50.keras
    python recipes/convert.py --from torchvision --arch resnet50 \\
        --weights resnet50-11ad3fa6.pth --output resnet50_features.keras

The model has torchvision's layout, built from kseg's builders
(`kseg.convert.from_torchvision`), and takes RGB images in [0, 255]: it
normalises them with the ImageNet mean and std on [0, 1] inside, as
torchvision's checkpoints expect. torchvision's segmentation checkpoints were
trained on a subset of COCO with the 21 PASCAL VOC classes, so a model that
keeps their 21 classes carries the VOC class names and palette (`--dataset`);
`--num-classes N` keeps every weight but the classifiers' for fine-tuning.

The converted file is reloaded (`safe_mode=True`) and checked against the
model in memory on one image before the recipe exits; `--skip-check` skips it.
Reading a `.pth` file needs PyTorch (the CPU wheel is enough, on any Keras
backend); a `.safetensors` file does not.
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
        description="Convert a torchvision checkpoint into a kseg .keras model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--from", dest="source", required=True, choices=("torchvision",), help="checkpoint family"
    )
    parser.add_argument("--arch", required=True, choices=ARCHS)
    parser.add_argument(
        "--weights", required=True, help="the checkpoint: .pth (state dict) or .safetensors"
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
        choices=("auto", "voc", "none"),
        help="the class names and palette the model carries; auto: voc when the model keeps "
        "the checkpoint's 21 classes, none otherwise",
    )
    parser.add_argument(
        "--skip-check", action="store_true", help="do not reload the file to check it"
    )
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.path.isfile(args.weights):
        parser.error(f"argument --weights: no such file: {args.weights!r}")
    if not args.output.endswith(".keras"):
        parser.error(f"argument --output: expected a .keras file name. Received: {args.output!r}")
    if args.num_classes is not None and args.num_classes < 1:
        parser.error(f"argument --num-classes: must be >= 1. Received: {args.num_classes}")
    if args.arch.startswith("resnet") and (args.num_classes is not None or args.dataset == "voc"):
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

    model = kseg.convert.from_torchvision(args.arch, args.weights, num_classes=args.num_classes)
    classes = None if args.arch.startswith("resnet") else model.get_layer("classifier").filters
    dataset = args.dataset
    if dataset == "auto":
        dataset = "voc" if classes == 21 else "none"
    if dataset == "voc":
        if classes != 21:
            raise SystemExit(
                f"convert.py: error: argument --dataset: voc has 21 classes, the model {classes}"
            )
        from kseg.data.palette import dataset_description

        model = kseg.models.with_dataset(model, dataset_description("voc"))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    model.save(args.output)
    outputs = ", ".join(sorted(model.output)) if isinstance(model.output, dict) else "logits"
    print(
        f"Wrote {args.output}: {args.arch} from torchvision, {model.count_params():,} "
        f"parameters, outputs {outputs}"
        + (f", {classes} classes" if classes else "")
        + (", VOC class names" if dataset == "voc" else "")
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


if __name__ == "__main__":
    main()
