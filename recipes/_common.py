"""Shared pieces of the recipes: the model zoo by name, compile choices, checkpoints.

Everything heavy (Keras, TensorFlow, kseg) is imported inside the functions, after
`quiet_tensorflow`; the model and backbone names come from `kseg.models.registry`.
"""

import argparse
import math
import os

#: Compact backbone of the demo configuration: a bottleneck ResNet with one
#: block per stage and width 16 (stage 4 has 512 channels); with the compact
#: DeepLabV3+ head (`_compact_head_kwargs`) the model has 1.57 M parameters.
COMPACT_RESNET = {"blocks": (1, 1, 1, 1), "width": 16}

#: The even smaller network of `--smoke` runs.
SMOKE_RESNET = {"blocks": (1, 1, 1, 1), "width": 4}

#: What `--backbone` offers besides the library's names (`kseg.models.registry`), by
#: the model's kind of backbone: the dilated models also take "compact", a small
#: ResNet built here (demo and tests); U-Net takes "none", the paper's U-Net
#: (compact in the smoke and demo runs), or an encoder (segmentation_models' U-Net
#: decoder on it); SegFormer takes "compact", a Mix Transformer with one block per
#: stage and widths that scale with the compact ResNet's (`compact_mit`); the
#: encoder-decoder models (FPN, Linknet, ...) the compact ResNet at output stride 32.
RECIPE_BACKBONES = {
    "dilated": ("compact",),
    "unet": ("none",),
    "vgg16": (),
    "mit": ("compact",),
    "encoder": ("compact",),
}

#: The backbone each model uses in its paper's PASCAL VOC configuration.
PAPER_BACKBONES = {
    "pspnet": "resnet101",
    "deeplabv2": "resnet101",
    "deeplabv3": "resnet101",
    "deeplabv3plus": "resnet101",
    "gcunet": "resnet101",
    "glorenet": "resnet101",
    "ginet": "resnet101",
    "unet": "none",
    # smp's default encoder for its FPN, Linknet and UnetPlusPlus (ResNet-34, torchvision's
    # ImageNet weights); UPerNet's paper and mmsegmentation use ResNet-50 (mmseg's v1c, which
    # has no download: the v1.5 layout's torchvision weights instead).
    "fpn": "resnet34",
    "linknet": "resnet34",
    "unetplusplus": "resnet34",
    "upernet": "resnet50_v1.5",
}

#: Loss weight of GINet's semantic context loss (Wu et al., ECCV 2020, section 4.1).
SC_LOSS_WEIGHT = 0.2


def model_registry():
    """`kseg.models.registry`: the models by name and the backbone names each takes."""
    quiet_tensorflow()
    from kseg.models import registry

    return registry


def model_names():
    return sorted(model_registry().MODELS)


def backbone_kind(model_name):
    """`"dilated"`, `"unet"` or `"vgg16"`: the key of the model's backbone names."""
    return model_registry().MODELS[model_name].backbone_kind


def backbone_choices(model_name):
    """The model's `--backbone` choices: the recipe's own, then the library's names."""
    kind = backbone_kind(model_name)
    return (*RECIPE_BACKBONES[kind], *model_registry().BACKBONE_NAMES[kind])


def has_aux_head(model_name):
    return model_registry().MODELS[model_name].aux_head


def default_jit_compile(backend, device):
    """The `jit_compile` measured fastest for a backend and device.

    Training steps of the compact DeepLabV3+ demo (batch 16, 96 x 96) on a
    2-core CPU (README, "Choice of jit_compile"): JAX needs XLA (its eager
    mode runs op by op); TensorFlow ran slower with XLA than without on the
    CPU (about 8x for a full DeepLabV3+ step, DESIGN.md); PyTorch's
    `torch.compile` spent longer compiling than the run saved. On a GPU,
    TensorFlow keeps Keras' own choice ("auto": XLA when the model supports it).
    """
    if backend == "jax":
        return True
    if backend == "tensorflow":
        return "auto" if device == "gpu" else False
    return False


def mixed_precision_policy(value, device):
    """Resolves `--mixed-precision`: "auto" is float16 on a GPU and bfloat16 on a CPU."""
    if value in (None, "off"):
        return None
    if value == "auto":
        value = "float16" if device == "gpu" else "bfloat16"
    return f"mixed_{value}"


def build_model(
    model_name,
    num_classes,
    *,
    backbone,
    output_stride=None,
    backbone_weights=None,
    aux_head=False,
    compact=None,
    dataset=None,
):
    """Builds a zoo model by its lower-case name.

    Args:
        model_name: a key of `kseg.models.registry.MODELS`.
        num_classes: number of classes.
        backbone: one of `backbone_choices(model_name)`: "compact", a
            backbone name or "vgg16" (what the model takes); "none" for the
            paper's U-Net, an encoder name for U-Net on that encoder.
        output_stride: None for the builder's default.
        backbone_weights: None, "imagenet" or a weights file.
        aux_head: add the auxiliary head (models that have one).
        compact: None for the paper-size heads, or the ResNet kwargs of a
            compact network (`COMPACT_RESNET`, `SMOKE_RESNET`); heads then
            shrink with the backbone width.
        dataset: None, or the description of the training data
            (`kseg.data.palette.dataset_description`). The model then
            carries it (`kseg.models.with_dataset`), and GINet takes the
            shipped class-name embeddings of a dataset that has them (by
            name, never by class count), else a learned table.

    Returns:
        The `keras.Model` (a `kseg.models.SegmentationModel` when `dataset`
        is given). GINet's `"presence"` output (class-presence logits for the
        semantic context loss) is kept.
    """
    import kseg

    builder = model_registry().MODELS[model_name].builder
    family = backbone_kind(model_name)
    kwargs = {}
    if family == "dilated":
        if output_stride is None:
            output_stride = {"deeplabv3plus": 16, "deeplabv3": 16}.get(model_name, 8)
        if backbone == "compact":
            resnet = dict(compact or COMPACT_RESNET)
            kwargs["backbone"] = kseg.backbones.ResNet(output_stride=output_stride, **resnet)
        else:
            kwargs["backbone"] = backbone
            kwargs["output_stride"] = output_stride
            kwargs["backbone_weights"] = backbone_weights
            if model_name == "deeplabv3" and backbone == "resnet18":
                # The paper's multi-grid (1, 2, 4) is for a last stage of three blocks;
                # ResNet-18's has two, and the builder refuses the default for it.
                kwargs["multi_grid"] = None
        if aux_head:
            kwargs["aux_head"] = True
    elif family == "vgg16":
        kwargs["backbone_weights"] = backbone_weights
    elif family == "encoder":
        if backbone == "compact":
            resnet = dict(compact or COMPACT_RESNET)
            kwargs["backbone"] = kseg.backbones.ResNet(output_stride=32, **resnet)
        else:
            kwargs["backbone"] = backbone
            kwargs["backbone_weights"] = backbone_weights
        if aux_head:
            kwargs["aux_head"] = True
    elif family == "mit":
        if backbone == "compact":
            kwargs["backbone"] = compact_mit((compact or COMPACT_RESNET)["width"])
        else:
            kwargs["backbone"] = backbone
            kwargs["backbone_weights"] = backbone_weights
    elif family == "unet" and backbone != "none":
        kwargs["backbone"] = backbone
        kwargs["backbone_weights"] = backbone_weights
        if compact is not None:  # the decoder shrinks with the compact width
            w = compact["width"] * 4
            kwargs["decoder_filters"] = tuple(max(w // 2**i, 4) for i in range(5))
            compact = None
    if compact is not None:
        kwargs.update(_compact_head_kwargs(model_name, compact["width"]))
    if model_name == "ginet":
        kwargs["class_embeddings"] = ginet_embeddings(dataset)
    model = builder(num_classes, **kwargs)
    if dataset is not None:
        model = kseg.models.with_dataset(model, dataset)
    return model


def ginet_embeddings(dataset):
    """GINet's `class_embeddings` for a dataset description: its name if shipped, else "learned"."""
    from kseg.models.ginet import SHIPPED_EMBEDDINGS

    name = (dataset or {}).get("name")
    return name if name in SHIPPED_EMBEDDINGS else "learned"


def compact_mit(width):
    """A Mix Transformer of one block per stage, MiT-B0's widths at `width` 16."""
    import kseg

    return kseg.backbones.MixTransformer(
        hidden_sizes=(2 * width, 4 * width, 10 * width, 16 * width),
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 5, 8),
        sr_ratios=(8, 4, 2, 1),
        name="compact_mit",
    )


def _compact_head_kwargs(model_name, width):
    """Head widths that scale with a compact backbone of `width` (64 is the full size)."""
    w = width * 4  # the full-size heads are 4 x the backbone width (256 for width 64)
    return {
        "fcn8s": {"fc_filters": 16 * w},
        "fcn16s": {"fc_filters": 16 * w},
        "fcn32s": {"fc_filters": 16 * w},
        "unet": {
            "base_filters": max(width // 2, 4),
            "depth": 3,
            "padding": "same",
            "batch_norm": True,
        },
        "segnet": {},
        "pspnet": {"fusion_filters": 2 * w},
        "deeplabv1": {"fc_filters": 4 * w},
        "deeplabv2": {},
        "deeplabv3": {"aspp_filters": w},
        "deeplabv3plus": {
            "aspp_filters": w,
            "low_level_filters": max(w // 4, 4),
            "decoder_filters": w,
        },
        "gcunet": {"unit_filters": 2 * w, "fusion_filters": 2 * w},
        "segformer": {"decoder_filters": w},
        # smp's GroupNorm(32) needs segmentation widths that are multiples of 32.
        "fpn": {"pyramid_filters": w, "segmentation_filters": 32},
        "linknet": {},
        "unetplusplus": {"decoder_filters": tuple(max(w // 2**i, 4) for i in range(5))},
        "upernet": {"decoder_filters": 2 * w},
        "glorenet": {"reduce_filters": 2 * w, "num_state": w // 2, "num_node": w // 4},
        "ginet": {"jpu_width": 2 * w, "reduce_filters": 2 * w, "num_state": w, "num_node": w // 3},
    }[model_name]


def model_outputs(model):
    """Output names of a dict-output model, or None for a single-output model."""
    structure = getattr(model, "_outputs_struct", None)
    if isinstance(structure, dict):
        return sorted(structure)
    return None


def steps_for(total_steps, steps_per_epoch):
    """Splits `total_steps` into `(epochs, steps_per_epoch)` with epochs of at most one pass."""
    epochs = max(math.ceil(total_steps / steps_per_epoch), 1)
    return epochs, math.ceil(total_steps / epochs)


class CheckpointError(ValueError):
    """A checkpoint file that is not a whole `.keras` archive."""


def load_model(path):
    """Loads a `.keras` checkpoint written by the training recipe (without its compile state).

    Raises:
        FileNotFoundError: no file at `path`.
        CheckpointError: the file is not a whole `.keras` archive (truncated, corrupt, or
            another kind of file), naming it; Keras' own message for that case
            says the file was not found.
    """
    import zipfile

    import keras

    import kseg  # noqa: F401  (registers kseg's layers, losses and metrics)

    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    problem = None
    if not zipfile.is_zipfile(path):
        problem = "it is not a zip archive"
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()  # the first member whose CRC does not match
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            damaged, names, problem = None, set(), f"its archive cannot be read ({error})"
        if damaged is not None:
            problem = f"its member {damaged!r} is damaged"
        elif problem is None and "config.json" not in names:
            problem = "it holds no config.json"
    if problem is not None:
        size = os.path.getsize(path)
        raise CheckpointError(
            f"{path} is not a valid .keras file (truncated or corrupt: {problem}; {size:,} "
            "bytes). Use another checkpoint, e.g. the run's best.keras or a copy of it."
        )
    return keras.saving.load_model(path, compile=False)


def builder_of_file(path):
    """`(builder, arguments)` that a kseg `.keras` file records, read without building it.

    Raises:
        OSError: no such file. ValueError: not a `.keras` archive, or a model that
            records no builder (a file of kseg 0.1.0, or a plain Keras model).
    """
    import json
    import zipfile

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise ValueError(f"{path} is not a .keras file ({error})") from None
    inner = config.get("config") or {}
    builder, arguments = inner.get("builder"), inner.get("arguments")
    if not builder or not isinstance(arguments, dict):
        raise ValueError(
            f"{path} holds a model that does not record the kseg builder that made it "
            "(files of kseg >= 0.2 do; rebuild an older one and save it again)"
        )
    return builder, arguments


def load_checkpoint(prog, path):
    """`load_model(path)` for a recipe: a missing or damaged file ends it with one error line."""
    try:
        return load_model(path)
    except FileNotFoundError:
        raise SystemExit(f"{prog}: error: no such checkpoint: {path!r}") from None
    except CheckpointError as error:
        raise SystemExit(f"{prog}: error: {error}") from None


def quiet_tensorflow():
    """Hides TensorFlow's start-up log lines (before TensorFlow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def format_iou_table(class_names, values, title="Per-class IoU"):
    """A plain-text table of class names and IoU values (NaN: class absent from the data)."""
    width = max([len(n) for n in class_names] + [5])
    lines = [title, f"  {'class':<{width}}  IoU", f"  {'-' * width}  ------"]
    for name, value in zip(class_names, values):
        shown = "   n/a" if not math.isfinite(value) else f"{value:6.4f}"
        lines.append(f"  {name:<{width}}  {shown}")
    return "\n".join(lines)


def add_inference_args(parser, default_crop_help):
    """Test-time options shared by the evaluation and prediction recipes."""
    parser.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=[1.0],
        help="image scales whose probabilities are averaged, e.g. 0.5 0.75 1.0 1.25 1.5 1.75",
    )
    parser.add_argument("--flip", action="store_true", help="also average the flipped image")
    parser.add_argument(
        "--crop-size",
        type=int,
        nargs="+",
        default=None,
        metavar="S",
        help="sliding-window size, S or H W (the training crop); " + default_crop_help,
    )
    parser.add_argument(
        "--stride",
        type=int,
        nargs="+",
        default=None,
        metavar="S",
        help="sliding-window stride, S or H W; default 2/3 of the crop",
    )
    parser.add_argument("--output-key", default="main", help="output of a dict-output model")
    parser.add_argument(
        "--size-buckets",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="whole-image inference: pad each image (bottom, right) to one of a few sizes "
        "and crop the result back, so that the model compiles a bounded number of times "
        "whatever the image sizes (JAX compiles every new shape); the padding changes "
        "the logits a little (kseg.inference, size_buckets). The sliding window "
        "(--crop-size) is exact either way",
    )


def check_inference_args(parser, args):
    if any(s <= 0 for s in args.scales):
        parser.error(f"argument --scales: must be positive, got {args.scales}")
    for name in ("crop_size", "stride"):
        value = getattr(args, name)
        if value is None:
            continue
        flag = f"--{name.replace('_', '-')}"
        if len(value) not in (1, 2):
            parser.error(f"argument {flag}: expected S or H W, got {len(value)} values {value}")
        if min(value) < 1:
            parser.error(f"argument {flag}: must be >= 1, got {value}")
        setattr(args, name, (value[0], value[-1]))


def inference_kwargs(args):
    return {
        "crop_size": args.crop_size,
        "stride": args.stride,
        "scales": tuple(args.scales),
        "flip": args.flip,
        "output_key": args.output_key,
        # Whole-image inference pads to size buckets (None: the library's exact default).
        "size_buckets": True if args.size_buckets else None,
    }


def num_classes_of(model, output_key="main"):
    """The number of classes: the channels of the model's logits."""
    import keras

    output = model.output
    if isinstance(output, dict):
        output = output[output_key]
    elif isinstance(output, (list, tuple)):
        output = output[0]
    axis = 1 if keras.config.image_data_format() == "channels_first" else -1
    return int(output.shape[axis])


def dataset_of(model, num_classes, log=print):
    """The dataset description a model carries, or a generic one.

    Models trained by the recipes carry their dataset's name, class names,
    palette and ignore index (`kseg.models.SegmentationModel`). For any other
    model the classes are named `class_0`, `class_1`, ... (two names for a
    single-logit binary model) and coloured with the PASCAL VOC palette, and
    `log` says so once. A description without a palette gets the VOC one.
    """
    import numpy as np

    from kseg.data.palette import voc_palette

    description = getattr(model, "dataset", None)
    if isinstance(description, dict):
        description = dict(description)
    else:
        count = 2 if num_classes == 1 else num_classes
        log(
            f"The model carries no dataset description: its {count} classes are named "
            f"class_0 to class_{count - 1} and coloured with the PASCAL VOC palette."
        )
        description = {
            "name": None,
            "class_names": [f"class_{i}" for i in range(count)],
            "palette": None,
            "ignore_index": 255,
        }
    if description.get("palette") is None:
        count = len(description["class_names"])
        description["palette"] = voc_palette(min(max(count, 1), 256)).tolist()
    description["palette"] = np.asarray(description["palette"], np.uint8)
    return description
