"""Evaluates a checkpoint on a dataset's validation split with optional test-time augmentation.

    python recipes/evaluate.py runs/.../best.keras --dataset voc --data-dir ~/data
    python recipes/evaluate.py best.keras --dataset cityscapes --data-dir ~/cityscapes
    python recipes/evaluate.py best.keras --dataset ade20k --data-dir ~/ADEChallengeData2016 \\
        --scales 0.5 0.75 1.0 1.25 1.5 1.75 --flip          # multi-scale + flip test
    python recipes/evaluate.py best.keras --dataset folder --data-dir my/val
    python recipes/evaluate.py best.keras --data-dir ~/data --crf   # + DeepLab's dense CRF

Every image is scored at its own size: with `--crop-size` (S or H W) a window
of that size slides over the image (padded with the mean colour where it is
smaller), without it the model sees the whole image. The default window is
the dataset's training crop: 512 for VOC (a VOC image, at most 500 px, fits
one window) and ADE20K, 512 x 1024 for Cityscapes (the full 1024 x 2048
images, as in PSPNet's and mmsegmentation's sliding-window test); a folder
and the synthetic set are scored whole unless `--crop-size` is given.
`--scales` and `--flip` average the class probabilities of rescaled and
mirrored copies (`kseg.inference.predict_probabilities`). `--crf` then
refines each image's averaged probabilities with DeepLab's fully connected CRF
(`kseg.postprocess.dense_crf`, DeepLab-LargeFOV's VOC values) before the
argmax, as DeepLab v1/v2 do at test time. Prints the mean IoU, the pixel
accuracy and the IoU of every class, named by the class names the checkpoint
carries.

`--dataset` defaults to the dataset the checkpoint was trained on (the name
it carries) when `--data-dir` is given and that dataset is one of the
recipes' (PASCAL VOC for a checkpoint that names none), and to the synthetic
set without `--data-dir`. `--dataset folder` scores the images and masks of
`--val-dir` (or of `--data-dir`) with the layout options of train.py.

A binary model (one output channel, a sigmoid logit) is scored as two
classes, background 0 and foreground 1 (its class is 1 where the averaged
foreground probability is above 0.5), on masks of labels 0, 1 and 255 (VOC
layout or the synthetic set). The images are RGB, so the model must take
3-channel images.
"""

import argparse
import json
import os
import time

import _common
import _datasets

#: Default sliding window of the evaluation per dataset (with --data-dir): the training crop.
EVAL_CROPS = {"voc": (512, 512), "cityscapes": (512, 1024), "ade20k": (512, 512)}


def build_parser(prog="evaluate.py", voc_entry=False):
    """The command line; `voc_entry` (evaluate_voc.py) has no --dataset and no folder options."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate a .keras checkpoint of the training recipe (mean IoU per class).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("checkpoint", help=".keras file written by train.py or train_voc.py")
    if not voc_entry:
        parser.add_argument(
            "--dataset",
            default=None,
            choices=tuple(_datasets.DATASETS),
            help="default: the checkpoint's dataset with --data-dir, synthetic without",
        )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder holding VOCdevkit/VOC2012; without it: the synthetic validation set"
        if voc_entry
        else "the dataset's folder (as for train.py); without it: the synthetic validation set",
    )
    if voc_entry:
        parser.add_argument(
            "--split", default="val", choices=("train", "val", "trainval", "train_aug")
        )
    else:
        parser.add_argument(
            "--split",
            default="auto",
            help="auto: the dataset's validation split (val; ADE20K: validation)",
        )
    _common.add_inference_args(
        parser,
        "default: 512 with --data-dir, none (whole image) without"
        if voc_entry
        else "default: the dataset's training crop (VOC, ADE20K: 512; Cityscapes: 512 1024); "
        "none (whole image) for a folder and the synthetic set",
    )
    parser.add_argument(
        "--crf",
        action="store_true",
        help="refine each image's probabilities (after --scales and --flip, before the "
        "argmax) with DeepLab's fully connected CRF: kseg.postprocess.dense_crf with "
        "DeepLab-LargeFOV's VOC values (bilateral weight 4, xy std 121, rgb std 5; Gaussian "
        "weight 3, xy std 3; 10 mean-field iterations); tune them for other models through "
        "kseg.inference.evaluate(..., crf={...}). Costs seconds per VOC image on a CPU",
    )
    parser.add_argument(
        "--max-images", type=int, default=None, help="evaluate only the first N images"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic set")
    parser.add_argument("--output-json", default=None, help="also write the results here")
    if not voc_entry:
        _datasets.add_folder_args(parser)
    return parser


def parse_args(argv=None, prog="evaluate.py", voc_entry=False):
    """Parses and checks the command line (the dataset is chosen later, from the model)."""
    parser = build_parser(prog, voc_entry)
    args = parser.parse_args(argv)
    args.prog = prog
    if not os.path.isfile(args.checkpoint):
        parser.error(f"argument checkpoint: no such file: {args.checkpoint!r}")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        parser.error(f"argument --data-dir: no such folder: {args.data_dir!r}")
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"argument --max-images: must be >= 1, got {args.max_images}")
    _common.check_inference_args(parser, args)
    if voc_entry:
        args.dataset = "synthetic" if args.data_dir is None else "voc"
    elif args.dataset is not None:
        _datasets.check_data_dir(parser, args.dataset, args.data_dir)
        if args.dataset == "folder":
            _datasets.check_val_dir(parser, args.val_dir)
    args.parser = parser
    return args


def choose_dataset(args, model_dataset):
    """Resolves `args.dataset` and `args.split` once the checkpoint's dataset name is known."""
    parser = args.parser
    if args.dataset is None:
        if args.data_dir is None:
            args.dataset = "synthetic"
        elif model_dataset in _datasets.DATASETS and model_dataset != "synthetic":
            args.dataset = model_dataset
        else:
            args.dataset = "voc"
    if args.split == "auto":
        args.split = _datasets.split_names(args.dataset, "val")[0]
    names = set(_datasets.split_names(args.dataset, "train"))
    names |= set(_datasets.split_names(args.dataset, "val"))
    if args.split not in names:
        parser.error(
            f"argument --split: dataset {args.dataset!r} has the splits "
            f"{', '.join(sorted(names))}. Received: --split {args.split}"
        )
    if args.crop_size is None and args.data_dir is not None:
        args.crop_size = EVAL_CROPS.get(args.dataset)


def read_split(args, kdata, num_classes):
    """The dataset of `args.split`, and a line saying what it is."""
    entry = _datasets.DATASETS[args.dataset]
    if args.dataset == "synthetic":
        line = (
            "No --data-dir given: evaluating on kseg's SYNTHETIC validation set "
            "(100 images, 96 x 96), not on PASCAL VOC."
        )
        return kdata.synthetic_dataset("val", num_classes=num_classes, seed=args.seed), line
    if args.dataset == "folder":
        # The folder evaluated is --val-dir (else --data-dir), with its list file if any.
        if args.val_dir is None:
            args.val_dir = args.data_dir
            args.val_list_file = args.val_list_file or args.list_file
        dataset = entry["read"](kdata, args, "val", num_classes)
        return dataset, f"{entry['title']} {args.val_dir}."
    dataset = entry["read"](kdata, args, args.split, num_classes)
    root = kdata.find_voc_root(args.data_dir) if args.dataset == "voc" else args.data_dir
    return dataset, f"{entry['title']} '{args.split}' from {root}."


def main(argv=None, prog="evaluate.py", voc_entry=False):
    """Runs the evaluation; returns `{"mean_iou", "pixel_accuracy", ...}`.

    Args:
        argv: the arguments (default `sys.argv[1:]`).
        prog: the script name in messages.
        voc_entry: the command line of evaluate_voc.py: PASCAL VOC with --data-dir,
            the synthetic set without.
    """
    args = parse_args(argv, prog, voc_entry)
    _common.quiet_tensorflow()
    start = time.time()

    import keras

    import kseg
    import kseg.data as kdata
    import kseg.inference

    model = _common.load_checkpoint(args.prog, args.checkpoint)
    num_classes = _common.num_classes_of(model, args.output_key)
    description = _common.dataset_of(model, num_classes)
    choose_dataset(args, description.get("name"))
    title = _datasets.DATASETS[args.dataset]["title"]
    if args.dataset in ("synthetic", "voc"):
        title = "PASCAL VOC and of the synthetic set"
    channels_axis = 1 if keras.config.image_data_format() == "channels_first" else -1
    channels = model.inputs[0].shape[channels_axis]
    if channels not in (None, 3):
        raise SystemExit(
            f"{prog}: error: the model takes {channels}-channel images; the images of "
            f"{title} are RGB (3 channels)."
        )
    binary = num_classes == 1
    # A binary model's one logit scores two classes: background 0 and foreground 1.
    scored_classes = 2 if binary else num_classes
    class_names = description["class_names"]
    try:
        if args.dataset not in ("synthetic", "voc"):
            # These readers know their own classes: the model must predict as many.
            expected = _datasets.DATASETS[args.dataset]["describe"](kdata, args)
            count = len(expected["class_names"])
            if scored_classes != count:
                raise SystemExit(
                    f"{prog}: error: the model predicts {scored_classes} classes; "
                    f"--dataset {args.dataset} has {count}."
                )
        dataset, line = read_split(args, kdata, scored_classes)
    except FileNotFoundError as e:
        where = "" if args.dataset == "folder" else "argument --data-dir: "
        raise SystemExit(f"{prog}: error: {where}{e}") from None
    except ValueError as e:  # kseg.data.DataError and bad layout options
        raise SystemExit(f"{prog}: error: {e}") from None
    print(line, flush=True)
    trained_on = description.get("name")
    if trained_on not in (None, args.dataset) and args.dataset != "folder":
        print(f"Note: the model was trained on {trained_on!r}, not on {args.dataset!r}.")
    if args.max_images is not None:
        dataset = dataset.take(args.max_images)
    ignore_index = int(description.get("ignore_index", 255))
    dataset = kdata.eval_pipeline(dataset, batch_size=1, ignore_index=ignore_index)

    # kseg.inference.evaluate gives a binary model's metrics its 0/1 class map.
    miou = kseg.metrics.MeanIoU(scored_classes, ignore_index=ignore_index)
    accuracy = kseg.metrics.PixelAccuracy(scored_classes, ignore_index=ignore_index)
    tta = _common.inference_kwargs(args)
    kind = "binary, 1 sigmoid logit" if binary else f"{num_classes} classes"
    crf = " + dense CRF (DeepLab's VOC values)" if args.crf else ""
    print(f"Model {model.name} ({kind}) from {args.checkpoint}; inference {tta}{crf}.")
    results = kseg.inference.evaluate(
        model, dataset, [miou, accuracy], verbose=1, crf=args.crf, **tta
    )
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
                    "dataset": args.dataset,
                    "split": args.split,
                    "inference": tta,
                    "crf": args.crf,
                },
                f,
                indent=2,
            )
    return results


if __name__ == "__main__":
    main()
