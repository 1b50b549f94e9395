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


#: The optimizer and schedule options that the configurations above leave out, with these
#: values: poly power 0.9 (DeepLab, TPAMI 2017, section 4), no warm-up (0.1 is
#: `kseg.training.PolyDecay`'s start factor, mmcv's `warmup_ratio`), and every variable at
#: the base rate and decayed.
OPTIMIZER_DEFAULTS = {
    "poly_power": 0.9,
    "warmup_steps": 0,
    "warmup_start_factor": 0.1,
    "warmup_mode": "multiply",
    "lr_multipliers": {},
    "decay_exclude": (),
}

#: SegFormer (Xie et al., NeurIPS 2021, section 4.1) as mmsegmentation 1.x trains it, on
#: every dataset: `configs/segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py` and
#: `segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py` (the MiT-B1 ... B5 configs inherit
#: them and change the backbone only, but `mit-b5_8xb2-160k_ade20k-640x640`'s crops) set
#:   optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
#:   paramwise_cfg=dict(custom_keys={'pos_block': dict(decay_mult=0.),
#:                                   'norm': dict(decay_mult=0.), 'head': dict(lr_mult=10.)}),
#:   param_scheduler=[LinearLR(start_factor=1e-6, begin=0, end=1500),
#:                    PolyLR(eta_min=0.0, power=1.0, begin=1500, end=160000)].
#: mmengine matches a key as a substring of a parameter's name (DefaultOptimWrapperConstructor).
SEGFORMER_TRAINING = {
    # MiT-B0, the backbone of the configs above; --backbone mit_b1 ... mit_b5 for the others.
    "backbone": "mit_b0",
    "backbone_weights": "imagenet",  # mmseg: `pretrained='pretrain/mit_b0.pth'` (ImageNet-1k)
    "optimizer": "adamw",  # kseg.training.AdamW: torch's AdamW, betas (0.9, 0.999), eps 1e-8
    "lr": 6e-5,
    "weight_decay": 0.01,
    # 'head' matches mmseg's `decode_head.*` parameters only (its classifier is
    # `decode_head.conv_seg`; no MiT parameter holds 'head'): kseg's SegFormer names its
    # decoder layers `decode_head...` and its classifier `classifier`.
    "lr_multipliers": {"decode_head": 10.0, "classifier": 10.0},
    # 'norm' matches the MiT's LayerNorms that mmseg names `norm`, `norm1`, `norm2`
    # (patch embeddings, blocks, attention's spatial reduction); not its stage-end norms
    # (`layers.<i>.2`), which mmseg therefore decays, nor the decoder's BatchNorm
    # (ConvModule's `bn`). Every LayerNorm of kseg's MiT has 'norm' in its name, so all are
    # left undecayed here. 'pos_block' (a key for PVT / Twins' positional convolutions)
    # matches nothing in the MiT, whose positional information comes from MixFFN's 3x3
    # depth-wise conv: it is left out.
    "decay_exclude": ("norm",),
    "warmup_steps": 1500,
    "warmup_start_factor": 1e-6,
    "warmup_mode": "sequential",  # LinearLR, then PolyLR from its end (PolyDecay's docstring)
    "poly_power": 1.0,
}
#: SegFormer's crops, batches and lengths on the datasets of its paper (section 4.1; mmseg's
#: configs above): the other datasets keep their `PAPER_CONFIGS` entry's.
SEGFORMER_DATA = {
    # `_base_/datasets/ade20k.py`: 512 x 512 crops of images rescaled by 0.5-2.0;
    # `8xb2`: 8 GPUs x 2 = batch 16; `schedules/schedule_160k.py`: max_iters 160000.
    "ade20k": {"crop_size": (512, 512), "batch_size": 16, "steps": 160000},
    # `_base_/datasets/cityscapes_1024x1024.py`: 1024 x 1024 crops (ratio 0.5-2.0); `8xb1`:
    # batch 8; 160000 iterations; `test_cfg=dict(mode='slide', crop_size=(1024, 1024),
    # stride=(768, 768))` on the full 1024 x 2048 images.
    "cityscapes": {
        "crop_size": (1024, 1024),
        "batch_size": 8,
        "steps": 160000,
        "eval_stride": (768, 768),
    },
}
#: The models whose papers train otherwise than `PAPER_CONFIGS`' SGD, by model name:
#: `(training, {dataset: data})`, laid over the dataset's entry by `paper_config`.
MODEL_CONFIGS = {"segformer": (SEGFORMER_TRAINING, SEGFORMER_DATA)}


def paper_config(dataset, model):
    """The configuration of `dataset` with --data-dir, with the paper backbone of `model`.

    A model of `MODEL_CONFIGS` brings its own optimizer, schedule and backbone,
    and on the datasets of its paper its own crops, batch and length.
    """
    preset = dict(PAPER_CONFIGS[dataset])
    training, data = MODEL_CONFIGS.get(model, ({}, {}))
    preset.update(training)
    preset.update(data.get(dataset, {}))
    if "backbone" not in preset:
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
