"""Encoders from keras.applications returning dicts of named features, dilated on request."""

import copy

import keras

from kseg._common import check_float
from kseg.backbones._info import BackboneInfo, FeatureSpec, as_backbone
from kseg.backbones._weights import existing_file

#: The keys of every application encoder: `level{i}` has nominal stride `2**i`
#: (its stride at output stride 32); `FeatureSpec.stride` holds the true one.
LEVELS = (1, 2, 3, 4, 5)
KEYS = tuple(f"level{i}" for i in LEVELS)

# Per family: the preprocessing its ImageNet weights expect from images in
# [0, 255] (`kseg.layers.ImageNormalization` mode; None: the keras.applications
# model rescales inside itself), the output strides it can be built at, and
# why it offers no others.
_FAMILIES = {
    "mobilenetv2": ("tf", (8, 16, 32), None),
    "mobilenetv3": (None, (8, 16, 32), None),
    "efficientnet": (None, (8, 16, 32), None),
    "efficientnetv2": (None, (8, 16, 32), None),
    "xception": (
        "tf",
        (16, 32),
        "block13_pool, a 3x3 max-pool, would need dilation 2 at output stride 8, and "
        "Keras pooling has no dilation",
    ),
    "densenet": (
        "torch",
        (32,),
        "its transitions downsample with 2x2/2 average pools without padding, which "
        "cannot become stride 1 without changing the feature sizes",
    ),
    "convnext": (None, (8, 16, 32), None),
    "resnetv2": ("tf", (8, 16, 32), None),
    "vgg19": (
        "caffe",
        (32,),
        "it downsamples with 2x2/2 max-pools without padding, which cannot become "
        "stride 1 without changing the feature sizes",
    ),
}


def _convnext(prefix):
    # The stage outputs are the inputs of the next downsampling block (the
    # residual sums are unnamed operations); the deepest is the model output
    # (after keras.applications' final LayerNormalization).
    return (
        None,
        f"{prefix}_downsampling_block_0:input",
        f"{prefix}_downsampling_block_1:input",
        f"{prefix}_downsampling_block_2:input",
        ":output",
    )


def _resnetv2(n3, n4):
    # keras.applications' ResNetV2 downsamples in the last block of a stage, so
    # a stage's output is the pre-activation of that block (normalised + ReLU).
    return (
        "conv1_conv",
        "conv2_block3_preact_relu",
        f"conv3_block{n3}_preact_relu",
        f"conv4_block{n4}_preact_relu",
        "post_relu",
    )


# name -> (keras.applications class, family, the layers giving the features at
# nominal strides 2, 4, 8, 16 and 32). Found by building each model with
# `weights=None` and reading its output shapes: the output of the last block
# at each stride (without the final 1x1 "top" convolution, as timm's
# `features_only`); "name:input" is the input of layer `name`, ":output" the
# model's output, None a stride the model has no feature at.
TABLE = {
    "mobilenetv2": (
        "MobileNetV2",
        "mobilenetv2",
        (
            "expanded_conv_project_BN",
            "block_2_add",
            "block_5_add",
            "block_12_add",
            "block_16_project_BN",
        ),
    ),
    "mobilenetv3small": (
        "MobileNetV3Small",
        "mobilenetv3",
        (
            "expanded_conv_depthwise_pad:input",  # the stem's hard-swish (unnamed)
            "expanded_conv_project_bn",
            "expanded_conv_2_add",
            "expanded_conv_7_add",
            "expanded_conv_10_add",
        ),
    ),
    "mobilenetv3large": (
        "MobileNetV3Large",
        "mobilenetv3",
        (
            "expanded_conv_add",
            "expanded_conv_2_add",
            "expanded_conv_5_add",
            "expanded_conv_11_add",
            "expanded_conv_14_add",
        ),
    ),
    **{
        f"efficientnetb{i}": (f"EfficientNetB{i}", "efficientnet", layers)
        for i, layers in enumerate(
            (
                ("block1a_project_bn", "block2b_add", "block3b_add", "block5c_add",
                 "block7a_project_bn"),
                ("block1b_add", "block2c_add", "block3c_add", "block5d_add", "block7b_add"),
                ("block1b_add", "block2c_add", "block3c_add", "block5d_add", "block7b_add"),
                ("block1b_add", "block2c_add", "block3c_add", "block5e_add", "block7b_add"),
                ("block1b_add", "block2d_add", "block3d_add", "block5f_add", "block7b_add"),
                ("block1c_add", "block2e_add", "block3e_add", "block5g_add", "block7c_add"),
                ("block1c_add", "block2f_add", "block3f_add", "block5h_add", "block7c_add"),
                ("block1d_add", "block2g_add", "block3g_add", "block5j_add", "block7d_add"),
            )
        )
    },
    **{
        f"efficientnetv2{suffix.lower()}": (f"EfficientNetV2{suffix}", "efficientnetv2", layers)
        for suffix, layers in (
            ("B0", ("block1a_project_activation", "block2b_add", "block3b_add", "block5e_add",
                    "block6h_add")),
            ("B1", ("block1b_add", "block2c_add", "block3c_add", "block5f_add", "block6i_add")),
            ("B2", ("block1b_add", "block2c_add", "block3c_add", "block5f_add", "block6j_add")),
            ("B3", ("block1b_add", "block2c_add", "block3c_add", "block5g_add", "block6l_add")),
            ("S", ("block1b_add", "block2d_add", "block3d_add", "block5i_add", "block6o_add")),
            ("M", ("block1c_add", "block2e_add", "block3e_add", "block5n_add", "block7e_add")),
            ("L", ("block1d_add", "block2g_add", "block3g_add", "block5s_add", "block7g_add")),
        )
    },
    "xception": (
        "Xception",
        "xception",
        (
            "block1_conv2_act",
            "block3_sepconv1_act",  # ReLU of the block 2 output (the sum is unnamed)
            "block4_sepconv1_act",
            "block13_sepconv1_act",
            "block14_sepconv2_act",
        ),
    ),
    **{
        f"densenet{depth}": (
            f"DenseNet{depth}",
            "densenet",
            ("conv1_relu", "pool2_relu", "pool3_relu", "pool4_relu", "relu"),
        )
        for depth in (121, 169, 201)
    },
    **{
        f"convnext{size}": (f"ConvNeXt{size.title()}", "convnext", _convnext(f"convnext_{size}"))
        for size in ("tiny", "small", "base", "large")
    },
    "resnet50v2": ("ResNet50V2", "resnetv2", _resnetv2(4, 6)),
    "resnet101v2": ("ResNet101V2", "resnetv2", _resnetv2(4, 23)),
    "resnet152v2": ("ResNet152V2", "resnetv2", _resnetv2(8, 36)),
    "vgg19": (
        "VGG19",
        "vgg19",
        ("block2_conv2", "block3_conv4", "block4_conv4", "block5_conv4", "block5_pool"),
    ),
}

NAMES = tuple(TABLE)


def output_strides(name):
    """The output strides the application encoder `name` can be built at."""
    return _FAMILIES[_entry(name)[1]][1]


def _entry(name):
    if name not in TABLE:
        raise ValueError(
            f"Expected the name of a keras.applications encoder, one of {NAMES}. "
            f"Received: name={name!r}"
        )
    return TABLE[name]


def Application(
    name,
    input_shape=None,
    weights=None,
    output_stride=32,
    bn_momentum=0.9,
):
    """Builds a keras.applications model as a kseg encoder: a dict of features.

    The model is `keras.applications.<Class>(include_top=False)` with its own
    layer names, so its ImageNet weights load as they are; the encoder returns
    the outputs of the last block at each stride, keyed `level1` ... `level5`
    (nominal strides 2 ... 32; ConvNeXt has no `level1`).

    | family         | names                                   | output strides | preprocessing |
    |----------------|-----------------------------------------|----------------|---------------|
    | mobilenetv2    | `mobilenetv2`                           | 8, 16, 32      | `"tf"`        |
    | mobilenetv3    | `mobilenetv3small`, `mobilenetv3large`  | 8, 16, 32      | None (inside) |
    | efficientnet   | `efficientnetb0` ... `efficientnetb7`   | 8, 16, 32      | None (inside) |
    | efficientnetv2 | `efficientnetv2b0` ... `b3`, `s`, `m`, `l` | 8, 16, 32   | None (inside) |
    | xception       | `xception`                              | 16, 32         | `"tf"`        |
    | densenet       | `densenet121`, `densenet169`, `densenet201` | 32         | `"torch"`     |
    | convnext       | `convnexttiny`, `small`, `base`, `large` | 8, 16, 32     | None (inside) |
    | resnetv2       | `resnet50v2`, `resnet101v2`, `resnet152v2` | 8, 16, 32   | `"tf"`        |
    | vgg19          | `vgg19`                                 | 32             | `"caffe"`     |

    BatchNorm: keras.applications builds each family with a momentum of its
    own (MobileNet 0.999, EfficientNet, Xception, DenseNet and ResNetV2 0.99,
    EfficientNetV2 0.9), at which the moving statistics of a short run hardly
    move; every BatchNormalization of the encoder gets `bn_momentum` instead
    (0.9, torch's 0.1, as kseg's other backbones and heads), set in the
    model's config, so a saved model keeps it. The epsilon stays the family's
    own, the one its ImageNet weights were trained with: 1e-3 for MobileNet,
    EfficientNet, EfficientNetV2 and Xception, 1.001e-5 for DenseNet and
    ResNetV2 (ConvNeXt and VGG19 have no BatchNorm).

    Preprocessing is what keras.applications' `preprocess_input` does for the
    family (`"tf"`: `x / 127.5 - 1`); None means the keras.applications model
    holds its own rescaling layers and takes images in [0, 255] as they are.

    Feature sizes: with a static input size every stride-2 step gives
    `ceil(h / 2)` rows, except where the family pools or convolves without
    padding: DenseNet's 2x2/2 average pools and VGG19's 2x2/2 max-pools give
    `floor(h / 2)`, ConvNeXt's 4x4/4 stem and 2x2/2 downsampling convs
    `floor(h / s)`, and Xception's first two 3x3 convs have no padding (the
    stride-2 map has `floor((h - 3) / 2) + 1 - 2` rows). With an unknown
    (None) input size keras.applications pads the MobileNet and EfficientNet
    (v1) stride-2 convolutions for an even size, which gives
    `floor((h - 2) / 2) + 1` rows for an odd `h`.

    Output stride 8 or 16 (DeepLab's dilation rule, Chen et al. 2017): the
    stride-2 layers whose input already has the output stride become stride 1,
    and every convolution after them gets dilation `(its input's stride at
    output stride 32) / output_stride` (2, then 4 at output stride 8). Explicit
    zero padding before such a convolution (keras.applications pads before its
    unpadded stride-2 convolutions) becomes symmetric `dilation * (k - 1) / 2`
    on each side and an unpadded strided convolution becomes "same", so a
    dilated stage keeps the size of the stage before it. Kernel shapes do not
    change, so every weight is kept. Families whose pooling stands in the way
    offer only the strides in the table.

    Args:
        name: one of the names above (`kseg.backbones.applications.NAMES`).
        input_shape: `(height, width, 3)`. Defaults to `(None, None, 3)`;
            channels_last only.
        weights: None (random), `"imagenet"` (keras.applications' file,
            downloaded by Keras on first use) or the path of a weights file
            saved from the same keras.applications model built with
            `include_top=False` (`.weights.h5`, or a `.keras` file).
        output_stride: one of the family's output strides. Defaults to 32.
        bn_momentum: the momentum of every BatchNormalization (Keras'
            convention: torch's momentum 0.1 is 0.9). Defaults to 0.9.

    Returns:
        A `keras.Model` from the image to `{"level1": ..., ..., "level5": ...}`
        with `feature_info` (`kseg.backbones.feature_info(model)`): family,
        variant (the name), channels, true strides, dilations, roles
        `low_level="level2"` (stride 4), `aux="level4"` (stride 16),
        `high_level="level5"`, and the preprocessing.

    Example:

    >>> encoder = kseg.backbones.Application("mobilenetv2", output_stride=16)
    >>> kseg.backbones.feature_info(encoder).stride("level5")
    16
    """
    class_name, family, layers = _entry(name)
    preprocessing, strides, reason = _FAMILIES[family]
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "The keras.applications encoders are built channels_last; call "
            "`keras.config.set_image_data_format('channels_last')` first. Received: "
            f"image_data_format={keras.config.image_data_format()!r} for {name!r}"
        )
    if output_stride not in strides:
        because = f" ({reason})" if reason else ""
        raise ValueError(
            f"The {family} encoders can be built at output stride {' or '.join(map(str, strides))}"
            f"{because}. Expected `output_stride` in {strides}. Received: "
            f"output_stride={output_stride!r} for {name!r}"
        )
    bn_momentum = check_float("bn_momentum", bn_momentum, 0.0, 1.0)
    if weights is not None and weights != "imagenet":
        weights = existing_file(
            weights,
            "None, 'imagenet' or the path of a weights file saved from keras.applications."
            f"{class_name}(include_top=False)",
        )
    if input_shape is None:
        input_shape = (None, None, 3)
    app_fn = getattr(keras.applications, class_name)
    try:
        app = app_fn(include_top=False, weights=weights, input_shape=tuple(input_shape))
    except (ValueError, TypeError):
        raise
    except Exception as error:  # Keras' get_file raises a bare Exception offline.
        if weights != "imagenet":
            raise
        raise OSError(
            f"Could not obtain the ImageNet weights of keras.applications.{class_name} "
            f"({error}). Copy the file from a machine where `~/.keras/models/` has it, or "
            f"save `keras.applications.{class_name}(include_top=False, weights='imagenet')`'s "
            "weights there with `save_weights`, and pass its path as `weights`."
        ) from error
    app = rebuild(app, output_stride, family, bn_momentum)
    outputs, specs = {}, []
    for level, layer in zip(LEVELS, layers):
        if layer is None:
            continue
        key, nominal = f"level{level}", 2**level
        tensor = _tensor(app, layer)
        true_stride = min(nominal, output_stride)
        outputs[key] = tensor
        specs.append(
            FeatureSpec(
                key, layer, int(tensor.shape[-1]), true_stride, (max(nominal // output_stride, 1),)
            )
        )
    model = keras.Model(app.input, outputs, name=name)
    info = BackboneInfo(
        family=family,
        variant=name,
        output_stride=output_stride,
        features=tuple(specs),
        low_level="level2",
        aux="level4",
        high_level="level5",
        preprocessing=preprocessing,
    )
    return as_backbone(model, info)


def _tensor(model, layer):
    """The tensor a table entry names (`"name"`, `"name:input"` or `":output"`)."""
    if layer == ":output":
        return model.output
    layer_name, _, part = layer.partition(":")
    found = model.get_layer(layer_name)
    return found.input if part == "input" else found.output


# ---------------------------------------------------------------------------
# BatchNorm momentum and dilation by rewriting the model's config.

_CONVS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D")
_POOLS = ("MaxPooling2D", "AveragePooling2D")


def _inbound_names(layer_config):
    """Names of the layers whose outputs a functional config entry reads."""
    names = []

    def visit(item):
        if isinstance(item, dict):
            if item.get("class_name") == "__keras_tensor__":
                names.append(item["config"]["keras_history"][0])
                return
            for value in item.values():
                visit(value)
        elif isinstance(item, (list, tuple)):
            for value in item:
                visit(value)

    visit(layer_config.get("inbound_nodes", []))
    return names


def _pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _rewrite(entry, stride_in, output_stride, family):
    """Rewrites one layer config for `output_stride` in place.

    `entry` is `{"class_name": ..., "config": ...}` with the layer's input at
    true stride `stride_in` (at output stride 32); a Sequential's layers are
    rewritten in turn. Returns `(stride, padding)`: the layer's own stride at
    output stride 32, and the total padding per axis that an unpadded
    ("valid") convolution now needs to keep its input's size (None when
    nothing is needed); its caller puts it in the zero padding before the
    convolution, or makes the convolution "same".
    """
    kind, config = entry["class_name"], entry["config"]
    if kind == "Sequential":
        stride = stride_in
        for inner in config["layers"]:
            step, padding = _rewrite(inner, stride, output_stride, family)
            if padding is not None:
                inner["config"]["padding"] = "same"
            stride *= step
        return stride // stride_in, None
    if kind not in _CONVS + _POOLS or "strides" not in config:
        return 1, None
    strides = _pair(config["strides"])
    size = _pair(config.get("kernel_size", config.get("pool_size")))
    rate = max(stride_in // output_stride, 1)
    changed = False
    if strides != (1, 1) and stride_in >= output_stride:
        config["strides"] = (1, 1)
        changed = True
    if rate > 1 and size != (1, 1):
        if kind in _POOLS:
            raise ValueError(
                f"The {family} encoders cannot be dilated to output stride {output_stride}: "
                f"the {size[0]}x{size[1]} pooling {config['name']!r} would need dilation {rate}, "
                "which Keras pooling does not have. Expected `output_stride` in "
                f"{_FAMILIES[family][1]}. Received: output_stride={output_stride}"
            )
        config["dilation_rate"] = (rate, rate)
        changed = True
    padding = None
    if changed and size != (1, 1) and config.get("padding") == "valid":
        if kind in _POOLS:
            raise ValueError(
                f"The {family} encoders cannot be dilated to output stride {output_stride}: "
                f"the unpadded pooling {config['name']!r} would shrink the features once its "
                f"stride is 1. Expected `output_stride` in {_FAMILIES[family][1]}. "
                f"Received: output_stride={output_stride}"
            )
        padding = tuple(rate * (k - 1) for k in size)
    return strides[0], padding


def _forget_shapes(item, nested=False):
    """Drops the build shapes a config records: the rewritten layers see new sizes.

    The model's own input keeps its shape; the inputs of nested Sequentials
    (ConvNeXt's downsampling blocks) lose their spatial sizes.
    """
    if isinstance(item, dict):
        item.pop("build_config", None)
        config = item.get("config")
        if nested and item.get("class_name") == "InputLayer" and "batch_shape" in config:
            shape = config["batch_shape"]
            config["batch_shape"] = (shape[0], *[None] * (len(shape) - 2), shape[-1])
        nested = nested or item.get("class_name") == "Sequential"
        for value in item.values():
            _forget_shapes(value, nested)
    elif isinstance(item, (list, tuple)):
        for value in item:
            _forget_shapes(value, nested)


def _set_momentum(item, momentum):
    """Sets the momentum of every BatchNormalization in a config (nested ones too).

    Returns whether any changed.
    """
    changed = False
    if isinstance(item, dict):
        if item.get("class_name") == "BatchNormalization":
            changed = item["config"]["momentum"] != momentum
            item["config"]["momentum"] = momentum
        for value in item.values():
            changed = _set_momentum(value, momentum) or changed
    elif isinstance(item, (list, tuple)):
        for value in item:
            changed = _set_momentum(value, momentum) or changed
    return changed


def rebuild(model, output_stride, family, bn_momentum):
    """The keras.applications `model` with `bn_momentum` and at `output_stride`, with its weights.

    Both are written into the model's config, which is built anew: every
    BatchNormalization gets `bn_momentum` (its epsilon is kept), and at output
    stride 8 or 16 the layers are dilated by the rule of `Application`. The
    layers keep their names and kernel shapes; the weights (moving statistics
    included) are copied layer by layer. `model` itself is returned when
    nothing changes.
    """
    config = copy.deepcopy(model.get_config())
    changed = _set_momentum(config, bn_momentum)
    if output_stride != 32:
        _dilate_config(config, output_stride, family)
        _forget_shapes(config)
    elif not changed:
        return model
    rebuilt = keras.Model.from_config(config)
    for layer in model.layers:
        if layer.weights:
            rebuilt.get_layer(layer.name).set_weights(layer.get_weights())
    return rebuilt


def _dilate_config(config, output_stride, family):
    """Rewrites a functional config in place for `output_stride` (see `Application`)."""
    entries = {entry["name"]: entry for entry in config["layers"]}
    consumers = {}
    for entry in config["layers"]:
        for name in _inbound_names(entry):
            consumers[name] = consumers.get(name, 0) + 1
    true_stride = {}  # stride of each layer's output at output stride 32
    for entry in config["layers"]:
        inbound = _inbound_names(entry)
        stride_in = max((true_stride[name] for name in inbound), default=1)
        step, padding = _rewrite(entry, stride_in, output_stride, family)
        true_stride[entry["name"]] = stride_in * step
        if padding is None:
            continue
        source = entries[inbound[0]] if len(inbound) == 1 else None
        if (
            source is not None
            and source["class_name"] == "ZeroPadding2D"
            and consumers[source["name"]] == 1
        ):
            source["config"]["padding"] = tuple((t // 2, t - t // 2) for t in padding)
        else:
            entry["config"]["padding"] = "same"
