"""The modified aligned Xception-65 of DeepLab v3+, loading timm's `xception65` checkpoints."""

import collections.abc

import keras

from kseg._common import check_choice, check_float
from kseg.backbones._info import BackboneInfo, FeatureSpec, as_backbone
from kseg.backbones._weights import existing_file

_OUTPUT_STRIDES = (8, 16, 32)
# timm builds xception65 with BatchNorm2d(eps=1e-3, momentum=0.1); torch's
# momentum 0.1 is Keras' 0.9 (the default of `bn_momentum`). The checkpoints
# were trained with that epsilon, so it is fixed.
_BN_EPSILON = 1e-3

# The 21 Xception modules: (output channels of the three separable convs,
# stride of the third, whether each separable conv is preceded by a ReLU
# (else BN is followed by ReLU inside it), whether the module adds its input).
_ENTRY = (((128,) * 3, 2), ((256,) * 3, 2), ((728,) * 3, 2))
_MIDDLE = (((728,) * 3, 1),) * 16
_BLOCKS = tuple((chs, stride, True, True) for chs, stride in _ENTRY + _MIDDLE) + (
    ((728, 1024, 1024), 2, True, True),
    ((1536, 1536, 2048), 1, False, False),
)
_STEM_CHANNELS = (32, 64)

_IMAGENET_HINT = (
    "kseg does not download the Xception-65 ImageNet checkpoint. Get timm's "
    "`xception65.ra3_in1k` (the file `model.safetensors` of "
    "https://huggingface.co/timm/xception65.ra3_in1k), or write one with "
    "`torch.save(timm.create_model('xception65', pretrained=True).state_dict(), path)`, "
    "and pass its path as `weights`."
)

_TABLE = """
    Outputs (a dict; every map has `ceil(H / stride)` rows for an input of
    `H` rows, as in timm: each stride-2 3x3 convolution pads 1 on every side
    and each stride-2 1x1 shortcut is unpadded, so a stride-2 step gives
    `floor((h - 1) / 2) + 1` rows):

    | key      | layer                          | channels | OS32 | OS16 | OS8 |
    |----------|--------------------------------|----------|------|------|-----|
    | `level1` | `blocks_0_stack_act3`          |      128 |    2 |    2 |   2 |
    | `level2` | `blocks_1_stack_act3`          |      256 |    4 |    4 |   4 |
    | `level3` | `blocks_2_stack_act3`          |      728 |    8 |    8 |   8 |
    | `level4` | `blocks_19_stack_act3`         |     1024 |   16 |   16 |   8 |
    | `level5` | `blocks_20_stack_conv3_act_pw` |     2048 |   32 |   16 |   8 |

    (the OS columns give the true stride for each `output_stride`.)

    These are timm's `feature_info` taps: `level1` ... `level4` are the ReLU
    before the strided third separable conv of modules 0, 1, 2 and 19 (each
    at its module's input stride), `level5` is the last module's output.
    Roles: `low_level="level2"` (the DeepLab v3+ decoder input),
    `aux="level4"`, `high_level="level5"`.

    Dilation: a module whose stride would take the running stride beyond
    `output_stride` gets stride 1, and every later module doubles its rate
    (the module itself keeps the previous one):

    | output_stride | modules 3-18 | module 19 | module 20 |
    |---------------|--------------|-----------|-----------|
    | 32            | 1            | 1         | 1         |
    | 16            | 1            | 1         | 2         |
    | 8             | 2            | 2         | 4         |

"""


def _bn(x, name, momentum):
    return keras.layers.BatchNormalization(
        axis=-1, momentum=momentum, epsilon=_BN_EPSILON, name=name
    )(x)


def _relu(x, name):
    return keras.layers.ReLU(name=name)(x)


def _conv(x, filters, kernel_size, stride, dilation, name, depthwise=False):
    """A bias-free conv padded as torch's `(stride - 1 + dilation * (k - 1)) // 2` on each side.

    At stride 1 that is Keras' "same" (symmetric for an odd kernel); a stride-2
    3x3 conv pads 1 on every side explicitly (Keras' "same" would pad only the
    bottom and right of an even size), a stride-2 1x1 conv not at all.
    """
    padding = "same"
    if stride > 1:
        padding = "valid"
        if kernel_size > 1:
            pad = (stride - 1 + dilation * (kernel_size - 1)) // 2
            x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    kwargs = dict(
        strides=stride, padding=padding, dilation_rate=dilation, use_bias=False, name=name
    )
    if depthwise:
        return keras.layers.DepthwiseConv2D(kernel_size, **kwargs)(x)
    return keras.layers.Conv2D(filters, kernel_size, **kwargs)(x)


def _separable(x, filters, stride, dilation, activate, name, momentum):
    """Depthwise 3x3 -> BN (-> ReLU) -> pointwise 1x1 -> BN (-> ReLU), timm's `SeparableConv2d`."""
    x = _conv(x, None, 3, stride, dilation, f"{name}_conv_dw", depthwise=True)
    x = _bn(x, f"{name}_bn_dw", momentum)
    if activate:
        x = _relu(x, f"{name}_act_dw")
    x = _conv(x, filters, 1, 1, 1, f"{name}_conv_pw")
    x = _bn(x, f"{name}_bn_pw", momentum)
    if activate:
        x = _relu(x, f"{name}_act_pw")
    return x


def _module(x, index, channels, stride, dilation, start_with_relu, skip, momentum):
    """One Xception module; returns its output and the input of its third separable conv.

    Three separable convs (the third with the module's stride), each preceded
    by a ReLU (`start_with_relu`) or each ending in BN + ReLU, plus the input,
    through a 1x1 conv + BN where the shape changes, when `skip`.
    """
    name = f"blocks_{index}"
    inputs = x
    tap = None
    for i, filters in enumerate(channels):
        if start_with_relu:
            x = _relu(x, f"{name}_stack_act{i + 1}")
        if i == 2:
            tap = x
        x = _separable(
            x,
            filters,
            stride if i == 2 else 1,
            dilation,
            not start_with_relu,
            f"{name}_stack_conv{i + 1}",
            momentum,
        )
    if skip:
        shortcut = inputs
        if stride != 1 or inputs.shape[-1] != channels[-1]:
            shortcut = _conv(inputs, channels[-1], 1, stride, 1, f"{name}_shortcut_conv")
            shortcut = _bn(shortcut, f"{name}_shortcut_bn", momentum)
        x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return x, tap


def _plan(output_stride):
    """Per module: (stride, dilation, stride of its input), timm's rule for `output_stride`."""
    plan, current, rate = [], 2, 1  # after the stride-2 stem
    for _, stride, _, _ in _BLOCKS:
        block_rate, block_input = rate, current
        if stride > 1:
            if current * stride > output_stride:
                rate *= stride
                stride = 1
            else:
                current *= stride
        plan.append((stride, block_rate, block_input))
    return plan


def _check_weights(weights, input_shape):
    if weights is None or isinstance(weights, collections.abc.Mapping):
        checked = weights
    elif isinstance(weights, str) and weights == "imagenet":
        raise ValueError(f"{_IMAGENET_HINT} Received: weights={weights!r}")
    else:
        checked = existing_file(
            weights,
            "None, a state dict or the path of a timm xception65 checkpoint (.pth, .pt, .bin "
            "or .safetensors)",
        )
    if checked is not None and input_shape[-1] != 3:
        raise ValueError(
            "Pretrained `weights` need 3 input channels (RGB): build the backbone for 3 "
            "channels and adapt it with `kseg.backbones.with_input_channels` (the builders "
            "do so for a backbone name). Received: "
            f"input_shape={tuple(input_shape)}"
        )
    return checked


def Xception65(
    input_shape=None, weights=None, output_stride=16, bn_momentum=0.9, name="xception65"
):
    """The modified aligned Xception-65 of DeepLab v3+, a dict of features.

    Chen et al., "Encoder-Decoder with Atrous Separable Convolution for
    Semantic Image Segmentation" (DeepLab v3+, ECCV 2018), sec. 3.2, modify
    Xception (Chollet, CVPR 2017) as MSRA's aligned Xception: a deeper
    network, every max-pool replaced by a strided depthwise separable
    convolution (so that atrous convolution can take its place), and BN + ReLU
    after each 3x3 depthwise convolution. The layout and the weights are those
    of timm's `xception65` (`timm/models/xception_aligned.py`):

    - stem: 3x3/2 conv (32) and 3x3 conv (64), each with BN and ReLU;
    - entry flow: modules 0-2 (128, 256 and 728 channels, stride 2 each);
    - middle flow: modules 3-18 (728 channels, 16 residual modules);
    - exit flow: module 19 (728, 1024, 1024 channels, stride 2) and module
      20 (1536, 1536, 2048, no residual, each separable conv ending in BN and
      ReLU).

    A module of the entry, middle and exit flow (0-19) is ReLU -> separable
    conv three times (the third strided), plus its input (through a 1x1 conv
    + BN where the shape changes). A separable conv is depthwise 3x3 -> BN ->
    pointwise 1x1 -> BN; no conv has a bias; BN has timm's epsilon 1e-3 (the
    checkpoints' own) and momentum `bn_momentum` (0.9, timm's 0.1). The layer
    names are timm's module paths with `_` for `.`
    (`blocks_3_stack_conv1_conv_dw` for `blocks.3.stack.conv1.conv_dw`), so
    every checkpoint key names its layer. Channels_last only.
    {table}
    Args:
        input_shape: input shape without batch. Defaults to `(None, None, 3)`;
            any size works, any channel count without `weights`.
        weights: None (random initialisation), the path of a timm
            `xception65` checkpoint (a `.pth` / `.pt` / `.bin` state dict,
            read with torch, or `.safetensors`, read without it), or a state
            dict `{name: array or torch tensor}`. kseg downloads nothing:
            timm's ImageNet weights are `xception65.ra3_in1k` on the Hugging
            Face hub (its `model.safetensors`), or
            `torch.save(timm.create_model("xception65", pretrained=True).state_dict(), path)`.
            Loading is strict: a missing, unexpected or misshapen weight
            raises and nothing is loaded; the classifier (`head.fc.*`) is the
            one part skipped. The checkpoint loads at every output stride.
            The weights expect "tf" preprocessing (`x / 127.5 - 1`: timm's
            mean and std 0.5 of RGB in [0, 1]).
        output_stride: 8, 16 or 32. Defaults to 16 (DeepLab v3+'s training
            setting).
        bn_momentum: the momentum of every BatchNormalization (Keras'
            convention: torch's momentum 0.1 is 0.9). Defaults to 0.9.
        name: model name.

    Returns:
        A `keras.Model` from the image to the dict above; its attribute
        `feature_info` (also `kseg.backbones.feature_info(model)`) is a
        `BackboneInfo` with every key's channels, true stride and dilation.

    Example:

    >>> backbone = kseg.backbones.Xception65(output_stride=16)
    >>> features = backbone(np.zeros((1, 97, 131, 3)))
    >>> tuple(features["level5"].shape), tuple(features["level2"].shape)
    ((1, 7, 9, 2048), (1, 25, 33, 256))
    """
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "Xception65 is built channels_last; call "
            "`keras.config.set_image_data_format('channels_last')` first. Received: "
            f"image_data_format={keras.config.image_data_format()!r}"
        )
    output_stride = int(check_choice("output_stride", output_stride, _OUTPUT_STRIDES))
    bn_momentum = check_float("bn_momentum", bn_momentum, 0.0, 1.0)
    if input_shape is None:
        input_shape = (None, None, 3)
    input_shape = tuple(input_shape)
    weights = _check_weights(weights, input_shape)

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for index, (filters, stride) in enumerate(zip(_STEM_CHANNELS, (2, 1))):
        x = _conv(x, filters, 3, stride, 1, f"stem_{index}_conv")
        x = _bn(x, f"stem_{index}_bn", bn_momentum)
        x = _relu(x, f"stem_{index}_act")

    outputs, specs = {}, []
    plan = _plan(output_stride)
    for index, (channels, nominal, start_with_relu, skip) in enumerate(_BLOCKS):
        stride, rate, block_input = plan[index]
        x, tap = _module(x, index, channels, stride, rate, start_with_relu, skip, bn_momentum)
        if nominal > 1:
            key = f"level{len(outputs) + 1}"
            outputs[key] = tap
            specs.append(
                FeatureSpec(key, f"blocks_{index}_stack_act3", channels[1], block_input, (rate,))
            )
    last = len(_BLOCKS) - 1
    outputs["level5"] = x
    specs.append(
        FeatureSpec(
            "level5",
            f"blocks_{last}_stack_conv3_act_pw",
            _BLOCKS[last][0][-1],
            min(32, output_stride),
            (plan[last][1],),
        )
    )

    model = keras.Model(inputs, outputs, name=name)
    if weights is not None:
        # kseg.convert imports the backbones, so not at this module's import.
        from kseg.convert import state_dict as torch_state

        torch_state.load_timm_xception(
            model, torch_state.read_state_dict(weights), source=_source(weights)
        )
    info = BackboneInfo(
        family="xception65",
        variant="xception65",
        output_stride=output_stride,
        features=tuple(specs),
        low_level="level2",
        aux="level4",
        high_level="level5",
        preprocessing="tf",
    )
    return as_backbone(model, info)


def _source(weights):
    if isinstance(weights, collections.abc.Mapping):
        return "timm xception65 state dict"
    return f"timm xception65 checkpoint {weights}"


if Xception65.__doc__:  # None under `python -OO`
    Xception65.__doc__ = Xception65.__doc__.replace("    {table}\n", _TABLE)
