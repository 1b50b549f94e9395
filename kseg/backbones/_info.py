"""What a backbone's named outputs are (channels, true stride, dilation, roles), kept by the model."""

import dataclasses

import keras

from kseg import _backend


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One named output of a backbone.

    Attributes:
        key: the output's key in the backbone's output dict (e.g. `"stage3"`).
        layer: name of the layer that produces it (a `keras.applications` name
            where one exists, e.g. `"conv4_block6_out"`).
        channels: number of channels.
        stride: true stride with respect to the input: the feature map has
            `ceil(H / stride)` rows for a ResNet (see each backbone's docstring
            for the exact size arithmetic of the VGG variants).
        dilation: dilation rate(s) of the 3x3 convolutions that produce it, one
            per residual block (ResNet) or per convolution (VGG).
    """

    key: str
    layer: str
    channels: int
    stride: int
    dilation: tuple = (1,)


@dataclasses.dataclass(frozen=True)
class BackboneInfo:
    """Everything a model builder needs to know about a kseg backbone.

    Attributes:
        family: `"resnet"`, `"vgg16"`, `"xception65"`, or a keras.applications family
            (`"mobilenetv2"`, `"efficientnet"`, `"convnext"`, ...: see
            `kseg.backbones.Application`).
        variant: `"v1"`, `"v1.5"` or `"v1c"` for ResNet (see `ResNet`'s `variant`),
            the VGG variant name, or the keras.applications encoder's name
            (e.g. `"efficientnetb0"`).
        output_stride: the largest true stride among the outputs.
        features: tuple of `FeatureSpec`, in output order.
        low_level: key of the stride-4 low-level feature used by the
            DeepLab v3+ decoder (`None` when the backbone has none).
        aux: key of the feature an auxiliary head reads (ResNet layer3:
            1024 channels, 256 for ResNet-18/34; `None` when not applicable).
        high_level: key of the deepest feature (ResNet layer4: 2048
            channels, 512 for ResNet-18/34; VGG `"pool5"`).
        preprocessing: input preprocessing the ImageNet weights of
            `keras.applications` expect, as a `kseg.layers.ImageNormalization`
            mode (`"caffe"`: BGR order, ImageNet mean subtracted, no scaling;
            `"torch"`; `"tf"`: to [-1, 1]; None: the backbone rescales inside
            itself and takes [0, 255] images).
    """

    family: str
    variant: str
    output_stride: int
    features: tuple
    low_level: str | None
    aux: str | None
    high_level: str
    preprocessing: str = "caffe"

    def __getitem__(self, key):
        for spec in self.features:
            if spec.key == key:
                return spec
        raise KeyError(f"Expected a feature key in {self.keys()}. Received: key={key!r}")

    def keys(self):
        """Output keys in order."""
        return tuple(spec.key for spec in self.features)

    def channels(self, key):
        """Channels of output `key`."""
        return self[key].channels

    def stride(self, key):
        """True stride of output `key`."""
        return self[key].stride


def feature_info(model):
    """Returns the `BackboneInfo` of a backbone built by `kseg.backbones`.

    Args:
        model: a `keras.Model` returned by `kseg.backbones.ResNet50`,
            `ResNet101`, `ResNet`, `VGG16`, `Xception65`, `Application` or
            `with_input_channels`.

    Returns:
        A `BackboneInfo` (keys, channels, true strides, dilations, and the
        roles `low_level`, `aux` and `high_level`).

    Every kseg backbone is a `kseg.backbones.Backbone`, whose config holds
    this information, so a backbone (alone or inside a model) reloaded from a
    `.keras` file carries it too.

    Example:

    >>> backbone = kseg.backbones.ResNet50(output_stride=16)
    >>> info = kseg.backbones.feature_info(backbone)
    >>> info.low_level, info.stride("stage4"), info.channels(info.aux)
    ('stage1', 16, 1024)
    """
    info = getattr(model, "feature_info", None)
    if not isinstance(info, BackboneInfo):
        raise ValueError(
            "Expected a backbone built by `kseg.backbones` (a `kseg.backbones.Backbone`, "
            "which carries `feature_info`; a file saved by kseg 0.1.0 holds a plain model: "
            "rebuild it with the same arguments and load its weights). "
            f"Received: model={getattr(model, 'name', model)!r}"
        )
    return info


def info_config(info):
    """`BackboneInfo` as a JSON-friendly dict (`info_from_config` reads it back)."""
    config = dataclasses.asdict(info)
    config["features"] = [
        {**spec, "dilation": list(spec["dilation"])} for spec in config["features"]
    ]
    return config


def info_from_config(config):
    """The `BackboneInfo` of a dict written by `info_config` (None and infos as they are)."""
    if config is None or isinstance(config, BackboneInfo):
        return config
    if not isinstance(config, dict) or not isinstance(config.get("features"), (list, tuple)):
        raise TypeError(
            f"Expected `feature_info` to be a BackboneInfo or its config. Received: {config!r}"
        )
    features = tuple(
        FeatureSpec(**{**spec, "dilation": tuple(spec["dilation"])}) for spec in config["features"]
    )
    return BackboneInfo(**{**config, "features": features})


# The class is named `Functional`, like the plain functional model a backbone was in
# kseg 0.1.0, on purpose: Keras names the weights of a model nested in another by the
# snake-cased class name (`layers/functional/...`), so any other name would move every
# backbone weight of a saved model and break `load_weights` and `--resume` of files
# written before. It is registered, and documented, as `kseg>Backbone`.
@keras.saving.register_keras_serializable(package="kseg", name="Backbone")
class Functional(keras.Model):
    """The functional model every `kseg.backbones` constructor returns: features and their facts.

    It behaves like the `keras.Model(inputs, {key: feature})` it is built
    from, and carries `feature_info` (a `BackboneInfo`: each output's
    channels, true stride, dilation, and the roles the builders read) in its
    config, so it survives `.keras` files and `from_config`, alone and inside
    a model. Public name: `kseg.backbones.Backbone`.

    Args:
        inputs, outputs: as for `keras.Model` (outputs: a dict of features).
        feature_info: a `BackboneInfo` (or its `info_config` dict).
        **kwargs: other `keras.Model` arguments, such as `name`.
    """

    def __init__(self, *args, feature_info=None, **kwargs):
        super().__init__(*args, **kwargs)
        #: The `BackboneInfo` of the outputs (None when built without one).
        self.feature_info = info_from_config(feature_info)
        # On torch: fused BatchNorm and copy-free convolutions, as in `SegmentationModel`.
        _backend.use_fused_batch_norm(self)
        _backend.use_direct_conv(self)

    def get_config(self):
        info = self.feature_info
        return {**super().get_config(), "feature_info": None if info is None else info_config(info)}


Backbone = Functional


def as_backbone(model, info):
    """`model` (a functional model of features) as a `Backbone` carrying `info`.

    The result shares `model`'s layers and weights.
    """
    return Backbone(model.input, model.output, name=model.name, feature_info=info)
