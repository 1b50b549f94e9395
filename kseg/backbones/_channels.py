"""Pretrained RGB backbones for images of any channel count: the first convolution adapted."""

import copy

import keras
import numpy as np

from kseg.backbones._info import as_backbone, feature_info


def adapt_kernel(kernel, channels):
    """An RGB convolution kernel `(kh, kw, 3, out)` for `channels` input channels.

    The rule of segmentation_models.pytorch (`patch_first_conv`, documented in
    its "Input channels" section): one channel takes the sum of the three RGB
    slices, so a grey image gives what the RGB network gives for that grey
    repeated three times; any other count repeats the slices in order (input
    channel `i` takes slice `i % 3`) and scales them by `3 / channels`, which
    keeps the response to an image whose channels are all equal.
    """
    kernel = np.asarray(kernel)
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    repeated = kernel[:, :, [i % 3 for i in range(channels)], :]
    return repeated * (3.0 / channels)


def adapt_statistics(values, channels):
    """Per-channel RGB statistics (3 values) for `channels` channels.

    One channel takes their average, as `kseg.layers.ImageNormalization`
    does for a grey image; more take channel `i % 3`'s value, matching the
    kernel's slices (`adapt_kernel`).
    """
    values = np.asarray(values, dtype="float64")
    if channels == 1:
        return values.mean(keepdims=True)
    return values[[i % 3 for i in range(channels)]]


def _adapt_config_value(value, channels):
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return [float(v) for v in adapt_statistics(value, channels)]
    return value


def _forget_nested_inputs(item):
    """Lets nested Sequentials (ConvNeXt's stem) build from the input they receive.

    Their recorded input layers fix the channel count at 3; without them a
    Sequential builds on its first call. Build configs are dropped too.
    """
    if isinstance(item, dict):
        item.pop("build_config", None)
        if item.get("class_name") == "Sequential":
            layers = item["config"]["layers"]
            item["config"]["layers"] = [e for e in layers if e["class_name"] != "InputLayer"]
            item["config"].pop("build_input_shape", None)
        for value in item.values():
            _forget_nested_inputs(value)
    elif isinstance(item, (list, tuple)):
        for value in item:
            _forget_nested_inputs(value)


def with_input_channels(backbone, channels):
    """A copy of the pretrained RGB `backbone` that takes `channels`-channel images.

    Every weight is copied, except the convolution that reads the image,
    whose kernel is adapted by `adapt_kernel` (summed for one channel;
    repeated and rescaled by `3 / channels` for more). Per-channel constants of
    the preprocessing a keras.applications model holds inside itself (the
    mean and variance of its `Normalization` layer, the scales of a
    `Rescaling` layer) follow `adapt_statistics`. The copy keeps the layer
    names and the `feature_info` of `backbone`.

    Args:
        backbone: a backbone built by `kseg.backbones` for 3-channel images.
        channels: the input channel count of the copy (a positive int).

    Returns:
        The adapted backbone (a new `keras.Model`), or `backbone` itself when
        `channels` is 3.
    """
    info = feature_info(backbone)
    axis = -1 if keras.config.image_data_format() == "channels_last" else 1
    if backbone.input.shape[axis] != 3:
        raise ValueError(
            "Expected a backbone for 3-channel (RGB) images to adapt. Received: a backbone "
            f"with input shape {tuple(backbone.input.shape)}"
        )
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(
            f"Expected `channels` to be a positive int. Received: channels={channels!r}"
        )
    if channels == 3:
        return backbone
    config = copy.deepcopy(backbone.get_config())
    _forget_nested_inputs(config)
    for entry in config["layers"]:
        layer_config = entry["config"]
        if entry["class_name"] == "InputLayer":
            shape = list(layer_config["batch_shape"])
            shape[axis] = channels
            layer_config["batch_shape"] = tuple(shape)
        elif entry["class_name"] == "Normalization":
            for key in ("mean", "variance"):
                layer_config[key] = _adapt_config_value(layer_config.get(key), channels)
        elif entry["class_name"] == "Rescaling":
            for key in ("scale", "offset"):
                layer_config[key] = _adapt_config_value(layer_config.get(key), channels)
    adapted = keras.Model.from_config(config)
    for layer in backbone.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        target = adapted.get_layer(layer.name)
        values = []
        for source, slot in zip(weights, target.weights):
            if tuple(source.shape) == tuple(slot.shape):
                values.append(source)
            elif source.ndim == 4 and source.shape[2] == 3:
                values.append(adapt_kernel(source, channels))
            elif source.ndim == 1 and source.shape[0] == 3:  # a Normalization's statistics
                values.append(adapt_statistics(source, channels))
            else:
                raise ValueError(
                    f"Cannot adapt {layer.name!r} of {backbone.name!r} to {channels} input "
                    f"channels: its weight of shape {tuple(source.shape)} becomes "
                    f"{tuple(slot.shape)}"
                )
        target.set_weights([np.asarray(v, dtype=s.dtype) for v, s in zip(values, target.weights)])
    return as_backbone(adapted, info)
