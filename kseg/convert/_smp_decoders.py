"""segmentation_models.pytorch's UNet++ and UPerNet as kseg models: their layouts and copies.

smp 0.6 (`segmentation_models_pytorch/decoders/{unetplusplus,upernet}`) names
its weights `encoder.*` (a torchvision ResNet without `fc`), `decoder.*` and
`segmentation_head.0.*` (the classifier conv). `build_from_config` builds the
kseg model an smp model's config describes (`model.config`, or the
`config.json` of `save_pretrained`), and `copy_encoder`, `copy_unetplusplus`
and `copy_upernet` add its keys to a `kseg.convert.state_dict.StrictCopy`:

>>> copy = StrictCopy(read_state_dict(smp_model.state_dict()), "smp UPerNet")
>>> model = build_from_config(smp_model.config, "UPerNet")
>>> copy_encoder(copy, model)
>>> copy_upernet(copy, model)
>>> copy.finish(model)  # logits equal smp's on the same image
"""

import collections.abc
import re

from kseg.backbones import Backbone
from kseg.convert.state_dict import resnet_copy

#: smp's encoder names and the kseg backbone of the same layout: torchvision's
#: ResNets (smp's `ResNetEncoder` is torchvision's `ResNet` without `fc` and
#: `avgpool`), basic-block ones by their own name, bottleneck ones as v1.5.
SMP_ENCODERS = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50_v1.5",
    "resnet101": "resnet101_v1.5",
}

# Per architecture (smp's class name): the config keys kseg reads, with the only values
# it takes where they are restricted (None: any value), beside encoder_name, classes,
# in_channels, encoder_weights (the state dict brings the weights) and activation (kseg
# returns logits).
_NORMS = ("batchnorm", True)
_SUPPORTED = {
    "UnetPlusPlus": {
        "encoder_depth": (5,),
        "decoder_use_norm": (*_NORMS, False),
        "decoder_channels": None,
        "decoder_attention_type": (None,),
        "decoder_interpolation": ("nearest",),
        "aux_params": (None,),
    },
    "UPerNet": {
        "encoder_depth": (5,),
        "decoder_use_norm": _NORMS,
        "decoder_channels": None,
        "upsampling": (4,),
        "aux_params": (None,),
    },
}
_FREE = ("encoder_name", "classes", "in_channels", "encoder_weights", "activation")

# A conv of the nested decoder: node (i, j), conv k.
_NODE_CONV = re.compile(r"decoder_x(\d)_(\d)_conv([12])")


def backbone_name(encoder_name):
    """The kseg backbone name of an smp encoder name (`SMP_ENCODERS`)."""
    if encoder_name not in SMP_ENCODERS:
        raise ValueError(
            f"Expected an smp encoder with a kseg counterpart, one of {tuple(SMP_ENCODERS)}. "
            f"Received: encoder_name={encoder_name!r}"
        )
    return SMP_ENCODERS[encoder_name]


def _check_config(config, arch):
    if arch not in _SUPPORTED:
        raise ValueError(
            f"Expected the smp architecture to be one of {tuple(_SUPPORTED)}. Received: "
            f"arch={arch!r}"
        )
    if not isinstance(config, collections.abc.Mapping):
        raise TypeError(
            f"Expected `config` to be an smp model's config (a dict, `model.config`). "
            f"Received: config of type {type(config).__name__}"
        )
    supported = _SUPPORTED[arch]
    for key, value in config.items():
        if key.startswith("_") or key in _FREE:
            continue
        if key not in supported:
            raise ValueError(
                f"smp's {arch} option {key!r} has no kseg counterpart. Received: {key}={value!r}"
            )
        allowed = supported[key]
        if allowed is not None and not any(
            value is a or (type(value) is type(a) and value == a) for a in allowed
        ):
            raise ValueError(
                f"kseg builds smp's {arch} with {key} in {allowed}. Received: {key}={value!r}"
            )
    if "encoder_name" not in config or "classes" not in config:
        raise ValueError(
            "Expected the smp config to name `encoder_name` and `classes`. Received: keys "
            f"{sorted(config)}"
        )


def build_from_config(config, arch=None, input_shape=None, normalization="torch", name=None):
    """The kseg model of an smp `UnetPlusPlus` or `UPerNet` config, with random weights.

    Args:
        config: the smp model's config (`model.config`, or the `config.json`
            `save_pretrained` writes); smp's defaults fill what it leaves out.
        arch: `"UnetPlusPlus"` or `"UPerNet"`; None reads the config's
            `_model_class` (written by `save_pretrained`).
        input_shape: the model's input shape. Defaults to `(None, None,
            in_channels)`.
        normalization: the model's input normalisation. Defaults to
            `"torch"`: RGB images in [0, 255], normalised with ImageNet's mean
            and std on [0, 1], what smp's ResNet encoders take.
        name: model name. Defaults to the builder's.

    Returns:
        `kseg.models.UNetPlusPlus` or `kseg.models.UPerNet` (with the options
        that make it smp's, see its docstring) on the kseg backbone of the
        config's encoder (`SMP_ENCODERS`). smp's `activation` is not part of
        it: the model returns logits.
    """
    from kseg import models

    if arch is None:
        arch = config.get("_model_class") if isinstance(config, collections.abc.Mapping) else None
    _check_config(config, arch)
    backbone = backbone_name(config["encoder_name"])
    if input_shape is None:
        input_shape = (None, None, config.get("in_channels", 3))
    common = {"input_shape": input_shape, "backbone": backbone, "normalization": normalization}
    if name is not None:
        common["name"] = name
    if arch == "UnetPlusPlus":
        return models.UNetPlusPlus(
            config["classes"],
            decoder_filters=tuple(config.get("decoder_channels", (256, 128, 64, 32, 16))),
            batch_norm=config.get("decoder_use_norm", "batchnorm") is not False,
            **common,
        )
    return models.UPerNet(
        config["classes"],
        decoder_filters=config.get("decoder_channels", 256),
        feature_norm=True,
        dropout=0.0,
        logits_align_corners=True,
        **common,
    )


def _backbone(model):
    found = [layer for layer in model.layers if isinstance(layer, Backbone)]
    if len(found) != 1:
        raise ValueError(
            f"Expected a model holding one kseg backbone. Received: {model.name!r} with "
            f"{len(found)}"
        )
    return found[0]


def copy_encoder(copy, model, prefix="encoder."):
    """Adds smp's ResNet encoder keys (torchvision's, after `prefix`) for `model`'s backbone."""
    return resnet_copy(copy, _backbone(model), prefix=prefix)


def _conv_bn(copy, layer, key):
    """A `ConvBNAct` from smp's `Conv2dReLU` `key` (`key.0`: the conv, `key.1`: the norm)."""
    copy.conv(layer.conv, f"{key}.0")
    if layer.bn is not None:
        copy.bn(layer.bn, f"{key}.1")


def _layer_norm(copy, layer, key):
    """A LayerNormalization from torch `key.{weight,bias}` (Keras' `gamma`, `beta`)."""
    keys = [f"{key}.weight", f"{key}.bias"]
    copy._assign(layer, [copy._take(k) for k in keys], keys)


def copy_unetplusplus(copy, model, prefix="decoder.", head="segmentation_head.0"):
    """Adds smp's `UnetPlusPlusDecoder` and segmentation head keys for a `UNetPlusPlus`.

    smp's block `x_{d}_{l}` (`prefix` `blocks.x_{d}_{l}.conv{k}.{0,1}`) is the
    node `(i, j) = (3 - l, l + 1 - d)` of `kseg.models.UNetPlusPlus`, its
    `x_0_4` the final block; `head` is the 3x3 classifier conv. smp's centre
    block of VGG encoders (`center.*`), which it builds but never calls, is
    skipped.
    """
    for layer in model.layers:
        match = _NODE_CONV.fullmatch(layer.name)
        if match is not None:
            i, j, k = (int(g) for g in match.groups())
            _conv_bn(copy, layer, f"{prefix}blocks.x_{4 - i - j}_{3 - i}.conv{k}")
        elif layer.name in ("decoder_final_conv1", "decoder_final_conv2"):
            _conv_bn(copy, layer, f"{prefix}blocks.x_0_4.conv{layer.name[-1]}")
    copy.skip(f"{prefix}center.")
    copy.conv(model.get_layer("logits"), head)
    return copy


def copy_upernet(copy, model, prefix="decoder.", head="segmentation_head.0"):
    """Adds smp's `UPerNetDecoder` and segmentation head keys for a `UPerNet`.

    smp's `feature_norms.{0..3}` are kseg's `feature_norm{1..4}` (stride 4 to
    32), `psp.blocks.{b}.1` the branches of `ppm` and `psp.out_conv` its
    `ppm_bottleneck`; its `fpn_lateral_blocks` and `fpn_conv_blocks` run from
    stride 16 down, so index `m` is kseg's level `3 - m`; `fusion_block` is
    `fpn_bottleneck`, and `head` the 1x1 classifier. The model must be built
    as smp's (see `kseg.models.UPerNet`): a kseg layer without a key (an
    auxiliary head) or a key without a layer (smp's feature norms for a model
    built without them) makes `copy.finish` refuse.
    """
    names = {layer.name for layer in model.layers}
    for k in range(1, 5):
        if f"feature_norm{k}" in names:
            _layer_norm(copy, model.get_layer(f"feature_norm{k}"), f"{prefix}feature_norms.{k - 1}")
    for index, branch in enumerate(model.get_layer("ppm").convs):
        _conv_bn(copy, branch, f"{prefix}psp.blocks.{index}.1")
    _conv_bn(copy, model.get_layer("ppm_bottleneck"), f"{prefix}psp.out_conv")
    for index, level in enumerate((3, 2, 1)):
        lateral = model.get_layer(f"lateral{level}")
        _conv_bn(copy, lateral, f"{prefix}fpn_lateral_blocks.{index}.conv_norm_relu")
        _conv_bn(copy, model.get_layer(f"fpn_conv{level}"), f"{prefix}fpn_conv_blocks.{index}")
    _conv_bn(copy, model.get_layer("fpn_bottleneck"), f"{prefix}fusion_block")
    copy.conv(model.get_layer("classifier"), head)
    return copy
