"""Evaluates a checkpoint on PASCAL VOC 2012 val (or the synthetic val set) with optional TTA.

    python recipes/evaluate_voc.py runs/deeplabv3plus-.../best.keras --data-dir ~/data
    python recipes/evaluate_voc.py best.keras --data-dir ~/data --crop-size 512 \\
        --scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip          # DeepLab's multi-scale + flip test

Every image is scored at its own size: with `--crop-size` a window of that
size slides over the image (padded with the mean colour where it is smaller;
a VOC image, at most 500 px, then fits one 512 window), without it the model
sees the whole image. `--scales` and `--flip` average the class probabilities
of rescaled and mirrored copies (`kseg.inference.predict_probabilities`).
Prints the mean IoU, the pixel accuracy and the IoU of every class.

A binary model (one output channel, a sigmoid logit) is scored as two
classes, background 0 and foreground 1 (its class is 1 where the averaged
foreground probability is above 0.5), on masks of labels 0, 1 and 255. The
images of VOC and of the synthetic set are RGB, so the model must take
3-channel images.
"""

import argparse
import json
import os
import time

import _common


def build_parser():
    parser = argparse.ArgumentParser(
        prog="evaluate_voc.py",
        description="Evaluate a .keras checkpoint of the training recipe (mean IoU per class).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("checkpoint", help=".keras file written by train_voc.py")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder holding VOCdevkit/VOC2012; without it: the synthetic validation set",
    )
    parser.add_argument("--split", default="val", choices=("train", "val", "trainval", "train_aug"))
    _common.add_inference_args(parser, "default: 512 with --data-dir, none (whole image) without")
    parser.add_argument(
        "--max-images", type=int, default=None, help="evaluate only the first N images"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic set")
    parser.add_argument("--output-json", default=None, help="also write the results here")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        parser.error(f"argument checkpoint: no such file: {args.checkpoint!r}")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        parser.error(f"argument --data-dir: no such folder: {args.data_dir!r}")
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"argument --max-images: must be >= 1, got {args.max_images}")
    _common.check_inference_args(parser, args)
    if args.crop_size is None and args.data_dir is not None:
        args.crop_size = 512
    return args


def main(argv=None):
    args = parse_args(argv)
    _common.quiet_tensorflow()
    start = time.time()

    import keras

    import kseg
    import kseg.data as kdata
    import kseg.inference

    model = _common.load_model(args.checkpoint)
    channels_axis = 1 if keras.config.image_data_format() == "channels_first" else -1
    channels = model.inputs[0].shape[channels_axis]
    if channels not in (None, 3):
        raise SystemExit(
            f"evaluate_voc.py: error: the model takes {channels}-channel images; the images of "
            "PASCAL VOC and of the synthetic set are RGB (3 channels)."
        )
    num_classes = _common.num_classes_of(model, args.output_key)
    binary = num_classes == 1
    # A binary model's one logit scores two classes: background 0 and foreground 1.
    scored_classes = 2 if binary else num_classes
    class_names = _common.dataset_of(model, num_classes)["class_names"]
    if args.data_dir is None:
        print(
            "No --data-dir given: evaluating on kseg's SYNTHETIC validation set "
            "(100 images, 96 x 96), not on PASCAL VOC.",
            flush=True,
        )
        dataset = kdata.synthetic_dataset("val", num_classes=scored_classes, seed=args.seed)
    else:
        try:
            dataset = kdata.voc_dataset(args.data_dir, args.split, num_classes=scored_classes)
        except FileNotFoundError as e:
            raise SystemExit(f"evaluate_voc.py: error: argument --data-dir: {e}") from None
        print(f"PASCAL VOC 2012 '{args.split}' from {kdata.find_voc_root(args.data_dir)}.")
    if args.max_images is not None:
        dataset = dataset.take(args.max_images)
    dataset = kdata.eval_pipeline(dataset, batch_size=1)

    # kseg.inference.evaluate gives a binary model's metrics its 0/1 class map.
    miou = kseg.metrics.MeanIoU(scored_classes)
    accuracy = kseg.metrics.PixelAccuracy(scored_classes)
    tta = _common.inference_kwargs(args)
    kind = "binary, 1 sigmoid logit" if binary else f"{num_classes} classes"
    print(f"Model {model.name} ({kind}) from {args.checkpoint}; inference {tta}.")
    results = kseg.inference.evaluate(model, dataset, [miou, accuracy], verbose=1, **tta)
    per_class = [float(v) for v in keras.ops.convert_to_numpy(miou.per_class_iou())]
    print()
    print(_common.format_iou_table(class_names, per_class))
    print()
    print(f"Pixel accuracy: {results['pixel_accuracy']:.4f}")
    print(f"Time: {time.time() - start:.1f} s")
    print(f"Mean IoU: {results['mean_iou']:.4f}")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(
                {
                    "mean_iou": results["mean_iou"],
                    "pixel_accuracy": results["pixel_accuracy"],
                    "per_class_iou": dict(zip(class_names, per_class)),
                    "checkpoint": args.checkpoint,
                    "inference": tta,
                },
                f,
                indent=2,
            )
    return results


if __name__ == "__main__":
    main()
