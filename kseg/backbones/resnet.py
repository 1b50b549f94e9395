"""Dilated ResNet backbones: bottleneck (v1, v1.5, v1c) and basic-block (ResNet-18/34) layouts."""

import keras

from kseg._backend import check_conv_data_format
from kseg._common import check_choice, check_float, check_int, standardize_data_format
from kseg.backbones._info import BackboneInfo, FeatureSpec, as_backbone
from kseg.backbones._weights import check_weights, load_reference_weights

_OUTPUT_STRIDES = (8, 16, 32)
_DILATE_FIRST = ("full", "contract")
_VARIANTS = ("v1", "v1.5", "v1c")
_BLOCKS = ("bottleneck", "basic")
# Per layout: the first-block dilation rule and BN epsilon of the weights it loads
# (keras.applications' 1.001e-5; torch's BatchNorm2d default 1e-5).
_VARIANT_DEFAULTS = {
    "v1": {"dilate_first_block": "full", "bn_epsilon": 1.001e-5, "preprocessing": "caffe"},
    "v1.5": {"dilate_first_block": "contract", "bn_epsilon": 1e-5, "preprocessing": "torch"},
    "v1c": {"dilate_first_block": "contract", "bn_epsilon": 1e-5, "preprocessing": "torch"},
}

# keras.applications models with the same layout, for weight loading.
_APPLICATIONS = {
    (3, 4, 6, 3): ("ResNet50", "resnet50"),
    (3, 4, 23, 3): ("ResNet101", "resnet101"),
    (3, 8, 36, 3): ("ResNet152", "resnet152"),
}

_TABLE = """
    Outputs (a dict; `H` is the input height, likewise for the width; every
    map has `ceil(H / stride)` rows for any `H`, because every stride-2 step is
    `floor((h - 1) / 2) + 1`: the 7x7/2 stem conv after symmetric padding 3
    (v1c: the first 3x3/2 conv after padding 1), the 3x3/2 max-pool after
    symmetric zero padding 1, and the 1x1/2 (v1) or padded 3x3/2 (v1.5, v1c)
    convs):

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

    Dilation rates of the 3x3 convs (`conv{4,5}_block*_2_conv`) with
    `dilate_first_block="full"` (the v1 default):

    | output_stride | stage3 | stage4 | stage4 with multi_grid=(1, 2, 4) |
    |---------------|--------|--------|----------------------------------|
    | 32            | 1      | 1      | (1, 2, 4)                        |
    | 16            | 1      | 2      | (2, 4, 8)                        |
    | 8             | 2      | 4      | (4, 8, 16)                       |

    With `dilate_first_block="contract"` the first block of a dilated stage
    uses the previous stage's rate (OS8: stage3 (1, 2, 2, ...), stage4
    (2, 4, 4)), as torchvision's ResNet (the v1.5 and v1c default);
    `multi_grid` overrides this for stage4.

"""

_BASIC_TABLE = """
    Outputs (a dict; every map has `ceil(H / stride)` rows for any input
    height `H`, likewise for the width, as in `ResNet50`):

    | key      | layer (R18 / R34)                       | channels | OS32 | OS16 | OS8 |
    |----------|-----------------------------------------|----------|------|------|-----|
    | `stem`   | `conv1_relu`                            |       64 |    2 |    2 |   2 |
    | `stage1` | `conv2_block2_out` / `conv2_block3_out` |       64 |    4 |    4 |   4 |
    | `stage2` | `conv3_block2_out` / `conv3_block4_out` |      128 |    8 |    8 |   8 |
    | `stage3` | `conv4_block2_out` / `conv4_block6_out` |      256 |   16 |   16 |   8 |
    | `stage4` | `conv5_block2_out` / `conv5_block3_out` |      512 |   32 |   16 |   8 |

    (the OS columns give the true stride for each `output_stride`.)

    `stage1..stage4` are torchvision's `layer1..layer4`. Roles (see
    `kseg.backbones.feature_info`): `low_level="stage1"`, `aux="stage3"`,
    `high_level="stage4"`.

    Dilation follows segmentation_models_pytorch's encoders (`make_dilated`
    in `encoders/_base.py`): a dilated stage has stride 1 (its first 3x3 conv
    and its 1x1 shortcut conv), and both 3x3 convs of every one of its blocks,
    the first block's included, have the stage's rate (padding equal to it):

    | output_stride | stage3 | stage4 | stage4 with multi_grid=(m1, m2, ...) |
    |---------------|--------|--------|--------------------------------------|
    | 32            | 1      | 1      | (m1, m2, ...)                        |
    | 16            | 1      | 2      | (2 m1, 2 m2, ...)                    |
    | 8             | 2      | 4      | (4 m1, 4 m2, ...)                    |

    (`multi_grid`, which smp does not have, multiplies the rate of both 3x3
    convs of each block of stage 4; at output stride 32, `m1` must be 1, as
    the first 3x3 conv keeps its stride 2 and a Keras convolution cannot have
    both a stride and a dilation above 1.)

"""


def _validate(blocks, output_stride, multi_grid, dilate_first_block):
    """Checks the layout arguments; `dilate_first_block` is already resolved."""
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
                f"{tuple(2**i for i in range(blocks[3]))}). Received: multi_grid={multi_grid!r}"
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
    """One bottleneck block, named like keras.applications.

    v1 (Caffe style, keras.applications): the stride is on the first 1x1 conv
    and every conv has a bias. v1.5 and v1c (torchvision, timm, mmseg
    `style="pytorch"`): the stride is on the 3x3 conv, and no conv has a bias
    (each is followed by BN).
    """
    v1 = bn["variant"] == "v1"
    conv = {"use_bias": v1, "data_format": bn["df"]}
    if shortcut_conv:
        shortcut = keras.layers.Conv2D(
            4 * filters, 1, strides=stride, name=f"{name}_0_conv", **conv
        )(x)
        shortcut = _bn(shortcut, f"{name}_0_bn", bn)
    else:
        shortcut = x
    x = keras.layers.Conv2D(filters, 1, strides=stride if v1 else 1, name=f"{name}_1_conv", **conv)(
        x
    )
    x = _bn(x, f"{name}_1_bn", bn)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = _conv3x3(x, filters, 1 if v1 else stride, dilation, f"{name}_2", conv)
    x = _bn(x, f"{name}_2_bn", bn)
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = keras.layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv", **conv)(x)
    x = _bn(x, f"{name}_3_bn", bn)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def _conv3x3(x, filters, stride, dilation, name, conv):
    """A 3x3 conv `{name}_conv` padded as torch's `padding=dilation`.

    Stride 1: `"same"` pads `dilation` on every side. Stride 2 (dilation 1,
    checked in `ResNet`): zero padding 1 on every side (`{name}_pad`), where
    `"same"` would pad only the bottom and right of an even size.
    """
    if stride == 1:
        return keras.layers.Conv2D(
            filters, 3, padding="same", dilation_rate=dilation, name=f"{name}_conv", **conv
        )(x)
    x = keras.layers.ZeroPadding2D(1, data_format=conv["data_format"], name=f"{name}_pad")(x)
    return keras.layers.Conv2D(filters, 3, strides=stride, name=f"{name}_conv", **conv)(x)


def _basic(x, filters, stride, dilation, shortcut_conv, name, bn):
    """One basic block (torchvision's `BasicBlock`), named like the bottleneck.

    Two 3x3 convs without bias, each followed by BN (`{name}_1_*`,
    `{name}_2_*`; torch `conv1`, `bn1`, `conv2`, `bn2`), the first with the
    block's stride, both with `dilation`; where the stride or the channels
    change, a 1x1 conv with the stride and BN on the shortcut (`{name}_0_*`;
    torch `downsample.0` and `.1`).
    """
    conv = {"use_bias": False, "data_format": bn["df"]}
    if shortcut_conv:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, name=f"{name}_0_conv", **conv)(x)
        shortcut = _bn(shortcut, f"{name}_0_bn", bn)
    else:
        shortcut = x
    x = _conv3x3(x, filters, stride, dilation, f"{name}_1", conv)
    x = _bn(x, f"{name}_1_bn", bn)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = _conv3x3(x, filters, 1, dilation, f"{name}_2", conv)
    x = _bn(x, f"{name}_2_bn", bn)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def _stem(inputs, width, bn):
    """The stem up to its ReLU (`conv1_relu`, stride 2).

    v1 / v1.5: a 7x7/2 conv after symmetric zero padding 3 (with a bias in v1).
    v1c (Bag of Tricks, He et al. 2019, "ResNet-C"; mmseg `ResNetV1c`, timm
    `resnet50c`): three 3x3 convs, `width / 2`, `width / 2` and `width`
    channels, the first with stride 2 after symmetric padding 1, each followed
    by BN and ReLU.
    """
    df = bn["df"]
    if bn["variant"] != "v1c":
        x = keras.layers.ZeroPadding2D(3, data_format=df, name="conv1_pad")(inputs)
        x = keras.layers.Conv2D(
            width, 7, strides=2, use_bias=bn["variant"] == "v1", data_format=df, name="conv1_conv"
        )(x)
        x = _bn(x, "conv1_bn", bn)
        return keras.layers.Activation("relu", name="conv1_relu")(x)
    half = max(width // 2, 1)
    x = keras.layers.ZeroPadding2D(1, data_format=df, name="conv1_1_pad")(inputs)
    for index, channels in enumerate((half, half, width), start=1):
        x = keras.layers.Conv2D(
            channels,
            3,
            strides=2 if index == 1 else 1,
            padding="valid" if index == 1 else "same",
            use_bias=False,
            data_format=df,
            name=f"conv1_{index}_conv",
        )(x)
        x = _bn(x, f"conv1_{index}_bn", bn)
        relu = "conv1_relu" if index == 3 else f"conv1_{index}_relu"
        x = keras.layers.Activation("relu", name=relu)(x)
    return x


def _bn(x, name, bn):
    return keras.layers.BatchNormalization(
        axis=bn["axis"], momentum=bn["momentum"], epsilon=bn["epsilon"], name=name
    )(x)


def ResNet(
    blocks,
    input_shape=None,
    output_stride=32,
    multi_grid=None,
    dilate_first_block=None,
    weights=None,
    bn_momentum=0.9,
    bn_epsilon=None,
    width=64,
    data_format=None,
    variant=None,
    block="bottleneck",
    name="resnet",
):
    """Builds a dilated ResNet returning a dict of stage features.

    Three layouts of bottleneck blocks (He et al., "Deep Residual Learning for
    Image Recognition", CVPR 2016; He et al., "Bag of Tricks for Image
    Classification", CVPR 2019) and torchvision's basic-block layout
    (ResNet-18/34), all with keras.applications' layer names; dilation (Yu &
    Koltun 2016; Chen et al., DeepLab v2/v3) replaces the stride of the last
    stages to reach `output_stride` and does not change any kernel shape:

    - `"v1"` (default): keras.applications' Caffe-style ResNet. The stride-2
      conv of a downsampling block is its first 1x1 conv (and the 1x1
      shortcut), and every conv has a bias; its ImageNet weights load layer
      by layer. DeepLab v2 and the original PSPNet used this layout.
    - `"v1.5"`: torchvision's and timm's ResNet (mmseg `style="pytorch"`): the
      stride is on the 3x3 conv (after symmetric padding 1, as torch) and no
      conv has a bias. Loads torchvision and timm checkpoints.
    - `"v1c"`: v1.5 with mmseg's `ResNetV1c` / timm's `resnet50c` deep stem,
      three 3x3 convs of 32, 32 and 64 channels instead of the 7x7 conv (the
      layer names are `conv1_{1,2,3}_{conv,bn}`, the stem output stays
      `conv1_relu`). Loads timm (`resnet50c`) and mmseg (`resnet50_v1c`)
      checkpoints.
    - `block="basic"` (the v1.5 layout, the only one it has): torchvision's
      `BasicBlock`, two 3x3 convs (the first with the stride) of the stage's
      width, no bias, each followed by BN, and a 1x1 conv with the stride and
      BN on the shortcut where the stride or the channels change. Its layer
      names follow the bottleneck's (`conv{s}_block{b}_{0,1,2}_{conv,bn}`).
      torchvision's `BasicBlock` refuses dilation; this one dilates as
      segmentation_models_pytorch's encoders do (`make_dilated`: stride 1
      and the stage's rate on every 3x3 conv of a dilated stage, so
      `dilate_first_block="full"`). See `ResNet18` for the rates.

    Padding follows torch: symmetric zero padding before every stride-2
    convolution and the 3x3 max-pool (`"same"` would pad asymmetrically;
    SPEC 4.7), which equals torch's -inf padding for the max-pool because its
    input is a ReLU output.
    {table}
    Args:
        blocks: residual blocks per stage, e.g. `(3, 4, 6, 3)` for ResNet-50.
        input_shape: input shape without batch. Defaults to `(None, None, 3)`
            (`(3, None, None)` for channels_first); any size works.
        output_stride: 8, 16 or 32. Defaults to 32 (no dilation).
        multi_grid: None or one integer per block of the last stage: the
            last stage's rates become `rate * multi_grid[i]` (DeepLab v3 uses
            `(1, 2, 4)`). Defaults to None.
        dilate_first_block: `"full"`: every block of a dilated stage uses the
            stage's rate, as in DeepLab v2, PSPNet and PaddleSeg, and the
            multiplicative multi-grid of DeepLab v3. `"contract"`: the first
            block uses the previous rate, as in torchvision's
            `replace_stride_with_dilation` and mmseg's `contract_dilation=True`.
            Defaults to None: `"full"` for v1 and for basic blocks (which
            take only `"full"`), `"contract"` for v1.5 and v1c bottlenecks.
        weights: None (random initialisation), `"imagenet"`, a file path, or
            (v1.5 and v1c) a state dict `{name: array or torch tensor}`.
            v1: `"imagenet"` is keras.applications' ImageNet file (Keras
            downloads it on first use; depths 50, 101 and 152; "caffe"
            preprocessing: BGR, mean subtracted), a path is a keras.applications
            weights file of the same depth (with or without the classifier
            top). v1.5: `"imagenet"` is torchvision's `IMAGENET1K_V2`
            checkpoint (depths 50 and 101; with basic blocks `IMAGENET1K_V1`,
            depths 18 and 34; downloaded on first use into `~/.keras/models/`
            and checked against the SHA-256 prefix in its name), a
            path is a torchvision or timm checkpoint (`.pth` / `.pt` / `.bin`
            state dict, read with torch, or `.safetensors`, read without it).
            v1c: a timm `resnet50c`-style or mmseg `ResNetV1c` checkpoint
            (files only). Torch checkpoints expect "torch" preprocessing (RGB
            in [0, 1], ImageNet mean and std). Loading is strict: a missing,
            unexpected or misshapen weight raises and nothing is loaded; the
            ImageNet classifier (`fc.*`) is the one key skipped.
        bn_momentum: BatchNormalization momentum. Defaults to 0.9 (torch 0.1).
        bn_epsilon: BatchNormalization epsilon. Defaults to None: 1.001e-5
            for v1 (keras.applications), 1e-5 for v1.5 and v1c (torch).
        width: channels of the stem and of stage 1's blocks; stage `i`
            uses `width * 2**(i - 1)` and outputs that (basic blocks) or 4
            times that (bottlenecks). Defaults to 64
            (the standard ResNet). Smaller widths give compact networks for
            tests and quick experiments; pretrained weights need 64.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        variant: `"v1"`, `"v1.5"` or `"v1c"`, see above. Defaults to None:
            `"v1"` for bottlenecks, `"v1.5"` for basic blocks.
        block: `"bottleneck"` (default; 1x1, 3x3, 1x1 with 4x expansion, as
            ResNet-50 and deeper) or `"basic"` (two 3x3, as ResNet-18/34).
        name: model name.

    Returns:
        A `keras.Model` from the image to the dict above; its attribute
        `feature_info` (also `kseg.backbones.feature_info(model)`) is a
        `BackboneInfo` with every key's channels, stride and dilations, the
        layout (`variant`) and the preprocessing its pretrained weights expect.
    """
    block = check_choice("block", block, _BLOCKS)
    basic = block == "basic"
    if variant is None:
        variant = "v1.5" if basic else "v1"
    variant = check_choice("variant", variant, _VARIANTS)
    if basic and variant != "v1.5":
        raise ValueError(
            "Basic blocks have torchvision's layout, `variant='v1.5'` (stride on the first "
            f"3x3 conv, no conv bias). Received: variant={variant!r} with block='basic'"
        )
    defaults = _VARIANT_DEFAULTS[variant]
    if dilate_first_block is None:
        dilate_first_block = "full" if basic else defaults["dilate_first_block"]
    if basic and dilate_first_block != "full":
        raise ValueError(
            "Basic blocks dilate as segmentation_models_pytorch's encoders do, every 3x3 "
            "conv of a dilated stage at the stage's rate: expected `dilate_first_block` "
            f"to be None or 'full'. Received: dilate_first_block={dilate_first_block!r}"
        )
    if bn_epsilon is None:
        bn_epsilon = defaults["bn_epsilon"]
    blocks, multi_grid = _validate(blocks, output_stride, multi_grid, dilate_first_block)
    if variant == "v1":
        weights = check_weights(weights)
    else:
        # torch checkpoints are read by the converters (kseg.convert imports the
        # backbones, so not at this module's import).
        from kseg.convert import state_dict as torch_state

        weights = torch_state.check_torch_weights(weights, variant)
    width = check_int("width", width, minimum=1)
    if weights is not None and width != 64:
        raise ValueError(
            f"Pretrained `weights` need the standard width 64. Received: width={width}"
        )
    if variant == "v1" and weights is not None and blocks not in _APPLICATIONS:
        raise ValueError(
            "Pretrained `weights` exist only for the keras.applications layouts "
            f"{sorted(_APPLICATIONS)}. Received: weights={weights!r} with blocks={blocks}"
        )
    imagenet = torch_state.torchvision_imagenet_table(block) if variant == "v1.5" else {}
    if variant == "v1.5" and weights == "imagenet" and blocks not in imagenet:
        raise ValueError(
            f"`weights='imagenet'` of the v1.5 layout are torchvision's, for the {block} "
            f"layouts {sorted(imagenet)}. Received: blocks={blocks}"
        )
    plan = _stage_plan(blocks, output_stride, multi_grid, dilate_first_block)
    if variant != "v1":
        for index, (stride, rates, _) in enumerate(plan):
            if stride == 2 and rates[0] > 1:
                raise ValueError(
                    f"The {variant} layout puts a downsampling block's stride on its 3x3 conv, "
                    "and Keras convolutions cannot have both a stride and a dilation above 1: "
                    f"stage {index + 1} would have stride 2 and rate {rates[0]}. Use a "
                    "`multi_grid` whose first entry is 1 at this output stride, or "
                    f"variant='v1'. Received: output_stride={output_stride}, "
                    f"multi_grid={multi_grid}"
                )
    data_format = check_conv_data_format(standardize_data_format(data_format))
    bn = {
        "axis": -1 if data_format == "channels_last" else 1,
        "momentum": check_float("bn_momentum", bn_momentum, 0.0, 1.0),
        "epsilon": check_float("bn_epsilon", bn_epsilon, 0.0, None, inclusive=False),
        "df": data_format,
        "variant": variant,
    }
    if input_shape is None:
        input_shape = (None, None, 3) if data_format == "channels_last" else (3, None, None)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = _stem(inputs, width, bn)
    outputs = {"stem": x}
    specs = [FeatureSpec("stem", "conv1_relu", width, 2)]
    x = keras.layers.ZeroPadding2D(1, data_format=data_format, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, data_format=data_format, name="pool1_pool")(x)

    apply_block, expansion = (_basic, 1) if basic else (_bottleneck, 4)
    channels = width
    for index, (stride, rates, true_stride) in enumerate(plan):
        filters = width * 2**index
        for number, rate in enumerate(rates):
            block_stride = stride if number == 0 else 1
            x = apply_block(
                x,
                filters,
                block_stride,
                rate,
                # torchvision's rule for a shortcut conv ("downsample")
                block_stride != 1 or channels != expansion * filters,
                f"conv{index + 2}_block{number + 1}",
                bn,
            )
            channels = expansion * filters
        key = f"stage{index + 1}"
        outputs[key] = x
        specs.append(
            FeatureSpec(key, f"conv{index + 2}_block{len(rates)}_out", channels, true_stride, rates)
        )

    model = keras.Model(inputs, outputs, name=name)
    if weights is not None and variant == "v1":
        app_name, stem = _APPLICATIONS[blocks]
        load_reference_weights(model, getattr(keras.applications, app_name), weights, stem)
    elif weights is not None:
        if weights == "imagenet":
            weights = torch_state.torchvision_imagenet_file(blocks, block)
        torch_state.load_torch_resnet(model, torch_state.read_state_dict(weights), skip=("fc.",))
    info = BackboneInfo(
        family="resnet",
        variant=variant,
        output_stride=output_stride,
        features=tuple(specs),
        low_level="stage1",
        aux="stage3",
        high_level="stage4",
        preprocessing=defaults["preprocessing"],
    )
    return as_backbone(model, info)


def ResNet50(
    input_shape=None,
    output_stride=32,
    multi_grid=None,
    dilate_first_block=None,
    weights=None,
    bn_momentum=0.9,
    bn_epsilon=None,
    data_format=None,
    variant="v1",
    name="resnet50",
):
    """Dilated ResNet-50 (v1, v1.5 or v1c layout), a dict of stage features.

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
        variant=variant,
        name=name,
    )


def ResNet101(
    input_shape=None,
    output_stride=32,
    multi_grid=None,
    dilate_first_block=None,
    weights=None,
    bn_momentum=0.9,
    bn_epsilon=None,
    data_format=None,
    variant="v1",
    name="resnet101",
):
    """Dilated ResNet-101 (v1, v1.5 or v1c layout), a dict of stage features.

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
        variant=variant,
        name=name,
    )


def ResNet18(
    input_shape=None,
    output_stride=32,
    multi_grid=None,
    weights=None,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    data_format=None,
    name="resnet18",
):
    """Dilated ResNet-18 (torchvision's basic-block layout), a dict of stage features.

    `kseg.backbones.ResNet((2, 2, 2, 2), block="basic")`: torchvision's
    `resnet18` (He et al., CVPR 2016, Table 1): the 7x7/2 stem conv and the
    3x3/2 max-pool, then 2 basic blocks per stage (two 3x3 convs without
    bias, each followed by BN; a 1x1 conv with BN on the shortcut of each
    stage's first block from stage 2 on), dilated as
    segmentation_models_pytorch's encoders.
    {table}
    Args:
        input_shape: input shape without batch. Defaults to `(None, None, 3)`
            (`(3, None, None)` for channels_first); any size works.
        output_stride: 8, 16 or 32. Defaults to 32 (no dilation).
        multi_grid: None or 2 integers, the rate multipliers of stage 4's
            blocks. Defaults to None.
        weights: None (random initialisation), `"imagenet"`, a file path or a
            state dict `{name: array or torch tensor}`. `"imagenet"` is
            torchvision's `IMAGENET1K_V1` checkpoint `resnet18-f37072fd.pth`
            (69.76% top-1), downloaded on first use into `~/.keras/models/`;
            its SHA-256 must start with the 8 hex digits of its name (as
            `torch.hub` checks; torchvision publishes no full hash). A path
            is a torchvision or timm `resnet18` checkpoint (`.pth` / `.pt` /
            `.bin`, read with torch, or `.safetensors`, read without it).
            These weights expect "torch" preprocessing (RGB in [0, 1],
            ImageNet mean and std). Loading is strict: a missing, unexpected
            or misshapen weight raises (all of them listed) and nothing is
            loaded; the classifier (`fc.*`) is the one key skipped.
        bn_momentum: BatchNormalization momentum. Defaults to 0.9 (torch 0.1).
        bn_epsilon: BatchNormalization epsilon. Defaults to 1e-5 (torch's).
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        name: model name.

    Returns:
        A `kseg.backbones.Backbone` from the image to the dict above, with
        `feature_info` (family `"resnet"`, variant `"v1.5"`, preprocessing
        `"torch"`).

    Example:

    >>> backbone = kseg.backbones.ResNet18(output_stride=8)
    >>> info = kseg.backbones.feature_info(backbone)
    >>> info.channels("stage4"), info.stride("stage4"), info["stage4"].dilation
    (512, 8, (4, 4))
    """
    return ResNet(
        (2, 2, 2, 2),
        input_shape=input_shape,
        output_stride=output_stride,
        multi_grid=multi_grid,
        weights=weights,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
        data_format=data_format,
        block="basic",
        name=name,
    )


def ResNet34(
    input_shape=None,
    output_stride=32,
    multi_grid=None,
    weights=None,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    data_format=None,
    name="resnet34",
):
    """Dilated ResNet-34 (torchvision's basic-block layout), a dict of stage features.

    `kseg.backbones.ResNet((3, 4, 6, 3), block="basic")`: torchvision's
    `resnet34`, `ResNet18` with 3, 4, 6 and 3 blocks per stage. See
    `ResNet18` for the arguments; `multi_grid` has 3 entries, and
    `weights="imagenet"` is torchvision's `IMAGENET1K_V1` checkpoint
    `resnet34-b627a593.pth` (73.31% top-1; its SHA-256 must start with
    `b627a593`).
    {table}
    Example:

    >>> backbone = kseg.backbones.ResNet34(output_stride=16)
    >>> features = backbone(np.zeros((1, 97, 131, 3)))
    >>> tuple(features["stage4"].shape)
    (1, 7, 9, 512)
    """
    return ResNet(
        (3, 4, 6, 3),
        input_shape=input_shape,
        output_stride=output_stride,
        multi_grid=multi_grid,
        weights=weights,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
        data_format=data_format,
        block="basic",
        name=name,
    )


for _builder, _table in (
    (ResNet, _TABLE),
    (ResNet50, _TABLE),
    (ResNet101, _TABLE),
    (ResNet18, _BASIC_TABLE),
    (ResNet34, _BASIC_TABLE),
):
    if _builder.__doc__:  # None under `python -OO`
        _builder.__doc__ = _builder.__doc__.replace("    {table}\n", _table)
