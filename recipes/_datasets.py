"""The datasets of the recipes: one table of readers, descriptions, splits and validation.

Each entry of `DATASETS` says how to read a split (`read`), how to describe
the classes the trained model carries (`describe`), which splits train and
validate by default, and how validation runs (the training configuration of
its papers, used with `--data-dir`, is in `_configs.PAPER_CONFIGS`):

- `fit_val`: what the per-epoch validation inside `model.fit` sees. It needs
  batches of one size: "pad" pads every image to `--val-size` (exact, for
  VOC, whose sides are at most 500 px), "resize" resizes image and labels to
  `--val-size` (approximate: labels are resized with nearest neighbour; used
  for big or variously sized images, e.g. Cityscapes at half resolution). It
  is the figure that picks `best.keras`, not the reported one.
- `sliding`: the final evaluation (train.py and evaluate.py) scores every
  image at its own full size with a sliding window of the training crop, so
  that no pixel is resized or dropped (PSPNet, section 5.1; mmsegmentation's
  `mode="slide"`). Without it, the final evaluation scores the `fit_val`
  batches (VOC: padded full images, exact) as the recipe always did.

Everything heavy is imported inside the functions (`kdata` is `kseg.data`).
"""

import os


def _reader(kdata, name):
    """`kseg.data.<name>`, or a clear error when this kseg does not have that reader."""
    reader = getattr(kdata, name, None)
    if reader is None:
        raise SystemExit(f"error: this version of kseg has no kseg.data.{name}")
    return reader


def folder_layout(args):
    """The layout keyword arguments of `kseg.data.folder_dataset` from the folder options."""
    return {
        "image_dir": args.image_dir,
        "mask_dir": args.mask_dir,
        "image_suffix": args.image_suffix,
        "mask_suffix": args.mask_suffix,
        "mask_format": args.mask_format,
        "reduce_zero_label": args.reduce_zero_label,
        "num_classes": args.num_classes,
        "ignore_index": args.ignore_index,
    }


def _folder_split(args, split):
    """`(root, list_file)` of the folder dataset's "train" or "val" split."""
    if split == "train":
        return args.data_dir, args.list_file
    return (args.val_dir or args.data_dir), args.val_list_file


def _read_synthetic(kdata, args, split, num_classes, **kwargs):
    count, size = (16, 32) if args.smoke else (1000, 96)
    if split == "val":
        count = 4 if args.smoke else 100
    kwargs.setdefault("seed", args.seed)
    return kdata.synthetic_dataset(split, count, image_size=size, num_classes=num_classes, **kwargs)


def _read_voc(kdata, args, split, num_classes, **kwargs):
    return kdata.voc_dataset(args.data_dir, split, num_classes=num_classes, **kwargs)


def _read_cityscapes(kdata, args, split, num_classes, **kwargs):
    return _reader(kdata, "cityscapes_dataset")(args.data_dir, split, **kwargs)


def _read_ade20k(kdata, args, split, num_classes, **kwargs):
    return _reader(kdata, "ade20k_dataset")(args.data_dir, split, **kwargs)


def _read_folder(kdata, args, split, num_classes, **kwargs):
    root, list_file = _folder_split(args, split)
    return _reader(kdata, "folder_dataset")(
        root, list_file=list_file, **folder_layout(args), **kwargs
    )


def _describe_folder(kdata, args):
    root, list_file = _folder_split(args, "train")
    return _reader(kdata, "folder_description")(root, list_file=list_file, **folder_layout(args))


def _describe(name):
    def describe(kdata, args):
        from kseg.data.palette import dataset_description

        return dataset_description(name)

    return describe


def _voc_train_split(kdata, args):
    """train_aug when SegmentationClassAug exists, else train."""
    try:
        root = kdata.find_voc_root(args.data_dir)
    except FileNotFoundError:
        return "train"  # the reader then names what is missing
    return "train_aug" if os.path.isdir(os.path.join(root, "SegmentationClassAug")) else "train"


#: name -> entry. `train_splits` / `val_splits`: the accepted `--train-split` / `--val-split`
#: (the first is the default; a callable picks it from the arguments). `title`: for messages.
DATASETS = {
    "synthetic": {
        "title": "kseg's synthetic dataset",
        "read": _read_synthetic,
        "describe": _describe("synthetic"),
        "train_splits": ("train",),
        "val_splits": ("val",),
        "fit_val": ("none", None),
        "sliding": False,
        "needs_data_dir": False,
    },
    "voc": {
        "title": "PASCAL VOC 2012",
        "read": _read_voc,
        "describe": _describe("voc"),
        "train_splits": (_voc_train_split, "train", "train_aug", "trainval"),
        "val_splits": ("val", "train", "trainval"),
        "fit_val": ("pad", 512),  # VOC's sides are at most 500 px
        "sliding": False,
        "needs_data_dir": True,
    },
    "cityscapes": {
        "title": "Cityscapes",
        "read": _read_cityscapes,
        "describe": _describe("cityscapes"),
        "train_splits": ("train", "val"),
        "val_splits": ("val", "train"),  # test has no public labels
        "fit_val": ("resize", (512, 1024)),  # half of the 1024 x 2048 images
        "sliding": True,
        "needs_data_dir": True,
    },
    "ade20k": {
        "title": "ADE20K (SceneParsing, ADEChallengeData2016)",
        "read": _read_ade20k,
        "describe": _describe("ade20k"),
        "train_splits": ("training", "validation"),
        "val_splits": ("validation", "training"),
        "fit_val": ("resize", (512, 512)),  # the images differ in size and aspect
        "sliding": True,
        "needs_data_dir": True,
    },
    "folder": {
        "title": "an image/mask folder",
        "read": _read_folder,
        "describe": _describe_folder,
        "train_splits": ("train",),
        "val_splits": ("val",),
        "fit_val": ("resize", None),  # None: the training crop
        "sliding": True,
        "needs_data_dir": True,
    },
}


def split_names(name, kind):
    """The split names `--train-split` ("train") or `--val-split` ("val") accepts for `name`."""
    return [o for o in DATASETS[name][f"{kind}_splits"] if isinstance(o, str)]


def check_split(parser, name, kind, value):
    """`--train-split` ("train") or `--val-split` ("val") is "auto" or a split of dataset `name`."""
    names = split_names(name, kind)
    if value not in (None, "auto") and value not in names:
        parser.error(
            f"argument --{kind}-split: dataset {name!r} has the splits "
            f"auto, {', '.join(names)}. Received: --{kind}-split {value}"
        )


def resolve_split(name, args, kind, kdata):
    """The `--train-split` ("train") or `--val-split` ("val") of dataset `name`.

    "auto" becomes the dataset's default; any other value was checked by `check_split`.
    """
    value = getattr(args, f"{kind}_split")
    if value in (None, "auto"):
        first = DATASETS[name][f"{kind}_splits"][0]
        return first(kdata, args) if callable(first) else first
    return value


def add_folder_args(parser):
    """The layout options of `--dataset folder` (passed to `kseg.data.folder_dataset`)."""
    group = parser.add_argument_group(
        "folder dataset (--dataset folder)",
        "--data-dir holds IMAGE_DIR/.../<name>IMAGE_SUFFIX and MASK_DIR/.../<name>MASK_SUFFIX "
        "(paired by relative path and name; optionally dataset.json with the class names, "
        "colours and mask options), or a --list-file of pairs. The validation set is "
        "--val-dir (a second folder of the same layout) and/or --val-list-file. See "
        "kseg.data.folder_dataset.",
    )
    group.add_argument("--image-dir", default="images", help="image folder inside --data-dir")
    group.add_argument("--mask-dir", default="masks", help="mask folder inside --data-dir")
    group.add_argument(
        "--list-file",
        default=None,
        help="training pairs instead of the folders: 'image_path mask_path' lines, paths "
        "relative to --data-dir (the file relative to it or absolute)",
    )
    group.add_argument("--val-dir", default=None, help="folder of the validation set")
    group.add_argument(
        "--val-list-file",
        default=None,
        help="validation pairs, as --list-file (relative to --val-dir, else --data-dir)",
    )
    group.add_argument("--image-suffix", default=".jpg")
    group.add_argument("--mask-suffix", default=".png")
    group.add_argument(
        "--mask-format",
        default="auto",
        choices=("auto", "ids", "palette", "rgb"),
        help="ids: grayscale class ids; palette: P PNGs (VOC); rgb: colours listed in "
        "dataset.json; auto: ids or palette by the PNG mode",
    )
    group.add_argument(
        "--reduce-zero-label",
        action="store_true",
        help="label 0 is 'unlabelled': it becomes the ignore index and the others shift down",
    )
    group.add_argument(
        "--num-classes", type=int, default=None, help="default: from dataset.json or the masks"
    )
    group.add_argument("--ignore-index", type=int, default=255)


def check_data_dir(parser, dataset, data_dir):
    """`--data-dir` exists when given, and is given exactly when `dataset` reads files."""
    if data_dir is not None and not os.path.isdir(data_dir):
        parser.error(f"argument --data-dir: no such folder: {data_dir!r}")
    needs_dir = DATASETS[dataset]["needs_data_dir"]
    if needs_dir and data_dir is None:
        parser.error(f"argument --data-dir: --dataset {dataset} reads its files from it")
    if not needs_dir and data_dir is not None:
        parser.error(
            f"argument --data-dir: --dataset {dataset} is generated in memory and reads "
            f"no folder. Received: --data-dir {data_dir}"
        )


def check_folder_args(parser, args):
    """Checks the folder options (paths exist, a validation set is named)."""
    if args.dataset != "folder":
        return
    if args.val_dir is None and args.val_list_file is None:
        parser.error(
            "argument --val-dir: --dataset folder needs a validation set: pass --val-dir "
            "FOLDER (same layout as --data-dir) or --val-list-file FILE"
        )
    check_val_dir(parser, args.val_dir)
    if args.num_classes is not None and args.num_classes < 1:
        parser.error(f"argument --num-classes: must be >= 1, got {args.num_classes}")


def check_val_dir(parser, val_dir):
    """`--val-dir`, when given, is a folder."""
    if val_dir is not None and not os.path.isdir(val_dir):
        parser.error(f"argument --val-dir: no such folder: {val_dir!r}")


def size_pair(value):
    """`(height, width)` from an int, or a list of one or two ints (the command line)."""
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    value = [int(v) for v in value]
    if len(value) == 1:
        return (value[0], value[0])
    if len(value) == 2:
        return tuple(value)
    raise ValueError(f"expected one size S or two sizes H W, got {value}")
