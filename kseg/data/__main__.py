"""Command line: check a dataset folder and list every bad file.

    python -m kseg.data --check DIR --dataset voc|cityscapes|ade20k|folder [--split S ...]
        [--image-dir D --mask-dir D --list-file F --image-suffix S --mask-suffix S
         --mask-format auto|ids|palette|rgb --reduce-zero-label --num-classes N]

Each problem (unpaired, missing, unreadable or mismatched file, bad label
value or colour) is printed on its own line; the exit status is 1 when there
is any, 0 when the data is good.
"""

import argparse
import sys

from kseg.data._reader import MASK_FORMATS, report_problems

DATASETS = ("voc", "cityscapes", "ade20k", "folder")


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m kseg.data", description="Check a segmentation dataset folder."
    )
    parser.add_argument("--check", metavar="DIR", required=True, help="folder to check")
    parser.add_argument("--dataset", choices=DATASETS, required=True, help="layout of DIR")
    parser.add_argument(
        "--split",
        action="append",
        help="split(s) to check (voc: train/val/trainval/train_aug; cityscapes: train/val; "
        "ade20k: training/validation). Default: all of them",
    )
    folder = parser.add_argument_group("folder datasets (also read from DIR/dataset.json)")
    folder.add_argument("--image-dir", default="images")
    folder.add_argument("--mask-dir", default="masks")
    folder.add_argument("--list-file", default=None, help="'image mask' lines, relative to DIR")
    folder.add_argument(
        "--image-suffix", action="append", help="image file ending, repeatable. Default: .jpg"
    )
    folder.add_argument("--mask-suffix", default=".png")
    folder.add_argument("--mask-format", choices=MASK_FORMATS, default="auto")
    folder.add_argument("--reduce-zero-label", action="store_true")
    parser.add_argument(
        "--num-classes", type=int, default=None, help="class count (voc: 21; folder: see JSON)"
    )
    parser.add_argument("--ignore-index", type=int, default=255)
    return parser


def check(args):
    """Returns the `(path, message)` problems of the folder the parsed `args` describe."""
    if args.dataset != "folder":
        folder_only = {
            "--image-dir": args.image_dir != "images",
            "--mask-dir": args.mask_dir != "masks",
            "--list-file": args.list_file is not None,
            "--image-suffix": args.image_suffix is not None,
            "--mask-suffix": args.mask_suffix != ".png",
            "--mask-format": args.mask_format != "auto",
            "--reduce-zero-label": args.reduce_zero_label,
        }
        used = [flag for flag, given in folder_only.items() if given]
        if used:
            raise SystemExit(f"{', '.join(used)}: only for --dataset folder.")
    if args.dataset == "voc":
        from kseg.data.voc import VOC_SPLITS, check_voc

        _check_splits(args.split, VOC_SPLITS)
        return check_voc(
            args.check,
            args.split,
            num_classes=21 if args.num_classes is None else args.num_classes,
            ignore_index=args.ignore_index,
        )
    if args.num_classes is not None and args.dataset != "folder":
        raise SystemExit(f"--num-classes: {args.dataset} has a fixed class count.")
    if args.ignore_index != 255 and args.dataset != "folder":
        raise SystemExit(f"--ignore-index: {args.dataset} ignores 255.")
    if args.dataset == "cityscapes":
        from kseg.data.cityscapes import CITYSCAPES_SPLITS, check_cityscapes

        _check_splits(args.split, CITYSCAPES_SPLITS)
        return check_cityscapes(args.check, args.split)
    if args.dataset == "ade20k":
        from kseg.data.ade20k import ADE20K_SPLITS, check_ade20k

        _check_splits(args.split, ADE20K_SPLITS)
        return check_ade20k(args.check, args.split)
    from kseg.data.folder import check_folder

    if args.split:
        raise SystemExit("--split: a folder dataset has no splits (use --list-file).")
    suffix = ".jpg" if not args.image_suffix else tuple(args.image_suffix)
    return check_folder(
        args.check,
        image_dir=args.image_dir,
        mask_dir=args.mask_dir,
        list_file=args.list_file,
        image_suffix=suffix,
        mask_suffix=args.mask_suffix,
        mask_format=args.mask_format,
        reduce_zero_label=args.reduce_zero_label,
        num_classes=args.num_classes,
        ignore_index=args.ignore_index,
    )


def _check_splits(splits, allowed):
    bad = [s for s in splits or () if s not in allowed]
    if bad:
        raise SystemExit(f"--split: expected some of {allowed}. Received: {bad}")


def main(argv=None):
    """Runs the checker; returns the exit status (1 when any problem is found)."""
    args = _parser().parse_args(argv)
    problems = check(args)
    return report_problems(problems, args.check)


if __name__ == "__main__":
    sys.exit(main())
