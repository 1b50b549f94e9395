"""segmentation_models.pytorch models saved with `save_pretrained` as kseg models.

smp (segmentation_models.pytorch) 0.6 writes a model with `save_pretrained(folder)` as
`config.json` (`"_model_class"`, the class name, and every argument of the model's
constructor: `encoder_name`, `classes`, the decoder options) and `model.safetensors`
(the state dict: `encoder.*`, `decoder.*`, `segmentation_head.*`). `from_smp` reads
the configuration, builds the kseg model that computes the same logits, and copies
the state dict into it strictly.

One table, `ARCHITECTURES`, says which smp classes convert: for each class name its
kseg build function, its copy function (the decoder's keys) and smp's defaults of
its own options. A class is added by writing those two functions and one entry.
"""

import json
import os
from collections.abc import Callable
from typing import NamedTuple

from kseg import backbones as kbackbones
from kseg._common import check_int
from kseg.convert import _smp_decoders
from kseg.convert.state_dict import StrictCopy, read_state_dict, resnet_copy

#: smp encoder names -> kseg backbone names. smp's ResNet encoders are torchvision's
#: ResNets (`encoders/resnet.py` subclasses `torchvision.models.resnet.ResNet`), so
#: ResNet-50/101 are kseg's `_v1.5` layouts.
ENCODERS = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50_v1.5",
    "resnet101": "resnet101_v1.5",
}

#: Options every smp model class takes, with the one value kseg converts (unless the
#: class lists the option among its own, as PSPNet does `encoder_depth`). `encoder_depth`
#: 5 is smp's default (every stage); `activation` None returns logits (`"identity"` is
#: the same); `aux_params` None means no classification head on the encoder.
COMMON_OPTIONS = {"encoder_depth": 5, "in_channels": 3, "activation": None, "aux_params": None}

#: Keys of the configuration that describe no computation: the encoder's name is read
#: separately, its initial weights and the class count do not change the layout.
_READ_SEPARATELY = ("encoder_name", "encoder_weights", "classes")

#: Names of options before smp 0.5 -> their smp 0.6 names (smp still accepts them).
_ALIASES = {"decoder_use_batchnorm": "decoder_use_norm", "psp_use_batchnorm": "decoder_use_norm"}

#: smp classes kseg knows and does not convert, and why (`from_smp` refuses them by
#: name with the reason). Every smp 0.6 class kseg knows converts today.
REFUSED = {}


class Architecture(NamedTuple):
    """How one smp model class becomes a kseg model.

    Attributes:
        build: `build(options, num_classes, backbone, input_shape, normalization, name)`
            returns the kseg model; `options` holds the class's options (smp's
            defaults filled in), `backbone` the kseg backbone name (`ENCODERS`).
            It raises `ValueError` for an option value kseg cannot express.
        copy: `copy(strict_copy, model, options)` adds the decoder's keys
            (`decoder.*`) to a `StrictCopy`; the encoder's and the segmentation
            head's are added by `from_smp`.
        options: the class's own constructor options and smp 0.6's default of each
            (used where a configuration lacks one).
        head: the name of the kseg layer that smp's `segmentation_head.0` (the
            classifier convolution) loads into.
    """

    build: Callable
    copy: Callable
    options: dict
    head: str


def unsupported(arch, option, value, supported):
    """The error for an smp option value kseg does not convert."""
    return ValueError(
        f"kseg converts smp {arch} models with `{option}` {supported}. Received: {option}={value!r}"
    )


def use_norm(arch, value):
    """smp's `decoder_use_norm` as a bool: BatchNorm (True) or none (False)."""
    if isinstance(value, dict) and set(value) == {"type"}:
        value = value["type"]
    if value in (True, "batchnorm"):
        return True
    if value in (False, "identity"):
        return False
    raise unsupported(arch, "decoder_use_norm", value, "'batchnorm' (True) or 'identity' (False)")


def _require(arch, options, option, *values):
    if options[option] not in values:
        shown = " or ".join(repr(v) for v in values)
        raise unsupported(arch, option, options[option], shown)


def _model(module):
    from kseg import models

    return getattr(models, module)


# --- Unet ---------------------------------------------------------------------------------


def _build_unet(options, num_classes, backbone, input_shape, normalization, name):
    _require("Unet", options, "decoder_attention_type", None)
    _require("Unet", options, "decoder_interpolation", "nearest")
    channels = options["decoder_channels"]
    if not isinstance(channels, (list, tuple)) or len(channels) != 5:
        raise unsupported("Unet", "decoder_channels", channels, "of 5 widths (encoder_depth 5)")
    return _model("UNet")(
        num_classes,
        input_shape=input_shape,
        backbone=backbone,
        decoder_filters=tuple(channels),
        batch_norm=use_norm("Unet", options["decoder_use_norm"]),
        normalization=normalization,
        name=name,
    )


def _conv_norm(copy, block, key):
    """A `ConvBNAct` from smp's `Conv2dReLU` at `key` (`.0` the conv, `.1` the BN)."""
    copy.conv(block.conv, f"{key}.0")
    if block.bn is not None:
        copy.bn(block.bn, f"{key}.1")


def _copy_unet(copy, model, options):
    for i in range(5):
        for j in (1, 2):
            block = model.get_layer(f"decoder_block{i + 1}_conv{j}")
            _conv_norm(copy, block, f"decoder.blocks.{i}.conv{j}")


# --- FPN ----------------------------------------------------------------------------------


def _build_fpn(options, num_classes, backbone, input_shape, normalization, name):
    _require("FPN", options, "decoder_interpolation", "nearest")
    _require("FPN", options, "upsampling", 4)
    _require("FPN", options, "decoder_merge_policy", "add", "cat")
    return _model("FPN")(
        num_classes,
        input_shape=input_shape,
        backbone=backbone,
        pyramid_filters=options["decoder_pyramid_channels"],
        segmentation_filters=options["decoder_segmentation_channels"],
        merge_policy=options["decoder_merge_policy"],
        dropout=options["decoder_dropout"],
        normalization=normalization,
        name=name,
    )


def _copy_fpn(copy, model, options):
    copy.conv(model.get_layer("lateral5"), "decoder.p5")
    for level in (4, 3, 2):
        copy.conv(model.get_layer(f"lateral{level}"), f"decoder.p{level}.skip_conv")
    for index, level in enumerate((5, 4, 3, 2)):
        for j in range(1, max(level - 2, 1) + 1):
            key = f"decoder.seg_blocks.{index}.block.{j - 1}.block"
            copy.conv(model.get_layer(f"segmentation{level}_conv{j}"), f"{key}.0")
            copy.group_norm(model.get_layer(f"segmentation{level}_norm{j}"), f"{key}.1")


# --- Linknet ------------------------------------------------------------------------------


def _build_linknet(options, num_classes, backbone, input_shape, normalization, name):
    return _model("Linknet")(
        num_classes,
        input_shape=input_shape,
        backbone=backbone,
        batch_norm=use_norm("Linknet", options["decoder_use_norm"]),
        normalization=normalization,
        name=name,
    )


def _copy_linknet(copy, model, options):
    for i in range(5):
        key = f"decoder.blocks.{i}.block"
        prefix = f"decoder_block{i + 1}"
        _conv_norm(copy, model.get_layer(f"{prefix}_reduce"), f"{key}.0")
        copy.conv_transpose(model.get_layer(f"{prefix}_upsample"), f"{key}.1.0")
        if use_norm("Linknet", options["decoder_use_norm"]):
            copy.bn(model.get_layer(f"{prefix}_upsample_bn"), f"{key}.1.1")
        _conv_norm(copy, model.get_layer(f"{prefix}_expand"), f"{key}.2")


# --- DeepLabV3 ----------------------------------------------------------------------------


def _build_deeplabv3(options, num_classes, backbone, input_shape, normalization, name):
    _require("DeepLabV3", options, "encoder_output_stride", 8, 16)
    _require("DeepLabV3", options, "decoder_aspp_separable", False)
    output_stride = options["encoder_output_stride"]
    _require("DeepLabV3", options, "upsampling", None, output_stride)
    rates = options["decoder_atrous_rates"]
    if not isinstance(rates, (list, tuple)) or len(rates) != 3:
        raise unsupported("DeepLabV3", "decoder_atrous_rates", rates, "of 3 rates")
    # smp dilates its encoders with `make_dilated`: stride 1 and the stage's full rate in
    # every block of a dilated stage, the first included (torchvision's own dilation
    # keeps the previous rate there).
    extra = {} if backbone in ("resnet18", "resnet34") else {"dilate_first_block": "full"}
    encoder = kbackbones.registry.RESNETS[backbone](
        input_shape=input_shape, output_stride=output_stride, **extra
    )
    width = options["decoder_channels"]
    # smp's ASPP pools the image to 1x1 and upsamples with align_corners=False, its head
    # upsamples with align_corners=True; from a 1x1 map both give the same constant map,
    # so one `align_corners=True` reproduces both.
    return _model("DeepLabV3")(
        num_classes,
        input_shape=input_shape,
        backbone=encoder,
        multi_grid=None,
        atrous_rates=tuple(rates),
        aspp_filters=width,
        dropout=options["decoder_aspp_dropout"],
        head_filters=width,
        align_corners=True,
        normalization=normalization,
        name=name,
    )


def _copy_deeplabv3(copy, model, options):
    aspp = model.get_layer("aspp")
    for index, branch in enumerate(aspp.branches):
        _conv_norm(copy, branch, f"decoder.aspp.convs.{index}")
    pool = len(aspp.branches)  # ASPPPooling: [AdaptiveAvgPool2d, conv, BN, ReLU]
    copy.conv(aspp.pool_conv.conv, f"decoder.aspp.convs.{pool}.1")
    copy.bn(aspp.pool_conv.bn, f"decoder.aspp.convs.{pool}.2")
    _conv_norm(copy, aspp.projection, "decoder.aspp.project")
    head = model.get_layer("head_conv")
    copy.conv(head.conv, "decoder.conv")
    copy.bn(head.bn, "decoder.bn")


#: The smp classes `from_smp` converts: class name -> `Architecture`. The options and
#: defaults are smp 0.6's constructor arguments (`decoders/*/model.py`).
ARCHITECTURES = {
    "Unet": Architecture(
        _build_unet,
        _copy_unet,
        {
            "decoder_channels": (256, 128, 64, 32, 16),
            "decoder_use_norm": "batchnorm",
            "decoder_attention_type": None,
            "decoder_interpolation": "nearest",
        },
        head="logits",
    ),
    "FPN": Architecture(
        _build_fpn,
        _copy_fpn,
        {
            "decoder_pyramid_channels": 256,
            "decoder_segmentation_channels": 128,
            "decoder_merge_policy": "add",
            "decoder_dropout": 0.2,
            "decoder_interpolation": "nearest",
            "upsampling": 4,
        },
        head="classifier",
    ),
    "Linknet": Architecture(
        _build_linknet, _copy_linknet, {"decoder_use_norm": "batchnorm"}, head="logits"
    ),
    "DeepLabV3": Architecture(
        _build_deeplabv3,
        _copy_deeplabv3,
        {
            "encoder_output_stride": 8,
            "decoder_channels": 256,
            "decoder_atrous_rates": (12, 24, 36),
            "decoder_aspp_separable": False,
            "decoder_aspp_dropout": 0.5,
            "upsampling": None,
        },
        head="classifier",
    ),
}

# smp's UnetPlusPlus, UPerNet, PSPNet and DeepLabV3Plus, whose builders and copies live
# in `_smp_decoders`.
ARCHITECTURES.update(_smp_decoders.architectures())


def read_config(path):
    """The `config.json` of an smp `save_pretrained` folder, as a dict."""
    path = os.fspath(path)
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"Expected a folder written by an smp model's `save_pretrained` (with config.json "
            f"and model.safetensors). Received: path={path!r}, which has no config.json"
        )
    with open(file, encoding="utf-8") as handle:
        try:
            config = json.load(handle)
        except ValueError as error:
            raise ValueError(f"{file} is not valid JSON ({error}).") from None
    if not isinstance(config, dict):
        raise ValueError(f"Expected {file} to hold a JSON object. Received: {config!r}")
    return config


def _weights_file(path):
    for name in ("model.safetensors", "pytorch_model.bin"):
        file = os.path.join(os.fspath(path), name)
        if os.path.isfile(file):
            return file
    raise FileNotFoundError(
        f"Expected the weights of the smp model in {os.fspath(path)!r} as model.safetensors "
        "(what `save_pretrained` writes) or pytorch_model.bin; found neither."
    )


def _architecture(config):
    arch = config.get("_model_class")
    if arch in REFUSED:
        raise ValueError(f"smp's {arch} is not converted: {REFUSED[arch]}.")
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"Expected an smp model of a class in {tuple(ARCHITECTURES)} (config.json's "
            f"'_model_class'). Received: _model_class={arch!r}"
        )
    return arch, ARCHITECTURES[arch]


def _options(arch, architecture, config):
    """The class's options from `config`, smp's defaults filled in; refuses the others."""
    config = {_ALIASES.get(k, k): v for k, v in config.items() if not k.startswith("_")}
    known = set(COMMON_OPTIONS) | set(architecture.options) | set(_READ_SEPARATELY)
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(
            f"kseg does not convert smp {arch} models with the option(s) {unknown} (for "
            f"example a timm encoder's arguments); it knows {sorted(known)}. Received: "
            + ", ".join(f"{k}={config[k]!r}" for k in unknown)
        )
    for option, value in COMMON_OPTIONS.items():
        if option in architecture.options:  # the class's own default and rules
            continue
        given = config.get(option, value)
        if option == "activation" and given == "identity":
            given = None
        if given != value:
            hint = {
                "activation": "; kseg models return logits: save the smp model with "
                "activation=None (the weights are the same)",
                "aux_params": "; the classification head on the encoder is not converted",
            }.get(option, "")
            raise ValueError(
                f"kseg converts smp models with `{option}={value!r}`{hint}. Received: "
                f"{option}={given!r}"
            )
    return {**architecture.options, **{k: config[k] for k in architecture.options if k in config}}


def _backbone(model):
    for layer in model.layers:
        if isinstance(layer, kbackbones.Backbone):
            return layer
    raise ValueError(f"{model.name!r} has no kseg backbone.")  # every builder has one


def from_smp(path, num_classes=None, input_shape=(None, None, 3), name=None, normalization="torch"):
    """The kseg model of a segmentation_models.pytorch model saved with `save_pretrained`.

    Reads the folder smp 0.6's `model.save_pretrained(folder)` writes
    (`config.json`: `"_model_class"`, `encoder_name`, `classes` and the
    decoder options; `model.safetensors`, or `pytorch_model.bin`, read with
    torch), builds the kseg model with the same layout and copies every weight
    into it. Converted classes (`ARCHITECTURES`):

    - `Unet`: `kseg.models.UNet` on the encoder (`decoder_channels`,
      `decoder_use_norm`).
    - `FPN`: `kseg.models.FPN` (`decoder_pyramid_channels`,
      `decoder_segmentation_channels`, `decoder_merge_policy`,
      `decoder_dropout`).
    - `Linknet`: `kseg.models.Linknet` (`decoder_use_norm`).
    - `UnetPlusPlus`: `kseg.models.UNetPlusPlus` (`decoder_channels`,
      `decoder_use_norm`).
    - `UPerNet`: `kseg.models.UPerNet` with smp's options
      (`decoder_channels`; `feature_norm=True`, no dropout, the logits
      upsampled with `align_corners=True`).
    - `DeepLabV3`: `kseg.models.DeepLabV3` on the encoder dilated as smp's
      (`encoder_output_stride` 8 or 16, every block of a dilated stage at the
      full rate), no multi-grid, its rates, a 3x3 ConvBNReLU head and
      bilinear upsampling with `align_corners=True` (`decoder_channels`,
      `decoder_atrous_rates`, `decoder_aspp_dropout`; not separable).
    - `DeepLabV3Plus`: `kseg.models.DeepLabV3Plus` on the encoder dilated as
      smp's (`encoder_output_stride` 16 or 8) with smp's decoder
      (`separable_inner_bn_act=False`: its separable convolutions have
      nothing between the depthwise and pointwise parts; `aspp_conv=True`:
      its separable ConvBNReLU after the ASPP; one separable fusion
      convolution; every upsampling with `align_corners=True`; the 1x1
      classifier; `decoder_channels`, `decoder_atrous_rates`,
      `decoder_aspp_separable`, `decoder_aspp_dropout`).
    - `PSPNet`: `kseg.models.PSPNet` on the encoder cut after its stride-8
      stage (smp's `encoder_depth=3`; 4 and 5 convert too), with smp's pyramid
      (no BatchNorm in the bin-1 branch, the pyramid before the feature in the
      concatenation, `align_corners=True`), a 1x1 fusion convolution, a 3x3
      classifier and bilinear upsampling with `align_corners=True`
      (`psp_out_channels`, `decoder_use_norm`, `psp_dropout`; `upsampling`
      must be `2**encoder_depth`).

    Encoders (`ENCODERS`): `resnet18`, `resnet34`, `resnet50`, `resnet101`
    (torchvision's ResNets; kseg's `"resnet50_v1.5"` / `"resnet101_v1.5"`).
    Any other class, encoder, option or option value kseg does not express
    is refused by name, with the value: `encoder_depth` other than 5 (3 to 5
    for PSPNet), `in_channels` other than 3, an `activation`, `aux_params`,
    attention in the U-Net, other interpolations or upsampling factors.

    Preprocessing: smp models take the image the user normalised; smp's
    ResNet encoders were trained on RGB in [0, 1] normalised with the
    ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225)
    (`smp.encoders.get_preprocessing_params(name)`). The kseg model takes
    RGB in [0, 255] and normalises inside (`normalization="torch"`, the same
    statistics), so it gives smp's logits on `(image / 255 - mean) / std`.
    Pass another `normalization` (see `kseg.models.UNet`) for a model trained
    on other statistics.

    The logits equal smp's (smp in inference mode, to float32 rounding) at
    every size smp accepts (height and width divisible by the encoder's output
    stride: 32; 16 or 8 for the DeepLabs; 8 for PSPNet's default depth).
    kseg takes any size; at other sizes its decoders align maps by resizing to
    the exact size of the map they meet (see each builder's docstring), where
    smp refuses.

    Args:
        path: the folder (`str` or path-like).
        num_classes: None (default: the checkpoint's `classes`) or another
            class count: every weight but the segmentation head's loads, and
            the head starts from kseg's initialisation (fine-tuning).
        input_shape: the model's input shape. Defaults to `(None, None, 3)`.
        name: model name. Defaults to the class and encoder, e.g.
            `"fpn_resnet34"`.
        normalization: the model's input normalisation. Defaults to
            `"torch"`, see above.

    Returns:
        A `kseg.models.SegmentationModel` mapping `(B, H, W, 3)` RGB images in
        [0, 255] to float32 logits `(B, H, W, classes)`.

    Raises:
        FileNotFoundError: no config.json or weights in `path`.
        ValueError: an unsupported class, encoder or option (named); or a state
            dict that does not fit the layout: the message lists every missing,
            unexpected and misshapen key, and nothing is loaded.

    Example:

    >>> model = smp.FPN("resnet34", classes=5)           # in PyTorch, then trained
    >>> model.save_pretrained("fpn_resnet34")
    >>> keras_model = kseg.convert.from_smp("fpn_resnet34")
    >>> logits = keras_model.predict(images)             # RGB in [0, 255], (B, H, W, 5)
    """
    config = read_config(path)
    arch, architecture = _architecture(config)
    encoder = config.get("encoder_name", "resnet34")
    if encoder not in ENCODERS:
        raise ValueError(
            f"kseg converts smp models on the encoders {tuple(ENCODERS)}. Received: "
            f"encoder_name={encoder!r}"
        )
    options = _options(arch, architecture, config)
    checkpoint_classes = check_int("classes", config.get("classes", 1))
    num_classes = checkpoint_classes if num_classes is None else num_classes
    num_classes = check_int("num_classes", num_classes)
    state = read_state_dict(_weights_file(path))
    name = name or f"{arch.lower()}_{encoder}"
    model = architecture.build(
        options, num_classes, ENCODERS[encoder], tuple(input_shape), normalization, name
    )
    copy = StrictCopy(state, f"smp {arch} on {encoder}, {os.fspath(path)}")
    resnet_copy(copy, _backbone(model), prefix="encoder.")
    architecture.copy(copy, model, options)
    head = model.get_layer(architecture.head)
    if num_classes != checkpoint_classes:
        copy.skip("segmentation_head.")  # kept at kseg's initialisation for the new classes
        copy.keep(head)
    else:
        copy.conv(head, "segmentation_head.0")
    return copy.finish(model)
