"""segmentation_models.pytorch's UNet++, UPerNet, PSPNet and DeepLabV3+ as kseg models.

smp 0.6 (`segmentation_models_pytorch/decoders/{unetplusplus,upernet}`) names
its weights `encoder.*` (a torchvision ResNet without `fc`), `decoder.*` and
`segmentation_head.0.*` (the classifier conv). For each of the two classes this
module has what `kseg.convert.smp.ARCHITECTURES` holds per class: the options
and smp's defaults (`UNETPLUSPLUS_OPTIONS`, `UPERNET_OPTIONS`; PSPNet's and
DeepLabV3Plus's in `architectures()`), a build
function `build_*(options, num_classes, backbone, input_shape, normalization,
name)` and a copy function `copy_*(copy, model, options)` that adds the
decoder's keys to a `kseg.convert.state_dict.StrictCopy` (and, with `head=`,
the segmentation head's); the kseg layer of smp's `segmentation_head.0` is
`"logits"` (UNet++) and `"classifier"` (the others); `architectures()` gives the
four table entries. `build_from_config` builds the model of an smp UNet++ or
UPerNet config directly:

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

#: smp 0.6 `PSPNet`'s own options and their defaults (`decoders/pspnet/model.py`); its
#: `encoder_depth` defaults to 3, not 5.
PSPNET_OPTIONS = {
    "encoder_depth": 3,
    "psp_out_channels": 512,
    "decoder_use_norm": "batchnorm",
    "psp_dropout": 0.2,
    "upsampling": 8,
}

#: smp 0.6 `DeepLabV3Plus`'s own options and their defaults (`decoders/deeplabv3/model.py`).
DEEPLABV3PLUS_OPTIONS = {
    "encoder_output_stride": 16,
    "decoder_channels": 256,
    "decoder_atrous_rates": (12, 24, 36),
    "decoder_aspp_separable": True,
    "decoder_aspp_dropout": 0.5,
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


def smp_dilated_resnet(backbone, input_shape, output_stride):
    """The kseg ResNet `backbone` (a name) dilated as smp dilates its encoders.

    smp's `make_dilated` gives every block of a dilated stage stride 1 and the
    stage's full rate, the first block included (torchvision's own dilation
    keeps the previous rate there); kseg's basic-block ResNets always do.
    """
    from kseg import backbones

    extra = {} if backbone in ("resnet18", "resnet34") else {"dilate_first_block": "full"}
    return backbones.registry.RESNETS[backbone](
        input_shape=input_shape, output_stride=output_stride, **extra
    )


def build_pspnet(options, num_classes, backbone, input_shape, normalization, name):
    """`kseg.models.PSPNet` with the layout of smp's `PSPNet` with `options`.

    smp's layout (see `kseg.models.PSPNet`): the encoder cut after stage
    `encoder_depth - 1` (smp's default depth 3: ResNet stage 2, stride 8, no
    dilation), the pyramid (bins 1, 2, 3, 6 of `C // 4` channels, the bin-1
    branch without BatchNorm, bilinear with `align_corners=True`) concatenated
    before the feature, a 1x1 ConvBNReLU fusion to `psp_out_channels`, channel
    dropout, a 3x3 classifier and bilinear upsampling by `upsampling` with
    `align_corners=True` (kseg resizes to the input size: the same map for
    the sizes smp takes, divisible by `2**encoder_depth`). Raises
    `ValueError` for an `encoder_depth` outside 3...5 (smp's range) or an
    `upsampling` other than `2**encoder_depth` (logits at another size than
    the input).
    """
    from kseg import models
    from kseg.convert.smp import unsupported, use_norm

    depth = options["encoder_depth"]
    if depth not in (3, 4, 5):
        raise unsupported("PSPNet", "encoder_depth", depth, "3, 4 or 5")
    if options["upsampling"] != 2**depth:
        raise unsupported(
            "PSPNet",
            "upsampling",
            options["upsampling"],
            f"{2**depth} (2**encoder_depth, logits at the input size)",
        )
    return models.PSPNet(
        num_classes,
        input_shape=input_shape,
        backbone=backbone,
        output_stride=2**depth,
        feature=f"stage{depth - 1}",
        fusion_filters=options["psp_out_channels"],
        dropout=options["psp_dropout"],
        align_corners=True,
        normalization=normalization,
        batch_norm=use_norm("PSPNet", options["decoder_use_norm"]),
        global_bn=False,
        pyramid_first=True,
        fusion_kernel_size=1,
        classifier_kernel_size=3,
        name=name,
    )


def copy_pspnet(copy, model, options=None, prefix="decoder.", head=None):
    """Adds smp's `PSPDecoder` keys (and the head's) for a `PSPNet` built by `build_pspnet`.

    smp's `psp.blocks.{i}.pool.1` (bins 1, 2, 3, 6) are the branches of `ppm`,
    its `conv` the `fusion` ConvBNAct. smp keeps the encoder stages it does not
    call (`encoder_depth` < 5) in its state dict; their keys are skipped.
    """
    for index, branch in enumerate(model.get_layer("ppm").convs):
        _conv_bn(copy, branch, f"{prefix}psp.blocks.{index}.pool.1")
    _conv_bn(copy, model.get_layer("fusion"), f"{prefix}conv")
    depth = 3 if options is None else options["encoder_depth"]
    for stage in range(depth, 5):
        copy.skip(f"encoder.layer{stage}.")
    if head is not None:
        copy.conv(model.get_layer("classifier"), head)
    return copy


def build_deeplabv3plus(options, num_classes, backbone, input_shape, normalization, name):
    """`kseg.models.DeepLabV3Plus` with the layout of smp's `DeepLabV3Plus` with `options`.

    smp's layout (see `kseg.models.DeepLabV3Plus`): the encoder dilated to
    `encoder_output_stride` (8 or 16) as smp dilates it, its ASPP (separable
    branches with nothing between the depthwise and pointwise convolutions
    when `decoder_aspp_separable`), a separable ConvBNReLU after the ASPP, the
    map upsampled bilinearly with `align_corners=True` to stride 4 (smp by a
    fixed factor, 4 or 2, kseg to the size of the stride-4 feature: the same
    map for the sizes smp takes, divisible by the output stride), a 1x1
    ConvBNReLU of 48 channels on the stride-4 feature, one separable
    ConvBNReLU fusion, a 1x1 classifier and bilinear upsampling by 4 with
    `align_corners=True`. Raises `ValueError` for another output stride, not
    3 atrous rates, or an `upsampling` other than 4.
    """
    from kseg import models
    from kseg.convert.smp import unsupported

    output_stride = options["encoder_output_stride"]
    if output_stride not in (8, 16):
        raise unsupported("DeepLabV3Plus", "encoder_output_stride", output_stride, "8 or 16")
    if options["upsampling"] != 4:
        raise unsupported(
            "DeepLabV3Plus", "upsampling", options["upsampling"], "4 (the decoder's stride)"
        )
    rates = options["decoder_atrous_rates"]
    if not isinstance(rates, (list, tuple)) or len(rates) != 3:
        raise unsupported("DeepLabV3Plus", "decoder_atrous_rates", rates, "of 3 rates")
    separable = options["decoder_aspp_separable"]
    if separable not in (True, False):
        raise unsupported("DeepLabV3Plus", "decoder_aspp_separable", separable, "True or False")
    width = options["decoder_channels"]
    return models.DeepLabV3Plus(
        num_classes,
        input_shape=input_shape,
        backbone=smp_dilated_resnet(backbone, input_shape, output_stride),
        multi_grid=None,
        atrous_rates=tuple(rates),
        aspp_filters=width,
        low_level_filters=48,
        decoder_filters=width,
        separable=bool(separable),
        decoder_separable=True,
        separable_inner_bn_act=False,
        aspp_conv=True,
        decoder_convs=1,
        dropout=options["decoder_aspp_dropout"],
        align_corners=True,
        normalization=normalization,
        name=name,
    )


def _separable_bn(copy, layer, key):
    """A separable `ConvBNAct` from smp's `[SeparableConv2d, BatchNorm2d, ReLU]` at `key`."""
    copy.depthwise(layer.depthwise, f"{key}.0.0")
    copy.conv(layer.pointwise, f"{key}.0.1")
    copy.bn(layer.pointwise_bn, f"{key}.1")


def copy_deeplabv3plus(copy, model, options=None, prefix="decoder.", head=None):
    """Adds smp's `DeepLabV3PlusDecoder` keys (and the head's) for `build_deeplabv3plus`'s model.

    smp's `aspp.0` is kseg's `aspp` (`convs.0` the 1x1 branch, `convs.1-3` the
    atrous ones, `convs.4` image pooling, `project` the projection), `aspp.1`
    and `aspp.2` the separable conv and BN of `aspp_conv`, `block1` the
    low-level projection and `block2` the fusion conv of `decoder`.
    """
    aspp = model.get_layer("aspp")
    base = f"{prefix}aspp.0"
    _conv_bn(copy, aspp.branches[0], f"{base}.convs.0")
    for index, branch in enumerate(aspp.branches[1:], start=1):
        if branch.separable:
            _separable_bn(copy, branch, f"{base}.convs.{index}")
        else:
            _conv_bn(copy, branch, f"{base}.convs.{index}")
    pool = len(aspp.branches)  # ASPPPooling: [AdaptiveAvgPool2d, conv, BN, ReLU]
    copy.conv(aspp.pool_conv.conv, f"{base}.convs.{pool}.1")
    copy.bn(aspp.pool_conv.bn, f"{base}.convs.{pool}.2")
    _conv_bn(copy, aspp.projection, f"{base}.project")
    conv = model.get_layer("aspp_conv")
    copy.depthwise(conv.depthwise, f"{prefix}aspp.1.0")
    copy.conv(conv.pointwise, f"{prefix}aspp.1.1")
    copy.bn(conv.pointwise_bn, f"{prefix}aspp.2")
    decoder = model.get_layer("decoder")
    _conv_bn(copy, decoder.low_level_projection, f"{prefix}block1")
    _separable_bn(copy, decoder.fusion_convs[0], f"{prefix}block2")
    if head is not None:
        copy.conv(model.get_layer("classifier"), head)
    return copy


def architectures():
    """The entries of `kseg.convert.smp.ARCHITECTURES` for smp's `UnetPlusPlus`, `UPerNet`,
    `PSPNet` and `DeepLabV3Plus`.

    `{class name: kseg.convert.smp.Architecture}`, for `from_smp` to convert
    `save_pretrained` folders of the four classes
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
        "PSPNet": Architecture(build_pspnet, copy_pspnet, dict(PSPNET_OPTIONS), head="classifier"),
        "DeepLabV3Plus": Architecture(
            build_deeplabv3plus,
            copy_deeplabv3plus,
            dict(DEEPLABV3PLUS_OPTIONS),
            head="classifier",
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
