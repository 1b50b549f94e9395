"""VGG-16 backbones: keras.applications, FCN, DeepLab v1 and BatchNorm (SegNet) variants."""

import warnings

import keras
import numpy as np

from kseg._backend import check_conv_data_format
from kseg._common import check_choice, check_float, standardize_data_format
from kseg.backbones._info import BackboneInfo, FeatureSpec, as_backbone
from kseg.backbones._weights import (
    _reference,
    check_weights,
    has_top,
    load_reference_weights,
)

_VARIANTS = ("classic", "fcn", "deeplab_v1", "bn")
_WIDTHS = (64, 128, 256, 512, 512)
_DEPTHS = (2, 2, 3, 3, 3)

# Per variant: pool (size, stride, (pad_before, pad_after)) of each block, the
# conv dilation per block and the true stride of every pool output.
_POOLS = {
    "classic": [(2, 2, (0, 0))] * 5,
    # Caffe / torch ceil mode for 2x2/2: one zero row/column at the bottom/right
    # is used by a window only when the size is odd, so out = ceil(h / 2).
    "fcn": [(2, 2, (0, 1))] * 5,
    # Ceil-mode 3x3/2 pad 1 (SPEC 4.5): torch gives out = floor(h / 2) + 1 and
    # the last window starts inside the input, so padding (1, 2) and a valid
    # pool reproduce it exactly; pool4 and pool5 are 3x3/1 pad 1.
    "deeplab_v1": [(3, 2, (1, 2))] * 3 + [(3, 1, (1, 1))] * 2,
    "bn": [(2, 2, (0, 0))] * 5,
}
_DILATIONS = {
    "classic": (1, 1, 1, 1, 1),
    "fcn": (1, 1, 1, 1, 1),
    "deeplab_v1": (1, 1, 1, 1, 2),
    "bn": (1, 1, 1, 1, 1),
}


def VGG16(
    input_shape=None,
    variant="classic",
    weights=None,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    data_format=None,
    name="vgg16",
):
    """Builds the 13 convolutions of VGG-16 returning a dict of block features.

    Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale
    Image Recognition", ICLR 2015. Layer names are those of
    `keras.applications.VGG16` (`block1_conv1` ... `block5_conv3`,
    `block1_pool` ... `block5_pool`), so its ImageNet weights load into every
    variant (no variant changes a kernel shape). Padding layers are named
    `block1_conv1_pad` and `block{i}_pool_pad`. The fully connected layers
    (FCN's and DeepLab's fc6/fc7) belong to the models, not to the backbone.

    Variants:

    - `"classic"`: keras.applications.VGG16: 3x3 convs with "same" padding
      and ReLU, 2x2/2 max-pools (floor).
    - `"fcn"`: FCN (Long et al., CVPR 2015; SPEC 4.6): `block1_conv1` has
      zero padding 100 (instead of 1) and the 2x2/2 pools round up (Caffe /
      torch `ceil_mode=True`).
    - `"deeplab_v1"`: DeepLab v1 LargeFOV (Chen et al., ICLR 2015; SPEC 4.5):
      pool1-3 are 3x3/2 with padding 1 in ceil mode, pool4 and pool5 are
      3x3/1 with padding 1, and block5's convs have dilation 2. The 3x3/1
      average pool (pool5a) before fc6 belongs to the model.
    - `"bn"`: VGG16-BN, the SegNet encoder (Badrinarayanan et al., TPAMI
      2017; SPEC 4.8): every conv (with bias, as torchvision's `vgg16_bn`) is
      followed by BatchNormalization (`block{i}_conv{j}_bn`) and ReLU
      (`block{i}_conv{j}_relu`); pools are 2x2/2 floor. SegNet needs the
      argmax indices of each pool: the model applies
      `kseg.layers.MaxPoolingWithArgmax2D` to the pre-pool features
      `block1..block5` (same windows, so the same values as `pool1..pool5`).

    All padding is explicit zero padding followed by a `valid` op; for the
    max-pools this equals Caffe's / torch's -inf padding because their inputs
    are ReLU outputs (>= 0) and every window holds at least one input cell.

    Outputs (a dict). `blockN` is block N's last conv output (before its
    pool), `poolN` its pool output. Channels: 64, 128, 256, 512, 512 for
    blocks 1-5. True strides and sizes (`H` the input height, likewise for the
    width; `h` the size entering the pool):

    | key     | classic / bn        | fcn                      | deeplab_v1          |
    |---------|---------------------|--------------------------|---------------------|
    | block1  | 1, `H`              | 1, `H + 198`             | 1, `H`              |
    | pool1   | 2, `floor(h / 2)`   | 2, `ceil(h / 2)`         | 2, `floor(h / 2) + 1` |
    | pool2   | 4, `floor(h / 2)`   | 4, `ceil(h / 2)`         | 4, `floor(h / 2) + 1` |
    | pool3   | 8, `floor(h / 2)`   | 8, `ceil(h / 2)`         | 8, `floor(h / 2) + 1` |
    | pool4   | 16, `floor(h / 2)`  | 16, `ceil(h / 2)`        | 8, `h`              |
    | pool5   | 32, `floor(h / 2)`  | 32, `ceil(h / 2)`        | 8, `h`              |

    `block{N+1}` has the size and stride of `poolN`. Nested floors and ceils
    collapse: classic `poolN` is `floor(H / 2**N)`, fcn `poolN` is
    `ceil((H + 198) / 2**N)`; for DeepLab v1 an input of `321` gives 161, 81,
    41, 41, 41. Roles (`kseg.backbones.feature_info`): `high_level="pool5"`,
    no `low_level` or `aux`.

    Args:
        input_shape: input shape without batch. Defaults to `(None, None, 3)`
            (`(3, None, None)` for channels_first); any size works.
        variant: one of `"classic"`, `"fcn"`, `"deeplab_v1"`, `"bn"`.
            Defaults to `"classic"`.
        weights: None (random initialisation), `"imagenet"`
            (keras.applications' VGG16 ImageNet weights; Keras downloads them
            on first use), or the path of a keras.applications VGG16 weights
            file (with or without the classifier top). For `"bn"` only the
            convolutions are copied and the BatchNormalization layers keep
            their initial values (SegNet initialises its encoder from VGG-16
            this way). The ImageNet weights expect "caffe" preprocessing.
        bn_momentum: BatchNormalization momentum of the `"bn"` variant.
            Defaults to 0.9 (torch 0.1).
        bn_epsilon: BatchNormalization epsilon of the `"bn"` variant.
            Defaults to 1e-5 (torch).
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        name: model name.

    Returns:
        A `keras.Model` from the image to the dict above; its attribute
        `feature_info` (also `kseg.backbones.feature_info(model)`) is a
        `BackboneInfo`.

    Example:

    >>> backbone = kseg.backbones.VGG16(variant="deeplab_v1")
    >>> features = backbone(np.zeros((1, 321, 321, 3)))
    >>> tuple(features["pool5"].shape)
    (1, 41, 41, 512)
    """
    check_choice("variant", variant, _VARIANTS)
    weights = check_weights(weights)
    data_format = check_conv_data_format(standardize_data_format(data_format))
    bn_momentum = check_float("bn_momentum", bn_momentum, 0.0, 1.0)
    bn_epsilon = check_float("bn_epsilon", bn_epsilon, 0.0, None, inclusive=False)
    axis = -1 if data_format == "channels_last" else 1
    if input_shape is None:
        input_shape = (None, None, 3) if data_format == "channels_last" else (3, None, None)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    outputs, specs = {}, []
    stride = 1
    for index, (filters, depth) in enumerate(zip(_WIDTHS, _DEPTHS)):
        block = index + 1
        dilation = _DILATIONS[variant][index]
        for conv in range(1, depth + 1):
            conv_name = f"block{block}_conv{conv}"
            padding = "same"
            if variant == "fcn" and block == 1 and conv == 1:
                # FCN's conv1_1 pad 100 (Long et al.; voc-fcn8s prototxt).
                x = keras.layers.ZeroPadding2D(
                    100, data_format=data_format, name=f"{conv_name}_pad"
                )(x)
                padding = "valid"
            if variant == "bn":
                x = keras.layers.Conv2D(
                    filters, 3, padding=padding, data_format=data_format, name=conv_name
                )(x)
                x = keras.layers.BatchNormalization(
                    axis=axis, momentum=bn_momentum, epsilon=bn_epsilon, name=f"{conv_name}_bn"
                )(x)
                x = keras.layers.Activation("relu", name=f"{conv_name}_relu")(x)
            else:
                # Stride 1: "same" pads `dilation` on each side, like Caffe's pad.
                x = keras.layers.Conv2D(
                    filters,
                    3,
                    padding=padding,
                    dilation_rate=dilation,
                    activation="relu",
                    data_format=data_format,
                    name=conv_name,
                )(x)
        outputs[f"block{block}"] = x
        specs.append(
            FeatureSpec(
                f"block{block}", f"block{block}_conv{depth}", filters, stride, (dilation,) * depth
            )
        )
        size, pool_stride, (before, after) = _POOLS[variant][index]
        if before or after:
            x = keras.layers.ZeroPadding2D(
                ((before, after), (before, after)),
                data_format=data_format,
                name=f"block{block}_pool_pad",
            )(x)
        x = keras.layers.MaxPooling2D(
            size, strides=pool_stride, data_format=data_format, name=f"block{block}_pool"
        )(x)
        stride *= pool_stride
        outputs[f"pool{block}"] = x
        specs.append(FeatureSpec(f"pool{block}", f"block{block}_pool", filters, stride))

    model = keras.Model(inputs, outputs, name=name)
    if weights is not None:
        skip = (keras.layers.BatchNormalization,) if variant == "bn" else ()
        load_reference_weights(model, keras.applications.VGG16, weights, "vgg16", skip=skip)
    info = BackboneInfo(
        family="vgg16",
        variant=variant,
        output_stride=stride,
        features=tuple(specs),
        low_level=None,
        aux=None,
        high_level="pool5",
    )
    return as_backbone(model, info)


# fc6 / fc7 layouts that VGG-16's fc1 / fc2 convert to (`load_vgg16_weights`).
_FC_SHAPES = {
    "fcn": ((7, 7, 512, 4096), (1, 1, 4096, 4096)),
    "largefov": ((3, 3, 512, 1024), (1, 1, 1024, 1024)),
}


def check_load_fc(load_fc, backbone_weights):
    """Validates the `load_fc` argument of the VGG-16 models against `backbone_weights`."""
    if not (load_fc is True or load_fc is False or load_fc == "auto"):
        raise ValueError(
            f"Expected `load_fc` to be 'auto', True or False. Received: load_fc={load_fc!r}"
        )
    if load_fc is True and backbone_weights is None:
        raise ValueError(
            "`load_fc=True` loads fc6 / fc7 from the VGG-16 weights given as "
            "`backbone_weights`, which is None. Received: load_fc=True"
        )
    return load_fc


def convolutionalize_fc(fc1, fc2, layout):
    """fc6 / fc7 `[kernel, bias]` lists from VGG-16's fc1 / fc2 `[kernel, bias]` (NumPy).

    keras.applications' VGG16 flattens pool5 in channels_last order (whatever
    the data format), so fc1's 25088 inputs are a `(7, 7, 512)` window read
    row-major and `fc1_kernel.reshape(7, 7, 512, 4096)` is the equivalent
    7x7 convolution kernel.

    - `"fcn"` (Long et al., FCN): fc6 is that 7x7x512x4096 kernel with fc1's
      bias; fc7 is fc2's kernel as 1x1x4096x4096 with fc2's bias.
    - `"largefov"` (Chen et al., DeepLab v1, section 4.1: "we subsample (by
      decimation) the first FC layer"): fc6 keeps the taps at rows and columns
      0, 3, 6 of the 7x7 kernel (a 3x3 kernel, dilated in the model) and the
      output channels 0, 4, ..., 4092 (every 4th: 1024), with the bias of
      those channels; fc7 keeps fc2's kernel at inputs and outputs 0, 4, ...,
      4092 (1x1x1024x1024) and the bias of those outputs.
    """
    k1, b1 = (np.asarray(v) for v in fc1)
    k2, b2 = (np.asarray(v) for v in fc2)
    k6 = k1.reshape(7, 7, 512, 4096)
    if layout == "fcn":
        return [k6, b1], [k2.reshape(1, 1, 4096, 4096), b2]
    if layout == "largefov":
        k6 = k6[0::3, 0::3, :, 0::4]
        return [k6, b1[0::4]], [k2[0::4, 0::4].reshape(1, 1, 1024, 1024), b2[0::4]]
    raise ValueError(f"Expected `layout` to be 'fcn' or 'largefov'. Received: layout={layout!r}")


def load_vgg16_weights(backbone, fc6, fc7, weights, load_fc, layout):
    """Loads VGG-16 weights into a backbone and, convolutionalised, into fc6 / fc7.

    Args:
        backbone: a `VGG16` backbone (gets the 13 convolutions).
        fc6, fc7: the model's fc6 / fc7 `Conv2D` layers.
        weights: "imagenet" or the path of a keras.applications VGG16 file.
        load_fc: "auto", True or False (see `kseg.models.FCN8s`).
        layout: "fcn" or "largefov" (see `convolutionalize_fc`).

    With "auto", fc6 / fc7 are loaded when their shapes are the paper's and the
    weights have the classifier top ("imagenet" then fetches the full VGG16
    file); otherwise they keep their initial values and a `UserWarning` says
    why. With True, those cases raise `ValueError` instead. With False only
    the convolutions are loaded.
    """
    weights = check_weights(weights)
    load_fc = check_load_fc(load_fc, weights)
    shapes = _FC_SHAPES[layout]
    got = (tuple(fc6.kernel.shape), tuple(fc7.kernel.shape))
    if load_fc is not False and got != shapes:
        message = (
            f"fc6 / fc7 can take VGG-16's fc1 / fc2 only with kernels of shapes {shapes} "
            f"(fc_filters={shapes[0][-1]}); these have {got}"
        )
        if load_fc is True:
            raise ValueError(f"{message}. Received: load_fc=True")
        warnings.warn(f"{message}: fc6 and fc7 keep their random initialisation.", stacklevel=3)
        load_fc = False
    reference = _reference(
        keras.applications.VGG16, weights, "vgg16", include_top=load_fc is not False
    )
    load_reference_weights(
        backbone, keras.applications.VGG16, weights, "vgg16", reference=reference
    )
    if load_fc is False:
        return
    if not has_top(reference):
        message = (
            f"The VGG-16 weights file {weights!r} has no classifier top (fc1, fc2): the "
            "13 convolutions were loaded"
        )
        if load_fc is True:
            raise ValueError(
                f"{message}, but fc6 and fc7 cannot be. Pass a file saved from "
                "`keras.applications.VGG16(include_top=True)` (or 'imagenet'), or "
                "load_fc='auto' / False. Received: load_fc=True"
            )
        warnings.warn(
            f"{message}; fc6 and fc7 keep their random initialisation. Pass a file with "
            "the top (include_top=True) to start them from VGG-16's fc1 / fc2.",
            stacklevel=3,
        )
        return
    new6, new7 = convolutionalize_fc(
        reference.get_layer("fc1").get_weights(), reference.get_layer("fc2").get_weights(), layout
    )
    fc6.set_weights(new6)
    fc7.set_weights(new7)
