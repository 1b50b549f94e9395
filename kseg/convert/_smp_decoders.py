"""segmentation_models.pytorch's UNet++ and UPerNet as kseg models: their layouts and copies.

smp 0.6 (`segmentation_models_pytorch/decoders/{unetplusplus,upernet}`) names
its weights `encoder.*` (a torchvision ResNet without `fc`), `decoder.*` and
`segmentation_head.0.*` (the classifier conv). For each of the two classes this
module has what `kseg.convert.smp.ARCHITECTURES` holds per class: the options
and smp's defaults (`UNETPLUSPLUS_OPTIONS`, `UPERNET_OPTIONS`), a build
function `build_*(options, num_classes, backbone, input_shape, normalization,
name)` and a copy function `copy_*(copy, model, options)` that adds the
decoder's keys to a `kseg.convert.state_dict.StrictCopy` (and, with `head=`,
the segmentation head's); the kseg layer of smp's `segmentation_head.0` is
`"logits"` (UNet++) and `"classifier"` (UPerNet); `architectures()` gives the
two table entries. `build_from_config` builds the model of an smp config
directly:

>>> copy = StrictCopy(read_state_dict(smp_model.state_dict()), "smp UPerNet")
>>> model = build_from_config(smp_model.config, "UPerNet")
>>> copy_encoder(copy, model)
>>> copy_upernet(copy, model, head="segmentation_head.0")
>>> copy.finish(model)  # logits equal smp's on the same image
"""

import collections.abc
import re

from kseg.backbones import Backbone
from kseg.convert.state_dict import resnet_copy

#: smp 0.6 `UnetPlusPlus`'s own options and their defaults (`decoders/unetplusplus/model.py`).
UNETPLUSPLUS_OPTIONS = {
    "decoder_channels": (256, 128, 64, 32, 16),
    "decoder_use_norm": "batchnorm",
    "decoder_attention_type": None,
    "decoder_interpolation": "nearest",
}

#: smp 0.6 `UPerNet`'s own options and their defaults (`decoders/upernet/model.py`).
UPERNET_OPTIONS = {
    "decoder_channels": 256,
    "decoder_use_norm": "batchnorm",
    "upsampling": 4,
}

# The kseg layer smp's `segmentation_head.0` loads into, and the options, per class.
_CLASSES = {
    "UnetPlusPlus": ("logits", UNETPLUSPLUS_OPTIONS),
    "UPerNet": ("classifier", UPERNET_OPTIONS),
}

# A conv of the nested decoder: node (i, j), conv k.
_NODE_CONV = re.compile(r"decoder_x(\d)_(\d)_conv([12])")


def build_unetplusplus(options, num_classes, backbone, input_shape, normalization, name):
    """`kseg.models.UNetPlusPlus` with the layout of smp's `UnetPlusPlus` with `options`.

    `options` holds every key of `UNETPLUSPLUS_OPTIONS`; `backbone` is the kseg
    backbone name of smp's encoder (`kseg.convert.smp.ENCODERS`). Raises
    `ValueError` for an attention type, an interpolation other than nearest,
    or other than 5 decoder widths.
    """
    from kseg import models
    from kseg.convert.smp import unsupported, use_norm

    for option, value in (("decoder_attention_type", None), ("decoder_interpolation", "nearest")):
        if options[option] != value:
            raise unsupported("UnetPlusPlus", option, options[option], repr(value))
    channels = options["decoder_channels"]
    if not isinstance(channels, (list, tuple)) or len(channels) != 5:
        raise unsupported(
            "UnetPlusPlus", "decoder_channels", channels, "of 5 widths (encoder_depth 5)"
        )
    return models.UNetPlusPlus(
        num_classes,
        input_shape=input_shape,
        backbone=backbone,
        decoder_filters=tuple(channels),
        batch_norm=use_norm("UnetPlusPlus", options["decoder_use_norm"]),
        normalization=normalization,
        name=name,
    )


def build_upernet(options, num_classes, backbone, input_shape, normalization, name):
    """`kseg.models.UPerNet` with the layout of smp's `UPerNet` with `options`.

    smp's layout is kseg's with `feature_norm=True`, `dropout=0.0` and
    `logits_align_corners=True` (see `kseg.models.UPerNet`). Raises
    `ValueError` for an `upsampling` other than 4 (the stride of the decoder's
    output) and for a `decoder_use_norm` other than BatchNorm (smp's pyramid
    pooling bottleneck keeps BatchNorm whatever it says).
    """
    from kseg import models
    from kseg.convert.smp import unsupported, use_norm

    if options["upsampling"] != 4:
        raise unsupported("UPerNet", "upsampling", options["upsampling"], "4")
    if not use_norm("UPerNet", options["decoder_use_norm"]):
        raise unsupported("UPerNet", "decoder_use_norm", options["decoder_use_norm"], "'batchnorm'")
    return models.UPerNet(
        num_classes,
        input_shape=input_shape,
        backbone=backbone,
        decoder_filters=options["decoder_channels"],
        feature_norm=True,
        dropout=0.0,
        logits_align_corners=True,
        normalization=normalization,
        name=name,
    )


def architectures():
    """The entries of `kseg.convert.smp.ARCHITECTURES` for smp's `UnetPlusPlus` and `UPerNet`.

    `{class name: kseg.convert.smp.Architecture}`, for `from_smp` to convert
    `save_pretrained` folders of the two classes
    (`ARCHITECTURES.update(architectures())`).
    """
    from kseg.convert.smp import Architecture

    return {
        "UnetPlusPlus": Architecture(
            build_unetplusplus, copy_unetplusplus, dict(UNETPLUSPLUS_OPTIONS), head="logits"
        ),
        "UPerNet": Architecture(
            build_upernet, copy_upernet, dict(UPERNET_OPTIONS), head="classifier"
        ),
    }


def build_from_config(config, arch=None, input_shape=None, normalization="torch", name=None):
    """The kseg model of an smp `UnetPlusPlus` or `UPerNet` config, with random weights.

    Args:
        config: the smp model's config (`model.config`, or the `config.json`
            `save_pretrained` writes); smp's defaults fill what it leaves out.
        arch: `"UnetPlusPlus"` or `"UPerNet"`; None reads the config's
            `_model_class` (written by `save_pretrained`).
        input_shape: the model's input shape. Defaults to `(None, None, 3)`.
        normalization: the model's input normalisation. Defaults to
            `"torch"`: RGB images in [0, 255], normalised with ImageNet's mean
            and std on [0, 1], what smp's ResNet encoders take.
        name: model name. Defaults to the class and encoder, e.g.
            `"upernet_resnet34"`.

    Returns:
        `kseg.models.UNetPlusPlus` or `kseg.models.UPerNet` with smp's layout
        on the kseg backbone of the config's encoder
        (`kseg.convert.smp.ENCODERS`).

    Raises:
        ValueError: another class, encoder, option or option value than kseg
            converts (the same rules as `kseg.convert.from_smp`).
    """
    from kseg.convert.smp import COMMON_OPTIONS, ENCODERS

    if not isinstance(config, collections.abc.Mapping):
        raise TypeError(
            "Expected `config` to be an smp model's config (a dict, `model.config`). "
            f"Received: config of type {type(config).__name__}"
        )
    arch = config.get("_model_class") if arch is None else arch
    if arch not in _CLASSES:
        raise ValueError(f"Expected `arch` in {tuple(_CLASSES)}. Received: arch={arch!r}")
    encoder = config.get("encoder_name", "resnet34")
    if encoder not in ENCODERS:
        raise ValueError(
            f"Expected an smp encoder with a kseg counterpart, one of {tuple(ENCODERS)}. "
            f"Received: encoder_name={encoder!r}"
        )
    own = _CLASSES[arch][1]
    known = {"encoder_name", "encoder_weights", "classes", *COMMON_OPTIONS, *own}
    for key, value in config.items():
        if not key.startswith("_") and key not in known:
            raise ValueError(
                f"smp's {arch} option {key!r} has no kseg counterpart. Received: {key}={value!r}"
            )
    for key, value in COMMON_OPTIONS.items():
        given = config.get(key, value)
        if key == "activation" and given == "identity":  # the same logits
            given = None
        if given != value:
            raise ValueError(
                f"kseg converts smp models with `{key}={value!r}`. Received: {key}={given!r}"
            )
    options = {key: config.get(key, default) for key, default in own.items()}
    build = build_unetplusplus if arch == "UnetPlusPlus" else build_upernet
    return build(
        options,
        config.get("classes", 1),
        ENCODERS[encoder],
        (None, None, 3) if input_shape is None else tuple(input_shape),
        normalization,
        name or f"{arch.lower()}_{encoder}",
    )


def copy_encoder(copy, model, prefix="encoder."):
    """Adds smp's ResNet encoder keys (torchvision's, after `prefix`) for `model`'s backbone."""
    found = [layer for layer in model.layers if isinstance(layer, Backbone)]
    if len(found) != 1:
        raise ValueError(
            f"Expected a model holding one kseg backbone. Received: {model.name!r} with "
            f"{len(found)}"
        )
    return resnet_copy(copy, found[0], prefix=prefix)


def _conv_bn(copy, layer, key):
    """A `ConvBNAct` from smp's `Conv2dReLU` `key` (`key.0`: the conv, `key.1`: the norm)."""
    copy.conv(layer.conv, f"{key}.0")
    if layer.bn is not None:
        copy.bn(layer.bn, f"{key}.1")


def copy_unetplusplus(copy, model, options=None, prefix="decoder.", head=None):
    """Adds smp's `UnetPlusPlusDecoder` keys (and the head's) for a `UNetPlusPlus`.

    smp's block `x_{d}_{l}` (`prefix` `blocks.x_{d}_{l}.conv{k}.{0,1}`) is the
    node `(i, j) = (3 - l, l + 1 - d)` of `kseg.models.UNetPlusPlus`, its
    `x_0_4` the final block. smp's centre block of VGG encoders (`center.*`),
    which it builds but never calls, is skipped. `options` (smp's, as
    `kseg.convert.smp`'s table passes them) are not needed; `head`, e.g.
    `"segmentation_head.0"`, also copies the 3x3 classifier (`logits`).
    """
    for layer in model.layers:
        match = _NODE_CONV.fullmatch(layer.name)
        if match is not None:
            i, j, k = (int(g) for g in match.groups())
            _conv_bn(copy, layer, f"{prefix}blocks.x_{4 - i - j}_{3 - i}.conv{k}")
        elif layer.name in ("decoder_final_conv1", "decoder_final_conv2"):
            _conv_bn(copy, layer, f"{prefix}blocks.x_0_4.conv{layer.name[-1]}")
    copy.skip(f"{prefix}center.")
    if head is not None:
        copy.conv(model.get_layer("logits"), head)
    return copy


def copy_upernet(copy, model, options=None, prefix="decoder.", head=None):
    """Adds smp's `UPerNetDecoder` keys (and the head's) for a `UPerNet`.

    smp's `feature_norms.{0..3}` are kseg's `feature_norm{1..4}` (stride 4 to
    32), `psp.blocks.{b}.1` the branches of `ppm` and `psp.out_conv` its
    `ppm_bottleneck`; its `fpn_lateral_blocks` and `fpn_conv_blocks` run from
    stride 16 down, so index `m` is kseg's level `3 - m`; `fusion_block` is
    `fpn_bottleneck`. `options` are not needed; `head`, e.g.
    `"segmentation_head.0"`, also copies the 1x1 classifier (`classifier`).
    The model must be built as smp's (`build_upernet`): a kseg layer without a
    key (an auxiliary head) or a key without a layer (smp's feature norms for a
    model built without them) makes `copy.finish` refuse.
    """
    names = {layer.name for layer in model.layers}
    for k in range(1, 5):
        if f"feature_norm{k}" in names:
            copy.layer_norm(model.get_layer(f"feature_norm{k}"), f"{prefix}feature_norms.{k - 1}")
    for index, branch in enumerate(model.get_layer("ppm").convs):
        _conv_bn(copy, branch, f"{prefix}psp.blocks.{index}.1")
    _conv_bn(copy, model.get_layer("ppm_bottleneck"), f"{prefix}psp.out_conv")
    for index, level in enumerate((3, 2, 1)):
        lateral = model.get_layer(f"lateral{level}")
        _conv_bn(copy, lateral, f"{prefix}fpn_lateral_blocks.{index}.conv_norm_relu")
        _conv_bn(copy, model.get_layer(f"fpn_conv{level}"), f"{prefix}fpn_conv_blocks.{index}")
    _conv_bn(copy, model.get_layer("fpn_bottleneck"), f"{prefix}fusion_block")
    if head is not None:
        copy.conv(model.get_layer("classifier"), head)
    return copy
