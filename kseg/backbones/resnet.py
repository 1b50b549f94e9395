"""Dilated ResNet-50/101 backbones with keras.applications layer names."""

import keras

from kseg._common import check_choice, check_float, check_int, standardize_data_format
from kseg.backbones._info import BackboneInfo, FeatureSpec
from kseg.backbones._weights import check_weights, load_reference_weights
from kseg.ops._backend import check_conv_data_format

_OUTPUT_STRIDES = (8, 16, 32)
_DILATE_FIRST = ("full", "contract")

# keras.applications models with the same layout, for weight loading.
_APPLICATIONS = {
    (3, 4, 6, 3): ("ResNet50", "resnet50"),
    (3, 4, 23, 3): ("ResNet101", "resnet101"),
    (3, 8, 36, 3): ("ResNet152", "resnet152"),
}

_TABLE = """
    Outputs (a dict; `H` is the input height, likewise for the width; every
    map has `ceil(H / stride)` rows for any `H`, because every stride-2 step is
    `floor((h - 1) / 2) + 1`: the 7x7/2 stem conv after symmetric padding 3,
    the 3x3/2 max-pool after symmetric zero padding 1, and the 1x1/2 convs):

    | key      | layer (R50 / R101)                       | channels | OS32 | OS16 | OS8 |
    |----------|------------------------------------------|----------|------|------|-----|
    | `stem`   | `conv1_relu`                             |       64 |    2 |    2 |   2 |
    | `stage1` | `conv2_block3_out`                       |      256 |    4 |    4 |   4 |
    | `stage2` | `conv3_block4_out`                       |      512 |    8 |    8 |   8 |
    | `stage3` | `conv4_block6_out` / `conv4_block23_out` |     1024 |   16 |   16 |   8 |
    | `stage4` | `conv5_block3_out`                       |     2048 |   32 |   16 |   8 |

    (the OS columns give the true stride for each `output_stride`.)

    `stage1..stage4` are torchvision's `layer1..layer4` (Keras `conv2..conv5`).
    Roles (see `kseg.backbones.feature_info`): `low_level="stage1"` (the
    DeepLab v3+ decoder input), `aux="stage3"` (auxiliary heads),
    `high_level="stage4"`.

    Dilation rates of the 3x3 convs (`conv{4,5}_block*_2_conv`), default
    `dilate_first_block="full"`:

    | output_stride | stage3 | stage4 | stage4 with multi_grid=(1, 2, 4) |
    |---------------|--------|--------|----------------------------------|
    | 32            | 1      | 1      | (1, 2, 4)                        |
    | 16            | 1      | 2      | (2, 4, 8)                        |
    | 8             | 2      | 4      | (4, 8, 16)                       |

    With `dilate_first_block="contract"` the first block of a dilated stage
    uses the previous stage's rate (OS8: stage3 (1, 2, 2, ...), stage4
    (2, 4, 4)); `multi_grid` overrides this for stage4.

"""


def _validate(blocks, output_stride, multi_grid, dilate_first_block):
    if not isinstance(blocks, (list, tuple)) or len(blocks) != 4:
        raise ValueError(
            "Expected `blocks` to be 4 integers (residual blocks per stage). "
            f"Received: blocks={blocks!r}"
        )
    blocks = tuple(check_int("blocks", b) for b in blocks)
    check_choice("output_stride", output_stride, _OUTPUT_STRIDES)
    if multi_grid is not None:
        if not isinstance(multi_grid, (list, tuple)) or len(multi_grid) != blocks[3]:
            raise ValueError(
                f"Expected `multi_grid` to be None or a tuple of {blocks[3]} positive "
                "integers, one rate multiplier per block of the last stage (e.g. "
                f"(1, 2, 4)). Received: multi_grid={multi_grid!r}"
            )
        multi_grid = tuple(check_int("multi_grid", m) for m in multi_grid)
    check_choice("dilate_first_block", dilate_first_block, _DILATE_FIRST)
    return blocks, multi_grid


def _stage_plan(blocks, output_stride, multi_grid, dilate_first_block):
    """Stride of each stage's first block and the 3x3 dilation of every block.

    Follows the dilated-ResNet rule (SPEC 4.7): once the running stride
    reaches `output_stride`, a stage's stride 2 becomes stride 1 and its
    dilation doubles instead. Returns `[(stride, (rate, ...), true_stride)]`.
    """
    plan = []
    current, rate = 4, 1  # after the stem and the max-pool
    for index, n in enumerate(blocks):
        stride = 1 if index == 0 else 2
        previous_rate = rate
        if stride == 2 and current >= output_stride:
            stride, rate = 1, rate * 2
        current *= stride
        rates = [rate] * n
        if index == 3 and multi_grid is not None:
            # DeepLab v3 (Chen et al., 2017, sec. 3.2): unit rates are the
            # stage rate times the multi-grid (PaddleSeg does the same; mmseg
            # replaces instead of multiplying).
            rates = [rate * m for m in multi_grid]
        elif dilate_first_block == "contract" and rate > previous_rate:
            # torchvision `replace_stride_with_dilation`, mmseg `contract_dilation`.
            rates[0] = previous_rate
        plan.append((stride, tuple(rates), current))
    return plan


def _bottleneck(x, filters, stride, dilation, shortcut_conv, name, bn):
    """One Caffe-style (v1) bottleneck block, named like keras.applications."""
    if shortcut_conv:
        shortcut = keras.layers.Conv2D(
            4 * filters, 1, strides=stride, data_format=bn["df"], name=f"{name}_0_conv"
        )(x)
        shortcut = _bn(shortcut, f"{name}_0_bn", bn)
    else:
        shortcut = x
    x = keras.layers.Conv2D(
        filters, 1, strides=stride, data_format=bn["df"], name=f"{name}_1_conv"
    )(x)
    x = _bn(x, f"{name}_1_bn", bn)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    # Stride 1: "same" pads `dilation` on every side, like torch's padding=dilation.
    x = keras.layers.Conv2D(
        filters,
        3,
        padding="same",
        dilation_rate=dilation,
        data_format=bn["df"],
        name=f"{name}_2_conv",
    )(x)
    x = _bn(x, f"{name}_2_bn", bn)
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = keras.layers.Conv2D(4 * filters, 1, data_format=bn["df"], name=f"{name}_3_conv")(x)
    x = _bn(x, f"{name}_3_bn", bn)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def _bn(x, name, bn):
    return keras.layers.BatchNormalization(
        axis=bn["axis"], momentum=bn["momentum"], epsilon=bn["epsilon"], name=name
    )(x)


def ResNet(
    blocks,
    input_shape=None,
    output_stride=32,
    multi_grid=None,
    dilate_first_block="full",
    weights=None,
    bn_momentum=0.9,
    bn_epsilon=1.001e-5,
    width=64,
    data_format=None,
    name="resnet",
):
    """Builds a dilated bottleneck ResNet (v1) returning a dict of stage features.

    The layout and layer names are those of `keras.applications.ResNet50/101`
    (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016),
    so their ImageNet weights load layer by layer; dilation (Yu & Koltun 2016;
    Chen et al., DeepLab v2/v3) replaces the stride of the last stages to reach
    `output_stride` and does not change any kernel shape.

    This is the Caffe-style ResNet v1 of keras.applications: the stride-2
    conv of a downsampling block is its first 1x1 conv (and the 1x1 shortcut),
    and every conv has a bias. torchvision and mmseg `style="pytorch"` use
    ResNet v1.5 (stride on the 3x3 conv, no conv biases), so their weights do
    not map onto this layout. DeepLab v2 and the original PSPNet used the Caffe
    layout. Padding follows keras.applications and torch: symmetric zero
    padding before every stride-2 7x7 conv and 3x3 max-pool (`"same"` would
    pad asymmetrically; SPEC 4.7), which equals torch's -inf padding for the
    max-pool because its input is a ReLU output.
    {table}
    Args:
        blocks: residual blocks per stage, e.g. `(3, 4, 6, 3)` for ResNet-50.
        input_shape: input shape without batch. Defaults to `(None, None, 3)`
            (`(3, None, None)` for channels_first); any size works.
        output_stride: 8, 16 or 32. Defaults to 32 (no dilation).
        multi_grid: None or one integer per block of the last stage: the
            last stage's rates become `rate * multi_grid[i]` (DeepLab v3 uses
            `(1, 2, 4)`). Defaults to None.
        dilate_first_block: `"full"` (default): every block of a dilated
            stage uses the stage's rate, as in DeepLab v2, PSPNet and
            PaddleSeg, and the multiplicative multi-grid of DeepLab v3.
            `"contract"`: the first block uses the previous rate, as in
            torchvision's `replace_stride_with_dilation` and mmseg's
            `contract_dilation=True`.
        weights: None (random initialisation), `"imagenet"` (keras.applications'
            ImageNet weights; Keras downloads them on first use), or the path
            of a keras.applications weights file of the same depth (with or
            without the classifier top). Only for depths 50, 101 and 152.
            The ImageNet weights expect "caffe" preprocessing (BGR, mean
            subtracted), as `keras.applications.resnet.preprocess_input`.
        bn_momentum: BatchNormalization momentum. Defaults to 0.9 (torch 0.1).
        bn_epsilon: BatchNormalization epsilon. Defaults to 1.001e-5, as
            keras.applications.
        width: channels of the stem and of stage 1's bottleneck; stage `i`
            uses `width * 2**(i - 1)` and outputs 4 times that. Defaults to 64
            (the standard ResNet). Smaller widths give compact networks for
            tests and quick experiments; pretrained weights need 64.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        name: model name.

    Returns:
        A `keras.Model` from the image to the dict above; its attribute
        `feature_info` (also `kseg.backbones.feature_info(model)`) is a
        `BackboneInfo` with every key's channels, stride and dilations.
    """
    blocks, multi_grid = _validate(blocks, output_stride, multi_grid, dilate_first_block)
    weights = check_weights(weights)
    width = check_int("width", width, minimum=1)
    if weights is not None and width != 64:
        raise ValueError(
            f"Pretrained `weights` need the standard width 64. Received: width={width}"
        )
    if weights is not None and blocks not in _APPLICATIONS:
        raise ValueError(
            "Pretrained `weights` exist only for the keras.applications layouts "
            f"{sorted(_APPLICATIONS)}. Received: weights={weights!r} with blocks={blocks}"
        )
    data_format = check_conv_data_format(standardize_data_format(data_format))
    bn = {
        "axis": -1 if data_format == "channels_last" else 1,
        "momentum": check_float("bn_momentum", bn_momentum, 0.0, 1.0),
        "epsilon": check_float("bn_epsilon", bn_epsilon, 0.0, None, inclusive=False),
        "df": data_format,
    }
    if input_shape is None:
        input_shape = (None, None, 3) if data_format == "channels_last" else (3, None, None)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.ZeroPadding2D(3, data_format=data_format, name="conv1_pad")(inputs)
    x = keras.layers.Conv2D(width, 7, strides=2, data_format=data_format, name="conv1_conv")(x)
    x = _bn(x, "conv1_bn", bn)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    outputs = {"stem": x}
    specs = [FeatureSpec("stem", "conv1_relu", width, 2)]
    x = keras.layers.ZeroPadding2D(1, data_format=data_format, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, data_format=data_format, name="pool1_pool")(x)

    plan = _stage_plan(blocks, output_stride, multi_grid, dilate_first_block)
    for index, (stride, rates, true_stride) in enumerate(plan):
        filters = width * 2**index
        for block, rate in enumerate(rates):
            x = _bottleneck(
                x,
                filters,
                stride if block == 0 else 1,
                rate,
                block == 0,
                f"conv{index + 2}_block{block + 1}",
                bn,
            )
        key = f"stage{index + 1}"
        outputs[key] = x
        specs.append(
            FeatureSpec(
                key, f"conv{index + 2}_block{len(rates)}_out", 4 * filters, true_stride, rates
            )
        )

    model = keras.Model(inputs, outputs, name=name)
    if weights is not None:
        app_name, stem = _APPLICATIONS[blocks]
        load_reference_weights(model, getattr(keras.applications, app_name), weights, stem)
    model.feature_info = BackboneInfo(
        family="resnet",
        variant="v1",
        output_stride=output_stride,
        features=tuple(specs),
        low_level="stage1",
        aux="stage3",
        high_level="stage4",
    )
    return model


def ResNet50(
    input_shape=None,
    output_stride=32,
    multi_grid=None,
    dilate_first_block="full",
    weights=None,
    bn_momentum=0.9,
    bn_epsilon=1.001e-5,
    data_format=None,
    name="resnet50",
):
    """Dilated ResNet-50 (keras.applications layout), a dict of stage features.

    See `kseg.backbones.ResNet` for every argument; `blocks=(3, 4, 6, 3)`.
    {table}
    Example:

    >>> backbone = kseg.backbones.ResNet50(output_stride=16)
    >>> features = backbone(np.zeros((1, 97, 131, 3)))
    >>> tuple(features["stage4"].shape)
    (1, 7, 9, 2048)
    """
    return ResNet(
        (3, 4, 6, 3),
        input_shape=input_shape,
        output_stride=output_stride,
        multi_grid=multi_grid,
        dilate_first_block=dilate_first_block,
        weights=weights,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
        data_format=data_format,
        name=name,
    )


def ResNet101(
    input_shape=None,
    output_stride=32,
    multi_grid=None,
    dilate_first_block="full",
    weights=None,
    bn_momentum=0.9,
    bn_epsilon=1.001e-5,
    data_format=None,
    name="resnet101",
):
    """Dilated ResNet-101 (keras.applications layout), a dict of stage features.

    See `kseg.backbones.ResNet` for every argument; `blocks=(3, 4, 23, 3)`.
    {table}
    Example:

    >>> backbone = kseg.backbones.ResNet101(output_stride=8, multi_grid=(1, 2, 4))
    >>> kseg.backbones.feature_info(backbone)["stage4"].dilation
    (4, 8, 16)
    """
    return ResNet(
        (3, 4, 23, 3),
        input_shape=input_shape,
        output_stride=output_stride,
        multi_grid=multi_grid,
        dilate_first_block=dilate_first_block,
        weights=weights,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
        data_format=data_format,
        name=name,
    )


for _builder in (ResNet, ResNet50, ResNet101):
    if _builder.__doc__:  # None under `python -OO`
        _builder.__doc__ = _builder.__doc__.replace("    {table}\n", _TABLE)
