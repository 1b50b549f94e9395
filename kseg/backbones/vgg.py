"""VGG-16 backbones: keras.applications, FCN, DeepLab v1 and BatchNorm (SegNet) variants."""

import keras

from kseg._common import check_choice, check_float, standardize_data_format
from kseg.backbones._info import BackboneInfo, FeatureSpec
from kseg.backbones._weights import check_weights, load_reference_weights
from kseg.ops._backend import check_conv_data_format

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
    model.feature_info = BackboneInfo(
        family="vgg16",
        variant=variant,
        output_stride=stride,
        features=tuple(specs),
        low_level=None,
        aux=None,
        high_level="pool5",
    )
    return model
