"""Trains a kseg segmentation model on synthetic data, PASCAL VOC, Cityscapes, ADE20K or a folder.

    python recipes/train.py                                   # compact demo, synthetic data
    python recipes/train.py --dataset voc --data-dir ~/data   # PASCAL VOC 2012
    python recipes/train.py --dataset cityscapes --data-dir ~/cityscapes --model pspnet
    python recipes/train.py --dataset ade20k --data-dir ~/ADEChallengeData2016
    python recipes/train.py --dataset folder --data-dir my/train --val-dir my/val
    python recipes/train.py --dataset cityscapes --data-dir ~/cityscapes --smoke  # seconds
    tensorboard --logdir runs                                 # watch it

`recipes/train_voc.py` is this recipe with the dataset chosen by `--data-dir`
(PASCAL VOC with it, synthetic data without).

Without `--data-dir` (`--dataset synthetic`, the default) the model trains on
kseg's synthetic dataset (6 classes of textured shapes, 96 x 96, generated in
memory) in the compact demo configuration: DeepLabV3+ on a small ResNet (one
bottleneck per stage, width 16) with narrow heads. It runs on a 2-core CPU in
a few minutes on every backend and reaches a validation mean IoU above 0.8
(README, "Results of the demo run").

With `--data-dir` the defaults become the dataset's configuration from its
papers and mmsegmentation (`_configs.PAPER_CONFIGS`, where each value is
cited): the paper's backbone (ResNet-101, or VGG-16 for FCN, SegNet and
DeepLab v1) with ImageNet weights, SGD with momentum 0.9 and poly decay, and

- voc: 512 x 512 crops of the SBD-augmented training set (`train_aug`, when
  `SegmentationClassAug` is present), batch 16, lr 0.01, weight decay 1e-4,
  30k iterations (DeepLab v3+, section 4; PSPNet, section 5.1);
- cityscapes: 512 x 1024 crops of `train` (fine annotations), batch 8, lr
  0.01, weight decay 5e-4, 80k iterations (mmsegmentation's 80k schedule);
- ade20k: 512 x 512 crops of `training`, batch 16, lr 0.01, weight decay 5e-4,
  160k iterations (mmsegmentation's 160k schedule);
- folder: 512 x 512 crops, batch 8, lr 0.01, weight decay 5e-4, 20k iterations.

SegFormer (`--model segformer`) trains as its paper and mmsegmentation do
(`_configs.SEGFORMER_TRAINING`): MiT-B0 with ImageNet weights, torch's AdamW
(`kseg.training.AdamW`) with lr 6e-5 and weight decay 0.01, 10x the rate on
the decoder and classifier (`--lr-multipliers decode_head=10 classifier=10`),
no decay on the norms (`--decay-exclude norm`), a linear warm-up over 1500
steps from 1e-6 of the rate, then linear decay to 0 (`--warmup-mode
sequential`, `--poly-power 1`); ADE20K 512 x 512 crops in batches of 16,
Cityscapes 1024 x 1024 in batches of 8 (final sliding window of stride 768),
160k iterations each; the other datasets keep their crops, batch and length.

With SGD, weight decay is L2 added to the gradient before momentum, as in Caffe and
torch (`kseg.training.SGD`); crops are taken from images rescaled by a random
factor in [0.5, 2]; the auxiliary loss weight is 0.4. Every default can be
overridden (`--crop-size S` or `--crop-size H W`); the resolved configuration,
dataset included, is printed at the start and saved as `<logdir>/args.json`.

Validation. The per-epoch validation inside `model.fit` needs batches of one
size: VOC images are padded to `--val-size` (512, exact); Cityscapes images are
resized to `--val-size` (512 x 1024, half resolution), ADE20K and folder
images to `--val-size` (default: the training crop) - an approximate figure
(labels resized with nearest neighbour) that only picks `best.keras`. The
final evaluation after training scores every Cityscapes, ADE20K and folder
validation image at its full size (Cityscapes: 1024 x 2048) with a sliding
window of the training crop (two thirds stride), exactly as
`recipes/evaluate.py` does; VOC and the synthetic set are scored on the
padded full images.

Outputs in `--logdir` (default `runs/<model>-<date>-<time>`): TensorBoard logs
(loss, mean IoU, pixel accuracy, learning rate, per-class IoU, prediction
images), `best.keras` (the model with the best validation mean IoU; it carries
the dataset's class names, palette and ignore index), `best.json` (its score)
and `backup/` (the model and optimizer state, saved every `--save-every`
training steps and at the end of every epoch, for `--resume`). Every file that
`--resume` reads is written to a temporary name and moved into place, so a run
killed during a save keeps the previous one.
"""

import argparse
import json
import os
import sys
import time

import _common
import _configs
import _datasets


def build_parser(prog="train.py", voc_entry=False):
    """The command line; `voc_entry` (train_voc.py) has no --dataset and no folder options."""
    if voc_entry:
        description = (
            "Train a segmentation model on PASCAL VOC 2012 (--data-dir) or, without "
            "--data-dir, on kseg's synthetic dataset in a compact demo configuration."
        )
    else:
        description = (
            "Train a segmentation model on kseg's synthetic dataset (compact demo), PASCAL "
            "VOC 2012, Cityscapes, ADE20K or a folder of images and masks."
        )
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    if not voc_entry:
        parser.add_argument(
            "--dataset",
            default="synthetic",
            choices=tuple(_datasets.DATASETS),
            help="synthetic needs no --data-dir; the others read it",
        )
    parser.add_argument("--model", default="deeplabv3plus", choices=_common.model_names())
    parser.add_argument(
        "--backbone",
        default=None,
        help="compact (a small ResNet), resnet50 or resnet101 (keras.applications' layout), "
        "resnet50_v1.5 / resnet101_v1.5 (torchvision's) or resnet50_v1c / resnet101_v1c "
        "(mmseg's deep stem), resnet152, xception65 (DeepLab v3+'s aligned Xception-65) or a "
        "keras.applications encoder (mobilenetv2, efficientnetb0, convnexttiny, ...) for the "
        "ResNet models; the same encoders or none (the paper's U-Net) for unet; vgg16 for "
        "fcn*/segnet/deeplabv1. Default: compact without --data-dir (the paper's U-Net, "
        "compact, for unet), the paper's backbone with it",
    )
    parser.add_argument(
        "--backbone-weights",
        default=None,
        help="'imagenet', a weights file (keras.applications .h5 for resnet50/101 and vgg16; "
        "a torchvision or timm .pth / .safetensors for the _v1.5 and _v1c layouts), or 'none'. "
        "Default: none without --data-dir, imagenet with it",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="FILE",
        help="start from the model in this .keras file (written by convert.py, e.g. a "
        "Hugging Face SegFormer, or by a run): its architecture and every weight; a "
        "classifier for another class count than the data's is replaced (fine-tuning). "
        "--model comes from the file; --backbone, --output-stride and --backbone-weights "
        "do not apply",
    )
    parser.add_argument(
        "--output-stride",
        type=int,
        default=None,
        choices=(8, 16, 32),
        help="default: the model's (16 for DeepLab v3/v3+, 8 for the others)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder holding VOCdevkit/VOC2012; without it: the synthetic dataset"
        if voc_entry
        else "the dataset's folder (VOC: holding VOCdevkit/VOC2012; Cityscapes: holding "
        "leftImg8bit and gtFine; ADE20K: ADEChallengeData2016; folder: see below)",
    )
    parser.add_argument(
        "--train-split",
        default="auto",
        help="auto: the dataset's training split (VOC: train_aug when SegmentationClassAug "
        "exists, else train; Cityscapes: train; ADE20K: training)",
    )
    parser.add_argument(
        "--val-split",
        default="auto",
        help="auto: the dataset's validation split (val; ADE20K: validation)",
    )
    parser.add_argument(
        "--crop-size",
        type=int,
        nargs="+",
        default=None,
        metavar="S",
        help="training crop: S (square) or H W",
    )
    parser.add_argument(
        "--val-size",
        type=int,
        nargs="+",
        default=None,
        metavar="S",
        help="S or H W: the per-epoch validation images inside fit are padded (VOC: 512, "
        "covers VOC's 500 px) or resized (Cityscapes: 512 1024; ADE20K and folder: the "
        "training crop) to this size",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="the global batch of one step, split evenly across the devices of --distribute",
    )
    parser.add_argument(
        "--distribute",
        default="auto",
        choices=("auto", "none", "local", "multihost"),
        help="auto: every local accelerator when there is more than one (several hosts "
        "when TF_CONFIG or KERAS_DISTRIBUTION_JOB_ADDRESSES is set; torch: the processes "
        "torchrun started), else one device; none: one device; local: every local device, "
        "CPUs included; multihost: several hosts (JAX: keras.distribution.initialize; "
        "TensorFlow: TF_CONFIG). torch: local and multihost train one process per device, "
        "started by torchrun (torchrun --nproc_per_node=N recipes/train.py ...)",
    )
    parser.add_argument(
        "--sync-bn",
        action="store_true",
        help="TensorFlow and torch: BatchNorm statistics of the global batch, all-reduced "
        "across the replicas (kseg.training.synchronize_batch_norm); JAX computes them so "
        "already",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, default=None, help="passes over the training set")
    length.add_argument(
        "--steps", type=int, default=None, help="training steps (instead of --epochs)"
    )
    parser.add_argument(
        "--optimizer",
        default=None,
        choices=("sgd", "adam", "adamw"),
        help="sgd: kseg.training.SGD, momentum 0.9; adam: keras.optimizers.Adam (AdamW with "
        "--weight-decay); adamw: kseg.training.AdamW (torch's AdamW). Default: the "
        "configuration's (SGD for the papers' CNNs, adamw for segformer)",
    )
    parser.add_argument("--lr", type=float, default=None, help="initial learning rate (poly decay)")
    parser.add_argument(
        "--poly-power", type=float, default=None, help="power of the poly decay (default 0.9)"
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=None, help="linear warm-up steps (default 0)"
    )
    parser.add_argument(
        "--warmup-start-factor",
        type=float,
        default=None,
        help="fraction of the rate at the first warm-up step (default 0.1)",
    )
    parser.add_argument(
        "--warmup-mode",
        default=None,
        choices=("multiply", "sequential"),
        help="multiply: the warm-up scales the poly value (mmcv); sequential: warm-up, then "
        "poly decay from its end (mmengine's LinearLR + PolyLR). Default: multiply",
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="sgd: L2 added to the gradient before momentum (Caffe / torch); adam: Keras' "
        "AdamW's; adamw: torch's AdamW's (decoupled, times each variable's rate)",
    )
    parser.add_argument(
        "--lr-multipliers",
        nargs="*",
        default=None,
        metavar="KEY=MULT",
        help="sgd, adamw: the learning rate of the variables whose path contains KEY is MULT "
        "times the rate (the longest matching KEY wins), e.g. decode_head=10; no value: "
        "none. Default: the configuration's (segformer: decode_head=10 classifier=10)",
    )
    parser.add_argument(
        "--decay-exclude",
        nargs="*",
        default=None,
        metavar="KEY",
        help="sgd, adamw: no weight decay on the variables whose path contains a KEY; no "
        "value: none. Default: the configuration's (segformer: norm)",
    )
    parser.add_argument(
        "--aux-weight",
        type=float,
        default=None,
        help="loss weight of the auxiliary head (models that have one); 0 removes the "
        "head. Default: 0.4 (PSPNet) for those models",
    )
    parser.add_argument(
        "--sc-weight",
        type=float,
        default=_common.SC_LOSS_WEIGHT,
        help="GINet: weight of the semantic context loss; 0 turns it off",
    )
    parser.add_argument(
        "--mixed-precision",
        nargs="?",
        const="auto",
        default="off",
        choices=("off", "auto", "float16", "bfloat16"),
        help="mixed precision; the bare flag picks float16 on a GPU, bfloat16 on a CPU",
    )
    parser.add_argument(
        "--jit-compile",
        default="auto",
        choices=("auto", "true", "false"),
        help="auto: the choice measured fastest for the backend and device (JAX: true; "
        "TensorFlow on CPU: false; PyTorch: false)",
    )
    parser.add_argument(
        "--logdir", default=None, help="run folder; default runs/<model>-<date>-<time>"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --logdir from its last save (every --save-every steps "
        "and each epoch end), at that training step; its saved arguments are the "
        "defaults (e.g. pass a larger --epochs to train longer)",
    )
    parser.add_argument(
        "--save-every",
        type=int,
        default=None,
        metavar="N",
        help="save the training state for --resume every N training steps, besides the end "
        "of every epoch; 0: only at epoch ends. Default: 500 with --data-dir, 50 for the "
        "demo, 1 with --smoke",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few steps of a tiny model on tiny images: checks the whole recipe in seconds",
    )
    if not voc_entry:
        _datasets.add_folder_args(parser)
    return parser


def parse_args(argv=None, prog="train.py", voc_entry=False):
    """Parses and checks the command line; with --resume, the saved arguments are the defaults.

    Every check of the arguments is made here, before any data or model is built:
    also those that need the devices (`--distribute` and a `--batch-size` that
    must split across them).

    Args:
        argv: the arguments (default `sys.argv[1:]`).
        prog: the script name in messages.
        voc_entry: the command line of train_voc.py: no --dataset; the dataset is
            PASCAL VOC with --data-dir and the synthetic set without.

    Returns:
        The `argparse.Namespace` with every default resolved (`config` names the
        configuration: "smoke", "demo" or the dataset's; `plan` is the
        `kseg.training.DistributionPlan`).
    """
    parser = build_parser(prog, voc_entry)
    args = parser.parse_args(argv)
    if args.resume:
        parser.set_defaults(**_saved_args(parser, args.logdir, argv))
        args = parser.parse_args(argv)
    elif args.logdir is not None and os.path.isdir(os.path.join(args.logdir, "backup")):
        parser.error(
            f"argument --logdir: {args.logdir} holds an earlier run; pass --resume to "
            "continue it, or choose another --logdir"
        )
    if voc_entry:
        args.dataset = "synthetic" if args.data_dir is None else "voc"
        for name, value in _folder_defaults().items():
            setattr(args, name, value)
    _check_values(parser, args)
    _datasets.check_folder_args(parser, args)
    _check_init_from(parser, args, argv)
    resolve_defaults(args, parser)
    args.prog = prog
    _check_devices(args)
    return args


def _saved_args(parser, logdir, argv):
    """The arguments saved by the run in `logdir` (--resume), less those given again."""
    if logdir is None:
        parser.error("argument --resume: needs --logdir, the folder of the run to continue")
    saved_path = os.path.join(logdir, "args.json")
    if not os.path.isfile(saved_path):
        parser.error(
            f"argument --resume: {saved_path} not found; --logdir must be the folder of "
            "an earlier run of this recipe"
        )
    with open(saved_path) as f:
        saved = json.load(f)
    saved = {k: v for k, v in saved.items() if k not in ("resume", "logdir")}
    if "epochs" in _given(argv) or "steps" in _given(argv):
        saved.pop("epochs", None)
        saved.pop("steps", None)
    return saved


def _check_values(parser, args):
    """The data folder, the splits, the sizes and the numbers of the command line."""
    _datasets.check_data_dir(parser, args.dataset, args.data_dir)
    for kind in ("train", "val"):
        _datasets.check_split(parser, args.dataset, kind, getattr(args, f"{kind}_split"))
    for name in ("crop_size", "val_size"):
        value = getattr(args, name)
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, list) and len(value) not in (1, 2):
            parser.error(f"argument {flag}: expected S or H W, got {len(value)} values {value}")
        if value is not None:
            setattr(args, name, _datasets.size_pair(value))
            if min(getattr(args, name)) < 1:
                parser.error(f"argument {flag}: must be >= 1, got {value}")
    minimum = {"save_every": 0, "batch_size": 1, "epochs": 1, "steps": 1}
    names = ("lr", "weight_decay", "aux_weight", "sc_weight", "poly_power", "warmup_steps")
    minimum.update(dict.fromkeys(names, 0))
    for name, least in minimum.items():
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f"argument --{name.replace('_', '-')}: must be >= {least}, got {value}")
    if args.warmup_start_factor is not None and not 0 <= args.warmup_start_factor <= 1:
        parser.error(
            f"argument --warmup-start-factor: must be in [0, 1], got {args.warmup_start_factor}"
        )
    if isinstance(args.lr_multipliers, list):  # the command line's KEY=MULT (a dict on --resume)
        args.lr_multipliers = _multipliers(parser, args.lr_multipliers)


def _multipliers(parser, items):
    """`{KEY: MULT}` of --lr-multipliers' `KEY=MULT` items."""
    multipliers = {}
    for item in items:
        key, _, value = item.rpartition("=")
        try:
            multiplier = float(value)
        except ValueError:
            multiplier = None
        if not key or multiplier is None or multiplier < 0:
            parser.error(
                f"argument --lr-multipliers: expected KEY=MULT with a number MULT >= 0, "
                f"got {item!r}"
            )
        multipliers[key] = multiplier
    return multipliers


def _check_init_from(parser, args, argv):
    """--init-from: the file's model becomes --model; the options that build one are refused."""
    args.init_arguments = None
    if args.init_from is None:
        return
    try:
        builder, arguments = _common.builder_of_file(args.init_from)
    except (OSError, ValueError) as error:
        parser.error(f"argument --init-from: {error}")
    name = builder.lower() if isinstance(builder, str) else None
    if name not in _common.model_names():
        parser.error(
            f"argument --init-from: {args.init_from} holds a model of the builder {builder!r}, "
            f"not one of the recipe's models ({', '.join(_common.model_names())})"
        )
    given = _given(argv)
    if "model" in given and args.model != name:
        parser.error(
            f"argument --model: {args.init_from} holds a {name} model. Received: --model "
            f"{args.model}"
        )
    building = sorted(given & {"backbone", "output_stride", "backbone_weights"})
    if building and not args.resume:
        flags = ", ".join("--" + key.replace("_", "-") for key in building)
        parser.error(
            f"argument --init-from: the model and its weights come from {args.init_from}; "
            f"drop {flags}"
        )
    if args.aux_weight and args.aux_weight > 0 and not arguments.get("aux_head"):
        parser.error(
            f"argument --aux-weight: the model in {args.init_from} has no auxiliary head. "
            f"Received: --aux-weight {args.aux_weight}"
        )
    args.model = name
    args.init_arguments = arguments


def _check_devices(args):
    """Plans the devices (`args.plan`); refuses a --distribute or --batch-size that they
    cannot run. Before anything touches the devices (TensorFlow's strategies need that).

    On torch under torchrun this joins the processes (`torch.distributed`); only
    process 0 prints and writes the run's files from here on (`plan.is_chief`).
    """
    _common.quiet_tensorflow()
    import kseg.training

    try:
        args.plan = kseg.training.plan_distribution(args.distribute)
        args.plan.per_replica_batch(args.batch_size)
    except ValueError as e:
        raise SystemExit(f"{args.prog}: error: argument --distribute: {e}") from None
    global _PRINTS
    _PRINTS = args.plan.is_chief


def _folder_defaults():
    """The folder options' defaults (train_voc.py has no such options)."""
    parser = argparse.ArgumentParser()
    _datasets.add_folder_args(parser)
    return vars(parser.parse_args([]))


def _given(argv):
    """Destinations of the options written on the command line."""
    argv = sys.argv[1:] if argv is None else argv
    return {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}


def resolve_defaults(args, parser):
    """Fills the None defaults from the demo, smoke or the dataset's paper configuration."""
    preset, args.config = _configs.preset(args)
    for key in ("backbone", "crop_size", "batch_size", "optimizer", "lr", "weight_decay"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    for key, default in _configs.OPTIMIZER_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, default))
    args.decay_exclude = tuple(args.decay_exclude)
    if args.optimizer == "adam" and (args.lr_multipliers or args.decay_exclude):
        given = "--lr-multipliers" if args.lr_multipliers else "--decay-exclude"
        parser.error(
            f"argument {given}: --optimizer adam (Keras' Adam) takes no per-variable rates or "
            "decay; use --optimizer adamw or sgd, or pass --lr-multipliers and "
            f"--decay-exclude with no value. Received: --lr-multipliers {args.lr_multipliers} "
            f"--decay-exclude {list(args.decay_exclude)}"
        )
    args.crop_size = tuple(args.crop_size)
    # mmseg's sliding-window stride where a configuration gives one for its crop, else
    # kseg.inference's default (two thirds of the crop).
    if getattr(args, "eval_stride", None) is None and "eval_stride" in preset:
        if args.crop_size == tuple(preset["crop_size"]):
            args.eval_stride = tuple(preset["eval_stride"])
    if args.epochs is None and args.steps is None:
        if "epochs" in preset:
            args.epochs = preset["epochs"]
        else:
            args.steps = preset["steps"]
    args.scale_range = tuple(preset["scale_range"])
    if args.save_every is None:
        args.save_every = preset["save_every"]
    if args.backbone_weights is None:
        args.backbone_weights = preset["backbone_weights"]
    elif args.backbone_weights.lower() == "none":
        args.backbone_weights = None
    if args.val_size is None:
        size = _datasets.DATASETS[args.dataset]["fit_val"][1]
        args.val_size = args.crop_size if size is None else _datasets.size_pair(size)

    if args.init_from is not None:
        _resolve_init_from(args)
        return
    choices = _common.backbone_choices(args.model)
    if not choices:
        if args.backbone not in (None, "compact"):
            parser.error(
                f"argument --backbone: model {args.model!r} has no backbone. "
                f"Received: --backbone {args.backbone}"
            )
        args.backbone = None
    elif args.backbone == "compact" and "compact" not in choices:
        args.backbone = choices[0]  # VGG models: VGG-16 with compact heads; U-Net: the paper's
    elif args.backbone not in choices:
        parser.error(
            f"argument --backbone: model {args.model!r} takes one of {', '.join(choices)}. "
            f"Received: --backbone {args.backbone}"
        )
    no_download = {
        "xception65": "timm xception65 checkpoint (model.safetensors of timm/xception65.ra3_in1k)"
    }
    no_download.update(
        (name, "timm resnet50c / mmseg resnet50_v1c checkpoint")
        for name in choices
        if name.endswith("_v1c")
    )
    if args.backbone_weights == "imagenet" and args.backbone in no_download:
        parser.error(
            f"argument --backbone-weights: {args.backbone} has no ImageNet download; pass the "
            f"path of a {no_download[args.backbone]}, or 'none'. "
            f"Received: --backbone-weights {args.backbone_weights}"
        )
    if args.backbone_weights is not None and args.backbone in (None, "compact", "none"):
        args.backbone_weights = None  # nothing pretrained to load into a compact network
    args.compact = args.config in ("smoke", "demo") or args.backbone == "compact"
    if args.output_stride is not None and _common.backbone_kind(args.model) != "dilated":
        parser.error(
            f"argument --output-stride: model {args.model!r} has a fixed output stride. "
            f"Received: --output-stride {args.output_stride}"
        )

    if args.aux_weight is None:
        args.aux_weight = 0.4 if _common.has_aux_head(args.model) else 0.0
    elif args.aux_weight > 0 and not _common.has_aux_head(args.model):
        parser.error(
            f"argument --aux-weight: model {args.model!r} has no auxiliary head. "
            f"Received: --aux-weight {args.aux_weight}"
        )
    _default_logdir(args)


def _resolve_init_from(args):
    """The defaults of a run that starts from --init-from's model."""
    arguments = args.init_arguments
    backbone = arguments.get("backbone")
    args.backbone = backbone if isinstance(backbone, str) else None
    args.backbone_weights = None
    args.output_stride = arguments.get("output_stride")
    args.compact = False
    if args.aux_weight is None:
        args.aux_weight = 0.4 if arguments.get("aux_head") else 0.0
    _default_logdir(args)


def _default_logdir(args):
    if args.logdir is None:
        args.logdir = os.path.join("runs", f"{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")


def bn_statistics(args, plan):
    """How BatchNorm computes its batch statistics in this run, for the log."""
    if plan.num_replicas == 1:
        return "of the batch"
    if plan.kind == "data_parallel":  # JAX: the step sees the whole sharded batch
        return "of the global batch"
    if args.sync_bn:
        return "of the global batch (--sync-bn)"
    return f"per device ({args.batch_size // plan.num_replicas} images; --sync-bn for global)"


def compact_note(args):
    """How the configuration shrinks the network, for the model line of the log."""
    if not args.compact:
        return ""
    if args.backbone in ("compact", "none"):
        return " (compact)"
    return " (full size, compact heads)"


# False in the processes of a torch.distributed run other than process 0.
_PRINTS = True


def log(message=""):
    if _PRINTS:
        print(message, flush=True)


def _size_text(size):
    return f"{size[0]} x {size[1]}"


def make_data(args):
    """Reads the dataset of `args` and builds its pipelines.

    Returns:
        A dict: `train_ds` (repeated, augmented batches), `steps_per_epoch`,
        `val_ds` (the per-epoch validation batches of `fit`), `fit_val_ds` (this
        process's share of them: each torch.distributed process validates on its
        own), `val_steps`,
        `eval_ds` (what the final evaluation scores: full images one by one
        for the sliding-window datasets, else `val_ds`), `eval_steps`,
        `sliding` (whether the final evaluation slides windows of the
        training crop) and `dataset` (the description the trained model
        carries: name, class names, palette, ignore index).
    """
    import kseg.data as kdata

    entry = _datasets.DATASETS[args.dataset]
    try:
        dataset = entry["describe"](kdata, args)
        num_classes = len(dataset["class_names"])
        train_split = _datasets.resolve_split(args.dataset, args, "train", kdata)
        val_split = _datasets.resolve_split(args.dataset, args, "val", kdata)
        start = time.time()
        train = entry["read"](kdata, args, train_split, num_classes, shuffle=True, seed=args.seed)
        val = entry["read"](kdata, args, val_split, num_classes)
    except FileNotFoundError as e:
        where = "" if args.dataset == "folder" else "argument --data-dir: "
        raise SystemExit(f"{args.prog}: error: {where}{e}") from None
    except ValueError as e:  # kseg.data.DataError and bad layout options
        raise SystemExit(f"{args.prog}: error: {e}") from None
    num_train = int(train.cardinality())
    if num_train < 0:
        raise SystemExit(
            f"{args.prog}: error: the {args.dataset} reader gave a dataset of unknown length"
        )
    if args.dataset == "synthetic":
        size = 32 if args.smoke else 96
        num_val = int(val.cardinality())
        log(
            "No --data-dir given: training on kseg's SYNTHETIC dataset (textured shapes of "
            f"{num_classes - 1} classes on a noisy background, {size} x {size} px, "
            f"{num_train} training and {num_val} validation images, generated in memory), "
            "not on PASCAL VOC."
        )
        log(f"Synthetic data generated in {time.time() - start:.1f} s.")
    else:
        root = kdata.find_voc_root(args.data_dir) if args.dataset == "voc" else args.data_dir
        log(
            f"{entry['title']} from {root}: '{train_split}' ({num_train} images) for "
            f"training, '{val_split}'."
        )
    ignore = {"ignore_index": _ignore_index(dataset)}
    if args.smoke:
        val_ds = kdata.eval_pipeline(
            val, batch_size=args.batch_size, size=args.crop_size, policy="resize", **ignore
        )
    else:
        policy = entry["fit_val"][0]
        size = None if policy == "none" else args.val_size
        val_ds = kdata.eval_pipeline(
            val, batch_size=args.batch_size, size=size, policy=policy, **ignore
        )
    if num_train < args.batch_size:
        raise SystemExit(
            f"{args.prog}: error: argument --batch-size: {args.batch_size} is larger than the "
            f"training set ({num_train} images)"
        )
    steps_per_epoch = num_train // args.batch_size
    fit_val_ds = val_ds
    index, count = args.plan.shard
    if count > 1:
        fit_val_ds = _shard_validation(kdata, val, val_ds, args, count, index, ignore)
    val_steps = None
    if args.smoke:
        steps_per_epoch = min(steps_per_epoch, _configs.SMOKE_STEPS_PER_EPOCH)
        val_steps = _configs.SMOKE_STEPS_PER_EPOCH
    train_ds = kdata.train_pipeline(
        train,
        batch_size=args.batch_size // count,
        crop_size=args.crop_size,
        scale_range=args.scale_range,
        seed=args.seed,
        repeat=True,
        shard=(index, count) if count > 1 else None,
        **ignore,
    )
    if entry["sliding"]:
        eval_ds = kdata.eval_pipeline(val, batch_size=1, **ignore)
        eval_steps = _configs.SMOKE_STEPS_PER_EPOCH if args.smoke else None
    else:
        eval_ds, eval_steps = val_ds, val_steps
    return {
        "train_ds": train_ds,
        "steps_per_epoch": steps_per_epoch,
        "val_ds": val_ds,
        "fit_val_ds": fit_val_ds,
        "val_steps": val_steps,
        "eval_ds": eval_ds,
        "eval_steps": eval_steps,
        "sliding": entry["sliding"],
        "dataset": dataset,
    }


def _shard_validation(kdata, val, val_ds, args, count, index, ignore):
    """This process's share of the per-epoch validation batches of a torch.distributed run.

    Every process must run the same number of validation steps: the validation
    images (brought to their batch size by `val_ds`'s preprocessing) are padded to a
    multiple of the global batch with copies of the first image whose labels are all
    `ignore_index`, which no metric counts (they do weigh in `val_loss`), and process
    `index` takes images `index`, `index + count`, ... in batches of
    `--batch-size / count`. The metrics sum the processes' counts: each validation
    pixel is counted once.
    """
    import tensorflow as tf

    images = val_ds.unbatch()
    total = int(val.cardinality())
    if total < 0:
        total = sum(1 for _ in images)
    missing = -total % args.batch_size
    if missing:
        fill = ignore["ignore_index"]
        blank = images.take(1).map(
            lambda image, mask: (image, tf.fill(tf.shape(mask), tf.cast(fill, mask.dtype)))
        )
        images = images.concatenate(blank.repeat(missing))
    per_process = args.batch_size // count
    return images.shard(count, index).batch(per_process).prefetch(tf.data.AUTOTUNE)


def compile_model(model, args, num_classes, total_steps, jit_compile, keras, kseg, ignore_index):
    outputs = _common.model_outputs(model)
    decay_steps = max(total_steps, 1)
    # A run shorter than the warm-up (a smoke run) warms up all along; the sequential
    # mode's poly decay needs one step after it.
    longest = decay_steps - 1 if args.warmup_mode == "sequential" else total_steps
    schedule = kseg.training.PolyDecay(
        args.lr,
        decay_steps=decay_steps,
        power=args.poly_power,
        warmup_steps=min(args.warmup_steps, longest),
        warmup_start_factor=args.warmup_start_factor,
        warmup_mode=args.warmup_mode,
    )
    groups = {"lr_multipliers": args.lr_multipliers, "decay_exclude": args.decay_exclude}
    try:  # the check of the optimizer's build, with the recipe's words
        kseg.training.variable_groups(model.trainable_variables, **groups)
    except ValueError as e:
        flags = "argument --lr-multipliers/--decay-exclude"
        raise SystemExit(f"{args.prog}: error: {flags}: {e}") from None
    if args.optimizer == "sgd":
        # The papers' coupled L2 (Caffe / torch), not Keras' decoupled weight_decay.
        optimizer = kseg.training.SGD(schedule, momentum=0.9, l2=args.weight_decay or 0.0, **groups)
    elif args.optimizer == "adamw":
        # torch's AdamW (betas 0.9, 0.999; eps 1e-8), its decay with each variable's rate.
        optimizer = kseg.training.AdamW(schedule, weight_decay=args.weight_decay or 0.0, **groups)
    elif args.weight_decay:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(schedule)
    ignore = {"ignore_index": ignore_index}
    miou = kseg.metrics.MeanIoU(num_classes, **ignore)
    metrics = [miou, kseg.metrics.PixelAccuracy(num_classes, **ignore)]
    if outputs is None:
        loss, loss_weights, metric_spec = (
            kseg.losses.SegmentationCrossEntropy(**ignore),
            None,
            metrics,
        )
        monitor = "val_mean_iou"
    else:
        loss = {"main": kseg.losses.SegmentationCrossEntropy(**ignore)}
        loss_weights = {"main": 1.0}
        if "aux" in outputs:
            loss["aux"] = kseg.losses.SegmentationCrossEntropy(**ignore)
            loss_weights["aux"] = args.aux_weight
        if "presence" in outputs:
            loss["presence"] = kseg.losses.SemanticContextLoss(num_classes, **ignore)
            loss_weights["presence"] = args.sc_weight
        metric_spec = {"main": metrics}
        monitor = "val_main_mean_iou"
    model.compile(
        optimizer=optimizer,
        loss=loss,
        loss_weights=loss_weights,
        metrics=metric_spec,
        jit_compile=jit_compile,
    )
    # The optimizer's variables now, not in `fit`: on TensorFlow, `fit` without a
    # distribution strategy would create them inside its first trace of the train step, and
    # tf.function then traces the whole step again (a smoke run: 32 s -> 21 s).
    model.optimizer.build(model.trainable_variables)
    return miou, monitor, outputs


def main(argv=None, prog="train.py", voc_entry=False):
    """Runs the recipe; returns the final evaluation's results (`mean_iou`, `pixel_accuracy`).

    Args:
        argv: the arguments (default `sys.argv[1:]`).
        prog, voc_entry: see `parse_args` (train_voc.py passes its own).
    """
    args = parse_args(argv, prog, voc_entry)
    wall_start = time.time()
    setup = set_up(args)
    data = make_data(args)
    epochs, steps_per_epoch = _schedule(args, data["steps_per_epoch"])
    model, miou, monitor, outputs = make_model(args, setup, data, epochs * steps_per_epoch)
    save_args(args)
    log_run(args, setup, data, model, outputs, epochs, steps_per_epoch)
    callbacks = make_callbacks(args, data, miou, monitor)
    log(f"Setup took {time.time() - wall_start:.1f} s; training.")
    fit(args, model, data, outputs, epochs, steps_per_epoch, callbacks)
    return final_evaluation(args, model, data, callbacks[-1], wall_start)


def set_up(args):
    """The backend's choices for this run (the devices were planned by `parse_args`).

    Returns:
        A dict: `backend`, `device` ("gpu" or "cpu"), `jit_compile` and the
        mixed-precision `policy` (None when off), which is set globally.
    """
    import keras

    from kseg.training.distribute import device_kind

    backend = keras.backend.backend()
    device = device_kind(backend)
    if args.jit_compile == "auto":
        jit_compile = _common.default_jit_compile(backend, device)
    else:
        jit_compile = args.jit_compile == "true"
    policy = _common.mixed_precision_policy(args.mixed_precision, device)
    if policy is not None:
        keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.logdir, exist_ok=True)
    return {"backend": backend, "device": device, "jit_compile": jit_compile, "policy": policy}


def _schedule(args, steps_per_epoch):
    """`(epochs, steps_per_epoch)` of the run: --epochs, or --steps split into epochs."""
    if args.steps is not None:
        return _common.steps_for(args.steps, steps_per_epoch)
    return args.epochs, steps_per_epoch


def make_model(args, setup, data, total_steps):
    """Builds and compiles the model in the devices' scope.

    Returns:
        `(model, miou, monitor, outputs)`: see `compile_model`.
    """
    import keras

    import kseg
    import kseg.training

    dataset = data["dataset"]
    compact = None
    if args.compact:
        compact = _common.SMOKE_RESNET if args.smoke else _common.COMPACT_RESNET
    with args.plan.scope():  # TensorFlow: variables mirrored on every replica
        if args.init_from is not None:
            model = _init_model(args, dataset, kseg)
        else:
            model = _build_model(args, dataset, compact)
        if args.sync_bn and setup["backend"] in ("tensorflow", "torch"):
            kseg.training.synchronize_batch_norm(model)
        miou, monitor, outputs = compile_model(
            model,
            args,
            len(dataset["class_names"]),
            total_steps,
            setup["jit_compile"],
            keras,
            kseg,
            _ignore_index(dataset),
        )
    args.plan.prepare(model)  # torch.distributed: steps across the processes
    return model, miou, monitor, outputs


def _build_model(args, dataset, compact):
    """The model of --model and --backbone, as the configuration sizes it."""
    return _common.build_model(
        args.model,
        len(dataset["class_names"]),
        backbone=args.backbone,
        output_stride=args.output_stride,
        backbone_weights=args.backbone_weights,
        aux_head=args.aux_weight > 0,
        compact=compact,
        dataset=dataset,
    )


def _init_model(args, dataset, kseg):
    """The model of --init-from, for the data's classes (its classifiers replaced if need be)."""
    source = _common.load_checkpoint(args.prog, args.init_from)
    classes = len(dataset["class_names"])
    extra = {}
    if args.model == "ginet":
        extra["class_embeddings"] = _common.ginet_embeddings(dataset)
    model = kseg.models.with_num_classes(source, classes, dataset=dataset, **extra)
    replaced = kseg.models.fine_tuning.replaced_layers(source, model)
    log(
        f"Initialised from {args.init_from}: {source.builder}, every weight loaded"
        + (f" but {', '.join(replaced)} (new for {classes} classes)" if replaced else "")
    )
    return model


def _ignore_index(dataset):
    """The label that is not a class (255 but in a folder that says otherwise)."""
    return int(dataset.get("ignore_index", 255))


def save_args(args):
    """Writes the resolved arguments to `<logdir>/args.json`, the defaults of --resume."""
    from kseg.training.callbacks.saving import save_atomically, write_json

    if not args.plan.is_chief:
        return
    saved = _saved(args)
    save_atomically(os.path.join(args.logdir, "args.json"), lambda path: write_json(path, saved))


def _saved(args):
    """The arguments as `args.json` holds them."""
    unsaved = ("config", "compact", "prog", "plan", "init_arguments")
    saved = {k: v for k, v in vars(args).items() if k not in unsaved}
    for key in ("scale_range", "crop_size", "val_size"):
        saved[key] = list(getattr(args, key))
    return saved


def log_run(args, setup, data, model, outputs, epochs, steps_per_epoch):
    """Prints the configuration, the model, the devices and the data of the run."""
    plan, dataset = args.plan, data["dataset"]
    class_names = dataset["class_names"]
    log(f"Configuration ({args.config}): " + json.dumps(_saved(args), sort_keys=True))
    log(
        f"Model {model.name}: {model.count_params():,} parameters; backbone {args.backbone}"
        f"{compact_note(args)}; outputs {outputs or ['logits']}."
    )
    log(
        f"Backend {setup['backend']} on {setup['device']}; "
        f"jit_compile={setup['jit_compile']}; mixed precision {setup['policy'] or 'off'}; "
        f"{epochs} epoch(s) of {steps_per_epoch} steps, "
        f"batch {args.batch_size}, crop {_size_text(args.crop_size)}."
    )
    log(
        f"Devices: {plan.description}; global batch {args.batch_size} = {plan.num_replicas} "
        f"x {plan.per_replica_batch(args.batch_size)} per device; "
        f"BatchNorm statistics {bn_statistics(args, plan)}."
    )
    shown = ", ".join(class_names[:8]) + (", ..." if len(class_names) > 8 else "")
    log(
        f"Dataset {dataset['name']!r}: {len(class_names)} classes ({shown}); the saved models "
        "carry the class names, palette and ignore index."
    )
    if args.model == "ginet":
        embeddings = _common.ginet_embeddings(dataset)
        log(
            f"GINet: class embeddings {embeddings!r}"
            + (" (shipped)" if embeddings != "learned" else " (a trainable table)")
            + "."
        )
    if "presence" in (outputs or []):
        log(f"GINet: semantic context loss on the class nodes, weight {args.sc_weight}.")
    saves = {0: "", 1: "every step and "}.get(
        args.save_every, f"every {args.save_every} steps and "
    )
    log(
        f"Logs and checkpoints in {args.logdir}; the training state is saved {saves}at "
        "every epoch end. To resume after an interruption:"
    )
    log(f"  python recipes/{args.prog} --resume --logdir {args.logdir}")


def _run_files(args):
    """`(backup folder, best checkpoint, its score)` of the run in --logdir."""
    return tuple(os.path.join(args.logdir, name) for name in ("backup", "best.keras", "best.json"))


def make_callbacks(args, data, miou, monitor):
    """`kseg.training.segmentation_callbacks` with the recipe's options; the best
    checkpoint is last."""
    import kseg.training

    backup_dir, checkpoint_path, state_path = _run_files(args)
    return kseg.training.segmentation_callbacks(
        args.logdir,
        samples=kseg.training.take_samples(data["val_ds"], 4 if not args.smoke else 2),
        metric=miou,
        class_names=data["dataset"]["class_names"],
        checkpoint_path=checkpoint_path,
        # The best score so far is kept in best.json and read back by a resumed run.
        state_path=state_path,
        monitor=monitor,
        # Resumes at the saved training step; kept after the run, so that --resume can
        # also extend a finished run.
        backup_dir=backup_dir,
        backup_save_freq=args.save_every or "epoch",
        delete_backup=False,
        verbose=1 if args.plan.is_chief else 0,
        # torch.distributed: process 0 writes; the others restore what it wrote.
        writes=args.plan.is_chief,
    )


def fit(args, model, data, outputs, epochs, steps_per_epoch, callbacks):
    """`model.fit`; a diverging run or a full disk ends with what is kept and how to go on."""
    import kseg.training

    train_ds, val_ds = data["train_ds"], data["fit_val_ds"]
    if outputs is not None:

        def to_dict(images, masks):
            return images, {name: masks for name in outputs}

        train_ds, val_ds = train_ds.map(to_dict), val_ds.map(to_dict)
    backup_dir, checkpoint_path, _ = _run_files(args)
    try:
        model.fit(
            train_ds,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=val_ds,
            validation_steps=data["val_steps"],
            callbacks=callbacks,
            shuffle=False,  # the pipeline shuffles
            verbose=(1 if sys.stdout.isatty() else 2) if args.plan.is_chief else 0,
        )
    except kseg.training.DivergenceError as e:
        raise SystemExit(_stopped(args, e, backup_dir, checkpoint_path, diverged=True)) from None
    except kseg.training.DiskFullError as e:
        raise SystemExit(_stopped(args, e, backup_dir, checkpoint_path)) from None


def final_evaluation(args, model, data, checkpoint, wall_start):
    """Scores the final model on the validation set and prints the results.

    In a torch.distributed run, process 0 alone evaluates (the others return None).
    """
    import keras

    import kseg

    if not args.plan.is_chief:
        return None

    eval_kwargs = {}
    if data["sliding"]:
        eval_kwargs["crop_size"] = args.crop_size
        stride = getattr(args, "eval_stride", None)
        if stride is not None:
            eval_kwargs["stride"] = tuple(stride)
        log(
            "Evaluating the final model on the full validation images with a sliding "
            f"window of {_size_text(args.crop_size)}"
            + (f", stride {_size_text(stride)}." if stride is not None else ".")
        )
    else:
        log("Evaluating the final model on the validation set.")
    class_names = data["dataset"]["class_names"]
    num_classes, ignore_index = len(class_names), _ignore_index(data["dataset"])
    eval_miou = kseg.metrics.MeanIoU(num_classes, ignore_index=ignore_index)
    results = kseg.inference.evaluate(
        model,
        data["eval_ds"],
        [eval_miou, kseg.metrics.PixelAccuracy(num_classes, ignore_index=ignore_index)],
        steps=data["eval_steps"],
        **eval_kwargs,
    )
    per_class = [float(v) for v in keras.ops.convert_to_numpy(eval_miou.per_class_iou())]
    log()
    log(_common.format_iou_table(class_names, per_class))
    log()
    log(f"Validation pixel accuracy: {results['pixel_accuracy']:.4f}")
    if os.path.isfile(checkpoint.filepath):
        log(f"Best checkpoint ({checkpoint.monitor} {checkpoint.best:.4f}): {checkpoint.filepath}")
    log(f"Total time: {time.time() - wall_start:.1f} s")
    log(f"Validation mIoU: {results['mean_iou']:.4f}")
    log(f"Open TensorBoard with: tensorboard --logdir {args.logdir}")
    return results


def _stopped(args, error, backup_dir, checkpoint_path, diverged=False):
    """The message a run ends with when training stops on a fault: what is kept, how to go on."""
    lines = [f"{args.prog}: error: {error}"]
    metadata = os.path.join(backup_dir, "training_metadata.json")
    if os.path.isfile(metadata):
        with open(metadata) as f:
            step = json.load(f).get("step")
        lines.append(f"The last backup, after training step {step}, is kept in {backup_dir}.")
    else:
        lines.append(f"No backup had been written yet ({backup_dir}).")
    if os.path.isfile(checkpoint_path):
        lines.append(f"The best checkpoint so far is kept: {checkpoint_path}.")
    hint = (
        " with a lower --lr (or --mixed-precision off)"
        if diverged
        else " once the device has space"
    )
    lines.append(
        f"To continue from the backup{hint}: python recipes/{args.prog} --resume "
        f"--logdir {args.logdir}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
