"""Pieces every model builder shares: backbone lookup, input normalisation, heads, outputs."""

import dataclasses

import keras

from kseg import backbones as kbackbones
from kseg._common import check_choice, check_float, check_int
from kseg.backbones import applications, feature_info, with_input_channels
from kseg.backbones._channels import adapt_statistics
from kseg.layers import ConvBNAct, ImageNormalization, ResizeLike
from kseg.layers.preprocessing import preset_statistics


def classifier_initializer():
    """N(0, 0.01^2): the classifier initialisation of DeepLab and mmseg."""
    return keras.initializers.RandomNormal(stddev=0.01)


def check_num_classes(num_classes):
    return check_int("num_classes", num_classes, minimum=1)


def resolve_backbone(
    backbone,
    *,
    names,
    input_shape,
    backbone_weights,
    family,
    required_variant=None,
    roles=(),
    **backbone_kwargs,
):
    """Returns `(backbone_model, BackboneInfo)` for a name or a built backbone.

    A name is looked up in `names` (the names this builder supports) and built
    with `input_shape`, `backbone_weights` and `backbone_kwargs` (e.g.
    `output_stride`, `bn_momentum`). A `keras.Model` must come from
    `kseg.backbones` (it carries `feature_info`), be of `family` (a name or a
    tuple of names; and of `required_variant`), take the channel count of
    `input_shape`, and bring its own weights, so `backbone_weights` must then
    be None; `backbone_kwargs` do not apply to it (it keeps its own BatchNorm
    momentum).
    Pretrained weights for another channel count than 3 load into the RGB
    backbone, which `kseg.backbones.with_input_channels` then adapts (the
    first convolution's kernel summed for one channel, repeated and rescaled
    for more). Either way the backbone must have
    every feature role in `roles` (`"low_level"`, `"aux"`, `"high_level"`).
    """
    channels = input_channels(input_shape)
    if "bn_momentum" in backbone_kwargs:  # checked even where a backbone model ignores it
        backbone_kwargs["bn_momentum"] = check_float(
            "bn_momentum", backbone_kwargs["bn_momentum"], 0.0, 1.0
        )
    if isinstance(backbone, str):
        if backbone not in names:
            raise ValueError(
                f"Expected `backbone` to be one of {tuple(names)} or a backbone built by "
                f"`kseg.backbones`. Received: backbone={backbone!r}"
            )
        adapt = backbone_weights is not None and channels not in (None, 3)
        build_shape = with_channels(input_shape, 3) if adapt else tuple(input_shape)
        model = names[backbone](
            input_shape=build_shape, weights=backbone_weights, **backbone_kwargs
        )
        if adapt:  # pretrained RGB weights for other images: the first conv adapted
            model = with_input_channels(model, channels)
        return model, check_roles(feature_info(model), roles)
    if not isinstance(backbone, keras.Model):
        raise TypeError(
            "Expected `backbone` to be a name or a `keras.Model` from `kseg.backbones`. "
            f"Received: backbone of type {type(backbone).__name__}"
        )
    info = feature_info(backbone)
    backbone_channels = input_channels(tuple(backbone.input.shape)[1:])
    if backbone_channels != channels:
        raise ValueError(
            f"The backbone takes {backbone_channels}-channel images but `input_shape` has "
            f"{channels} channels: build the backbone with the same channel count, e.g. "
            f"`input_shape={tuple(input_shape)}`. Received: input_shape={tuple(input_shape)}"
        )
    if backbone_weights is not None:
        raise ValueError(
            "`backbone_weights` applies only to a backbone given by name; a backbone "
            f"model has its own weights. Received: backbone_weights={backbone_weights!r}"
        )
    families = (family,) if isinstance(family, str) else tuple(family)
    wanted = " or ".join(families)
    if required_variant is not None:
        wanted = f"{wanted} (variant {required_variant!r})"
    if info.family not in families or required_variant not in (None, info.variant):
        raise ValueError(
            f"This model needs a {wanted} backbone. Received: backbone of family "
            f"{info.family!r}, variant {info.variant!r}"
        )
    return backbone, check_roles(info, roles)


def check_roles(info, roles):
    """Returns `info`, or raises when the backbone lacks one of the feature `roles`."""
    for role in roles:
        if getattr(info, role) is None:
            raise ValueError(
                f"This model reads the backbone's {role!r} feature, which the {info.family} "
                f"backbone {info.variant!r} does not have (its features: {info.keys()}). "
                f"Choose a backbone with a {role!r} feature. Received: backbone family "
                f"{info.family!r}, variant {info.variant!r}"
            )
    return info


def with_channels(input_shape, channels):
    """`input_shape` with its channel count replaced by `channels`."""
    shape = list(input_shape)
    shape[-1 if keras.config.image_data_format() == "channels_last" else 0] = channels
    return tuple(shape)


def input_channels(input_shape):
    """Channel count of a builder's `input_shape` (`None` when unknown)."""
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 3:
        raise ValueError(
            "Expected `input_shape` to be `(height, width, channels)` (or `(channels, height, "
            f"width)` for channels_first). Received: input_shape={input_shape!r}"
        )
    return input_shape[-1 if keras.config.image_data_format() == "channels_last" else 0]


def normalization_layer(normalization, input_shape, preprocessing="unit", pretrained=False):
    """The `ImageNormalization` a builder's `normalization` argument asks for.

    `normalization` is a preset name (`"caffe"`, `"torch"`, `"tf"`, `"unit"`), None,
    `"auto"` or a dict `{"mean": ..., "std": ...}` with one value (or one per
    channel). `"auto"` is the backbone weights' `preprocessing` for 3-channel
    input; for any other channel count it is `"unit"` when the backbone is
    trained from scratch (no ImageNet statistics fit), and with `pretrained`
    weights (adapted by `kseg.backbones.with_input_channels`) the same
    preprocessing for the channels the adapted kernel reads: the channel-free
    presets as they are, `"caffe"` / `"torch"` with their grey average for one
    channel and, for more, input channel `i` normalised with the statistics of
    the RGB channel `i % 3` whose kernel slice it took.
    """
    channels = input_channels(input_shape)
    if isinstance(normalization, dict):
        extra = set(normalization) - {"mean", "std"}
        if extra or not normalization:
            raise ValueError(
                "Expected `normalization` as a dict to have the keys 'mean' and/or 'std'. "
                f"Received: normalization={normalization!r}"
            )
        return ImageNormalization("custom", **normalization, name="normalize")
    check_choice("normalization", normalization, ("auto", "caffe", "torch", "tf", "unit", None))
    if normalization == "auto":
        if not pretrained and channels not in (None, 3):
            normalization = "unit"
        elif channels in (None, 1, 3) or preprocessing not in ("caffe", "torch"):
            normalization = preprocessing
        else:
            # Pretrained weights adapted to 2 or more than 3 channels: each channel gets the statistics
            # of the RGB channel whose kernel slice it took (in the kernel's order, BGR for
            # caffe), as `kseg.backbones.with_input_channels` repeats them.
            mean, std = preset_statistics(preprocessing)
            return ImageNormalization(
                "custom",
                mean=adapt_statistics(mean, channels).tolist(),
                std=adapt_statistics(std, channels).tolist(),
                name="normalize",
            )
    if normalization in ("caffe", "torch") and channels not in (None, 1, 3):
        raise ValueError(
            f"`normalization={normalization!r}` holds RGB ImageNet statistics and applies to "
            "3-channel (or 1-channel grey) images. For a "
            f"{channels}-channel input pass normalization='unit' (divide by 255), "
            "normalization={'mean': [...], 'std': [...]} with one value per channel, or "
            f"None. Received: normalization={normalization!r}, input_shape={tuple(input_shape)}"
        )
    return ImageNormalization(normalization, name="normalize")


def image_input(input_shape, normalization, info_preprocessing, pretrained=False):
    """Model input and the normalised image; `normalization="auto"` follows the backbone."""
    layer = normalization_layer(normalization, input_shape, info_preprocessing, pretrained)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    return inputs, layer(inputs)


def cut_backbone(model, feature):
    """`model`, a kseg backbone, cut after its output `feature`: a `Backbone` of the rest.

    The result shares `model`'s layers and weights, holds only the layers up to
    `feature` and returns the features up to it, which becomes the deepest
    (`high_level`); the `low_level` and `aux` roles stay where they are kept.
    """
    info = feature_info(model)
    if feature not in info.keys():
        raise ValueError(
            f"Expected `feature` to be None or one of the backbone's features {info.keys()}. "
            f"Received: feature={feature!r}"
        )
    kept = info.keys()[: info.keys().index(feature) + 1]
    if len(kept) == len(info.keys()):
        return model, info
    outputs = {key: model.get_layer(info[key].layer).output for key in kept}
    specs = tuple(info[key] for key in kept)
    info = dataclasses.replace(
        info,
        features=specs,
        output_stride=max(spec.stride for spec in specs),
        high_level=feature,
        low_level=info.low_level if info.low_level in kept else None,
        aux=info.aux if info.aux in kept else None,
    )
    return kbackbones.Backbone(model.input, outputs, name=model.name, feature_info=info), info


def backbone_features(
    backbone,
    *,
    input_shape,
    backbone_weights,
    normalization,
    pretrained=None,
    feature=None,
    **kwargs,
):
    """Builds the model input and runs the (normalised) image through the backbone.

    `kwargs` go to `resolve_backbone` (`names`, `family`, `required_variant`
    and the backbone builder's own arguments). `pretrained` says whether the
    backbone gets pretrained weights (for `normalization="auto"`); None means
    whether `backbone_weights` are given for a backbone name. `feature`, when
    not None, cuts the backbone after that output (`cut_backbone`). Returns
    `(inputs, features, info)`: the `keras.Input`, the backbone's dict of
    feature maps and its `BackboneInfo`.
    """
    roles = kwargs.pop("roles", ())
    model, info = resolve_backbone(
        backbone, input_shape=input_shape, backbone_weights=backbone_weights, **kwargs
    )
    if feature is not None:
        model, info = cut_backbone(model, feature)
    check_roles(info, roles)
    if pretrained is None:
        pretrained = isinstance(backbone, str) and backbone_weights is not None
    inputs, x = image_input(input_shape, normalization, info.preprocessing, pretrained)
    return inputs, model(x), info


def resnet_features(
    backbone, *, input_shape, backbone_weights, normalization, roles=("high_level",), **kwargs
):
    """`backbone_features` for the dilated builders: ResNets and keras.applications encoders.

    `multi_grid` applies to the last stage of a ResNet; Xception-65, an
    application encoder and a Mix Transformer (by name) take only
    `output_stride` and `bn_momentum` (the Mix Transformer refuses any output
    stride but 32).
    """
    if isinstance(backbone, str) and (
        backbone in applications.NAMES
        or backbone in kbackbones.registry.XCEPTION
        or backbone in kbackbones.registry.MIT
    ):
        kwargs.pop("multi_grid", None)
    return backbone_features(
        backbone,
        input_shape=input_shape,
        backbone_weights=backbone_weights,
        normalization=normalization,
        names=kbackbones.registry.DILATED,
        family=kbackbones.registry.DILATED_FAMILIES,
        roles=roles,
        **kwargs,
    )


def upsample_logits(logits, reference, align_corners=False, name="logits"):
    """Bilinear resize of logits to the input size, computed and returned in float32."""
    return ResizeLike(align_corners=align_corners, dtype="float32", name=name)([logits, reference])


def classify(x, inputs, num_classes, align_corners, dropout=0.0, dropout_layer=None, kernel_size=1):
    """Dropout -> classifier (N(0, 0.01^2), 1x1 or `kernel_size` with same padding) -> logits
    resized to the input size."""
    if dropout:
        x = (dropout_layer or keras.layers.Dropout)(dropout, name="dropout")(x)
    x = keras.layers.Conv2D(
        num_classes,
        kernel_size,
        padding="valid" if kernel_size == 1 else "same",
        kernel_initializer=classifier_initializer(),
        name="classifier",
    )(x)
    return upsample_logits(x, inputs, align_corners)


def aux_logits(
    feature, inputs, num_classes, align_corners, filters=256, dropout=0.1, bn_momentum=0.9
):
    """torchvision/mmseg FCNHead on `feature`: 3x3 ConvBNReLU -> Dropout -> 1x1, resized."""
    x = ConvBNAct(filters, 3, bn_momentum=bn_momentum, name="aux_conv")(feature)
    x = keras.layers.Dropout(dropout, name="aux_dropout")(x)
    x = keras.layers.Conv2D(
        num_classes, 1, kernel_initializer=classifier_initializer(), name="aux_classifier"
    )(x)
    return upsample_logits(x, inputs, align_corners, name="aux_logits")


def outputs_dict(main, aux=None, **extra):
    """The model's outputs: the logits tensor alone, or a dict with `main` and extras."""
    outs = {"main": main}
    if aux is not None:
        outs["aux"] = aux
    outs.update({k: v for k, v in extra.items() if v is not None})
    return main if len(outs) == 1 else outs


def skip_features(info, strides):
    """`{stride: key}`: the backbone's last feature with each true stride (None where none).

    The skips of the encoder-decoder builders (FPN, Linknet), read from
    `feature_info`, never from a position in the list of features.
    """
    return {
        stride: next((s.key for s in reversed(info.features) if s.stride == stride), None)
        for stride in strides
    }


def stride32_features(backbone, model, **kwargs):
    """`resnet_features` at output stride 32, for the encoder-decoder builders (U-Net on a
    backbone, UNet++, FPN, Linknet): raises unless the deepest feature has the true stride
    32 (`require_output_stride`; `model` names the decoder in the message)."""
    inputs, feats, info = resnet_features(backbone, output_stride=32, **kwargs)
    require_output_stride(info, 32, model)
    return inputs, feats, info


def require_output_stride(info, output_stride, model):
    """Raises unless the backbone's deepest feature has the true stride `output_stride`."""
    stride = info.stride(info.high_level)
    if stride != output_stride:
        raise ValueError(
            f"The {model} decoder starts from a stride-{output_stride} feature: build the "
            f"backbone with `output_stride={output_stride}`. Received: a {info.family} backbone "
            f"({info.variant!r}) at output stride {stride}"
        )
