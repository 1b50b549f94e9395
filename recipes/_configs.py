"""The training configurations of the recipes: the demo, the smoke run and each dataset's papers.

`train.py` fills every option left at None on its command line from one of
them: `SMOKE` with `--smoke`, `DEMO` without `--data-dir`, and with it the
dataset's entry of `PAPER_CONFIGS` (`paper_config`, with the paper backbone of
the model).
"""

import _common

#: Defaults of the demo configuration (synthetic data, no --data-dir).
DEMO = {
    "backbone": "compact",
    "crop_size": (96, 96),
    "batch_size": 8,
    "epochs": 1,
    "optimizer": "adam",
    "lr": 3e-3,
    "weight_decay": 0.0,
    "scale_range": (0.75, 1.25),
    "backbone_weights": None,
    # 125 steps per epoch: two saves inside the one-epoch demo run besides the one at its end.
    "save_every": 50,
}
#: Defaults of `--smoke`.
SMOKE = {
    "backbone": "compact",
    "crop_size": (32, 32),
    "batch_size": 2,
    "epochs": 1,
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "scale_range": (0.75, 1.25),
    "backbone_weights": None,
    "save_every": 1,  # smoke epochs have 2 steps: every step saves, as a long run does
}
#: Smoke crops of the datasets whose crops are not square (Cityscapes' 1 : 2).
SMOKE_CROPS = {"cityscapes": (32, 64)}
SMOKE_STEPS_PER_EPOCH = 2

#: Training steps between two saves of the training state (`--save-every`) with `--data-dir`.
#: An estimate, not a measurement: a ResNet-101 model at 512 px crops and batch 8-16 takes
#: roughly 0.5-1 s per step on one current GPU, so 500 steps are a few minutes of work, the
#: most a preempted run loses (a preemptible cloud GPU is reclaimed with about 30 s of
#: warning); a save (about 0.5 GB of weights and SGD momenta) costs a second or two.
SAVE_EVERY = 500

#: Training configuration of the papers (or mmsegmentation) per dataset, used with `--data-dir`.
#: `steps` are iterations of `batch_size` crops; SGD is momentum 0.9 with poly decay (power 0.9).
PAPER_CONFIGS = {
    # DeepLab v3+ (Chen et al., ECCV 2018), section 4; PSPNet (Zhao et al., CVPR 2017),
    # section 5.1: 512 crops (513 in DeepLab), batch 16, lr 0.01, weight decay 1e-4, 30k steps.
    "voc": {
        "crop_size": (512, 512),
        "batch_size": 16,
        "steps": 30000,
        "optimizer": "sgd",
        "lr": 0.01,
        "weight_decay": 1e-4,
        "scale_range": (0.5, 2.0),
        "backbone_weights": "imagenet",
        "save_every": SAVE_EVERY,
    },
    # mmsegmentation `configs/_base_/datasets/cityscapes.py` (512 x 1024 crops of images
    # rescaled by 0.5-2.0) and `schedules/schedule_80k.py` (SGD lr 0.01, momentum 0.9,
    # weight decay 5e-4, poly power 0.9, 80k iterations), `*_4xb2-80k_*`: 4 GPUs x 2 = batch 8.
    # PSPNet (section 5.3) trains Cityscapes with batch 8, lr 0.01 and weight decay 1e-4 on
    # 713 crops for 90k iterations; we follow mmsegmentation, whose tables use this schedule.
    "cityscapes": {
        "crop_size": (512, 1024),
        "batch_size": 8,
        "steps": 80000,
        "optimizer": "sgd",
        "lr": 0.01,
        "weight_decay": 5e-4,
        "scale_range": (0.5, 2.0),
        "backbone_weights": "imagenet",
        "save_every": SAVE_EVERY,
    },
    # mmsegmentation `configs/_base_/datasets/ade20k.py` (512 x 512 crops, rescale 0.5-2.0)
    # and `schedules/schedule_160k.py` (SGD lr 0.01, momentum 0.9, weight decay 5e-4, 160k
    # iterations), `*_4xb4-160k_*`: 4 GPUs x 4 = batch 16. PSPNet (section 5.2): batch 16,
    # 150k iterations on 473 crops.
    "ade20k": {
        "crop_size": (512, 512),
        "batch_size": 16,
        "steps": 160000,
        "optimizer": "sgd",
        "lr": 0.01,
        "weight_decay": 5e-4,
        "scale_range": (0.5, 2.0),
        "backbone_weights": "imagenet",
        "save_every": SAVE_EVERY,
    },
    # A user's folder: the ADE20K-style schedule of mmsegmentation shortened to 20k iterations
    # (`schedules/schedule_20k.py`, used there for small sets such as VOC without SBD), batch 8
    # so that a single GPU holds it, 512 crops.
    "folder": {
        "crop_size": (512, 512),
        "batch_size": 8,
        "steps": 20000,
        "optimizer": "sgd",
        "lr": 0.01,
        "weight_decay": 5e-4,
        "scale_range": (0.5, 2.0),
        "backbone_weights": "imagenet",
        "save_every": SAVE_EVERY,
    },
}


def paper_config(dataset, model):
    """The configuration of `dataset` with --data-dir, with the paper backbone of `model`."""
    preset = dict(PAPER_CONFIGS[dataset])
    paper = _common.PAPER_BACKBONES.get(model)
    preset["backbone"] = paper or ("vgg16" if _common.backbone_choices(model) else None)
    return preset


def preset(args):
    """`(defaults, name)` of the run: the smoke, demo or dataset configuration of `args`."""
    if args.smoke:
        values = dict(SMOKE)
        values["crop_size"] = SMOKE_CROPS.get(args.dataset, SMOKE["crop_size"])
        return values, "smoke"
    if args.data_dir is None:
        return DEMO, "demo"
    return paper_config(args.dataset, args.model), args.dataset
