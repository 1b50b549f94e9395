"""Pieces every model builder shares: backbone lookup, input normalisation, heads, outputs."""

import keras

from kseg import backbones as kbackbones
from kseg._common import check_choice, check_int
from kseg.backbones import feature_info
from kseg.layers import ConvBNAct, ImageNormalization, ResizeLike

# The backbone names the ResNet-based builders accept. Anything else must be a
# backbone `keras.Model` built by `kseg.backbones`.
RESNETS = {
    "resnet50": kbackbones.ResNet50,
    "resnet101": kbackbones.ResNet101,
}


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
    **backbone_kwargs,
):
    """Returns `(backbone_model, BackboneInfo)` for a name or a built backbone.

    A name is looked up in `names` (the names this builder supports) and built
    with `input_shape`, `backbone_weights` and `backbone_kwargs` (e.g.
    `output_stride`). A `keras.Model` must come from `kseg.backbones` (it
    carries `feature_info`), be of `family` (and `required_variant`), and
    bring its own weights, so `backbone_weights` must then be None.
    """
    if isinstance(backbone, str):
        if backbone not in names:
            raise ValueError(
                f"Expected `backbone` to be one of {tuple(names)} or a backbone built by "
                f"`kseg.backbones`. Received: backbone={backbone!r}"
            )
        model = names[backbone](
            input_shape=tuple(input_shape), weights=backbone_weights, **backbone_kwargs
        )
        return model, feature_info(model)
    if not isinstance(backbone, keras.Model):
        raise TypeError(
            "Expected `backbone` to be a name or a `keras.Model` from `kseg.backbones`. "
            f"Received: backbone of type {type(backbone).__name__}"
        )
    info = feature_info(backbone)
    if backbone_weights is not None:
        raise ValueError(
            "`backbone_weights` applies only to a backbone given by name; a backbone "
            f"model has its own weights. Received: backbone_weights={backbone_weights!r}"
        )
    wanted = family if required_variant is None else f"{family} (variant {required_variant!r})"
    if info.family != family or required_variant not in (None, info.variant):
        raise ValueError(
            f"This model needs a {wanted} backbone. Received: backbone of family "
            f"{info.family!r}, variant {info.variant!r}"
        )
    return backbone, info


def image_input(input_shape, normalization, info_preprocessing):
    """Model input and the normalised image; `normalization="auto"` follows the backbone."""
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    mode = info_preprocessing if normalization == "auto" else normalization
    check_choice("normalization", mode, ("caffe", "torch", "unit", None))
    return inputs, ImageNormalization(mode, name="normalize")(inputs)


def backbone_features(backbone, *, input_shape, backbone_weights, normalization, **kwargs):
    """Builds the model input and runs the (normalised) image through the backbone.

    `kwargs` go to `resolve_backbone` (`names`, `family`, `required_variant`
    and the backbone builder's own arguments). Returns `(inputs, features,
    info)`: the `keras.Input`, the backbone's dict of feature maps and its
    `BackboneInfo`.
    """
    model, info = resolve_backbone(
        backbone, input_shape=input_shape, backbone_weights=backbone_weights, **kwargs
    )
    inputs, x = image_input(input_shape, normalization, info.preprocessing)
    return inputs, model(x), info


def resnet_features(backbone, *, input_shape, backbone_weights, normalization, **kwargs):
    """`backbone_features` for the ResNet-based builders (`"resnet50"`, `"resnet101"`)."""
    return backbone_features(
        backbone,
        input_shape=input_shape,
        backbone_weights=backbone_weights,
        normalization=normalization,
        names=RESNETS,
        family="resnet",
        **kwargs,
    )


def upsample_logits(logits, reference, align_corners=False, name="logits"):
    """Bilinear resize of logits to the input size, computed and returned in float32."""
    return ResizeLike(align_corners=align_corners, dtype="float32", name=name)([logits, reference])


def classify(x, inputs, num_classes, align_corners, dropout=0.0, dropout_layer=None):
    """Dropout -> 1x1 classifier (N(0, 0.01^2)) -> logits resized to the input size."""
    if dropout:
        x = (dropout_layer or keras.layers.Dropout)(dropout, name="dropout")(x)
    x = keras.layers.Conv2D(
        num_classes, 1, kernel_initializer=classifier_initializer(), name="classifier"
    )(x)
    return upsample_logits(x, inputs, align_corners)


def aux_logits(feature, inputs, num_classes, align_corners, filters=256, dropout=0.1):
    """torchvision/mmseg FCNHead on `feature`: 3x3 ConvBNReLU -> Dropout -> 1x1, resized."""
    x = ConvBNAct(filters, 3, name="aux_conv")(feature)
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
