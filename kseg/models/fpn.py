"""FPN: the semantic-segmentation branch of Panoptic Feature Pyramid Networks, on any backbone."""

import keras

from kseg._common import check_choice, check_float, check_int
from kseg.layers import ResizeLike
from kseg.models._base import (
    check_num_classes,
    skip_features,
    stride32_features,
    upsample_logits,
)
from kseg.models.segmentation_model import builder

#: Pyramid levels and the true stride of the backbone feature each starts from (P5 ... P2).
LEVELS = {5: 32, 4: 16, 3: 8, 2: 4}

#: Groups of the GroupNorm in the segmentation blocks (Kirillov et al. 2019, section 3;
#: smp's `Conv3x3GNReLU`: `nn.GroupNorm(32, channels)`).
GROUPS = 32


@builder
def FPN(
    num_classes,
    input_shape=(None, None, 3),
    backbone="resnet34",
    backbone_weights=None,
    pyramid_filters=256,
    segmentation_filters=128,
    merge_policy="add",
    dropout=0.2,
    normalization="auto",
    bn_momentum=0.9,
    name="fpn",
):
    """FPN semantic segmentation (Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019).

    The semantic branch of Panoptic FPN (section 3, Figure 3) on the feature
    pyramid of Lin et al. (CVPR 2017), in the layout of
    segmentation_models.pytorch's `FPN` (smp 0.6, `decoders/fpn`):

    - Top-down pyramid: P5 is a 1x1 convolution (with bias) of the stride-32
      feature to `pyramid_filters`; P4, P3 and P2 are the level above
      upsampled by 2 with nearest neighbour, plus a 1x1 convolution (with
      bias) of the backbone's stride-16, 8 and 4 feature. There is no 3x3
      smoothing convolution after the sums (smp has none).
    - Segmentation blocks: from each level `Pk` a chain of `max(k - 2, 1)`
      blocks, each a 3x3 convolution to `segmentation_filters` (no bias),
      GroupNorm with 32 groups (epsilon 1e-5) and ReLU, the first `k - 2` of
      them followed by a bilinear x2 upsampling with `align_corners=True`
      (smp's `F.interpolate(..., align_corners=True)`), so that every chain
      ends at stride 4.
    - The four maps are merged by a sum (`merge_policy="add"`, the paper's)
      or concatenated in the order P5, P4, P3, P2 (`"cat"`: 4 x
      `segmentation_filters` channels), then channel dropout (smp's
      `Dropout2d`, `keras.layers.SpatialDropout2D`) of rate 0.2, a 1x1
      classifier (bias, Glorot-uniform as smp's `initialize_head`) and a
      bilinear x4 upsampling with `align_corners=True` to the input size,
      in float32.

    Decoder kernels are He-uniform with zero biases (smp's
    `initialize_decoder`); GroupNorm starts at gamma 1, beta 0.

    Any input size works; smp requires sizes divisible by 32. Where smp runs
    (sizes divisible by 32, with features of `H / s` rows) the logits are
    exactly smp's. At other sizes each upsampling goes to the exact size of
    the map it meets instead of doubling: the nearest top-down upsampling to
    the size of the lateral feature (for a ResNet, whose features have
    `ceil(H / s)` rows, that is "double and drop the last row when there is
    one too many"), the bilinear ones (`align_corners=True`, corners on
    corners) to the size of the next pyramid level and the last one to the
    input size, so the sampling grid there is stretched by `(n_out - 1) /
    (n_in - 1)` rather than `(2n - 1) / (n - 1)`.

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`, values in [0, 255] (RGB for
            pretrained weights); any size works.
        backbone: a name from `kseg.backbones.registry.DILATED`: smp's default
            `"resnet34"` (torchvision's layout, as smp's encoder), `"resnet18"`,
            `"resnet50_v1.5"`, `"resnet101_v1.5"` (torchvision's layouts),
            `"resnet50"` / `"resnet101"` (keras.applications'), `"xception65"`,
            or a keras.applications encoder (`"mobilenetv2"`,
            `"efficientnetb0"`, ...: see `kseg.backbones.Application`), built
            here at output stride 32; or a backbone built by `kseg.backbones`
            at output stride 32. Its features at true strides 4, 8, 16 and 32
            (the last of each stride) are read.
        backbone_weights: for a backbone name: None, `"imagenet"` or a path
            (see `kseg.backbones`). Defaults to None.
        pyramid_filters: width of the pyramid P2 ... P5 (smp's
            `decoder_pyramid_channels`). Defaults to 256.
        segmentation_filters: width of the segmentation blocks (smp's
            `decoder_segmentation_channels`), a multiple of 32 (GroupNorm's
            groups). Defaults to 128.
        merge_policy: `"add"` (default) or `"cat"` (smp's
            `decoder_merge_policy`).
        dropout: channel dropout rate before the classifier, in [0, 1) (smp's
            `decoder_dropout`). Defaults to 0.2.
        normalization: input normalisation: `"auto"` (default: what the
            backbone's weights expect; `"torch"` for the torchvision-layout
            ResNets), `"unit"`, `"torch"`, `"caffe"`, `"tf"`,
            `{"mean": ..., "std": ...}` or None (see `kseg.models.UNet`).
        bn_momentum: the momentum of the BatchNormalization layers of a
            backbone given by name (Keras' convention: torch's 0.1 is 0.9;
            the decoder has GroupNorm only). Defaults to 0.9.
        name: model name. Defaults to `"fpn"`.

    Returns:
        A `keras.Model` mapping images to float32 logits at the input size.

    Layer names: `normalize`, the backbone model, `lateral{5,4,3,2}` (1x1
    convolutions), `topdown{4,3,2}_upsample` and `topdown{4,3,2}_add`;
    per level `k` and block `j`: `segmentation{k}_conv{j}`,
    `segmentation{k}_norm{j}` (GroupNormalization), `segmentation{k}_relu{j}`,
    `segmentation{k}_upsample{j}`; then `merge`, `dropout`, `classifier` and
    `logits` (the resize to the input size).

    Example:

    >>> backbone = kseg.backbones.ResNet((1, 1, 1, 1), width=4)
    >>> model = kseg.models.FPN(3, backbone=backbone, pyramid_filters=16,
    ...                         segmentation_filters=32)
    >>> model(np.zeros((1, 45, 61, 3), "float32")).shape
    (1, 45, 61, 3)
    """
    num_classes = check_num_classes(num_classes)
    pyramid_filters = check_int("pyramid_filters", pyramid_filters)
    segmentation_filters = check_int("segmentation_filters", segmentation_filters)
    if segmentation_filters % GROUPS:
        raise ValueError(
            f"Expected `segmentation_filters` to be a multiple of {GROUPS}, the GroupNorm "
            f"groups of the segmentation blocks. Received: "
            f"segmentation_filters={segmentation_filters}"
        )
    check_choice("merge_policy", merge_policy, ("add", "cat"))
    dropout = check_float("dropout", dropout, 0.0, 1.0)
    if dropout == 1.0:
        raise ValueError(f"Expected `dropout` in [0, 1). Received: dropout={dropout}")
    inputs, feats, info = stride32_features(
        backbone,
        "FPN",
        input_shape=input_shape,
        backbone_weights=backbone_weights,
        normalization=normalization,
        bn_momentum=bn_momentum,
    )
    keys = {**skip_features(info, (4, 8, 16)), 32: info.high_level}
    missing = sorted(stride for stride, key in keys.items() if key is None)
    if missing:
        raise ValueError(
            "FPN reads the backbone's features at true strides 4, 8, 16 and 32. Received: a "
            f"{info.family} backbone ({info.variant!r}) without a feature at stride(s) "
            f"{missing} (its features: {info.keys()})"
        )
    axis = -1 if keras.config.image_data_format() == "channels_last" else 1

    def conv1x1(filters, name):
        return keras.layers.Conv2D(filters, 1, kernel_initializer="he_uniform", name=name)

    pyramid = {5: conv1x1(pyramid_filters, "lateral5")(feats[keys[32]])}
    for level in (4, 3, 2):
        skip = feats[keys[LEVELS[level]]]
        up = ResizeLike(interpolation="nearest", name=f"topdown{level}_upsample")(
            [pyramid[level + 1], skip]
        )
        lateral = conv1x1(pyramid_filters, f"lateral{level}")(skip)
        pyramid[level] = keras.layers.Add(name=f"topdown{level}_add")([up, lateral])

    maps = []
    for level in (5, 4, 3, 2):
        x = pyramid[level]
        upsamples = level - 2
        for j in range(1, max(upsamples, 1) + 1):
            prefix = f"segmentation{level}"
            x = keras.layers.Conv2D(
                segmentation_filters,
                3,
                padding="same",
                use_bias=False,
                kernel_initializer="he_uniform",
                name=f"{prefix}_conv{j}",
            )(x)
            x = keras.layers.GroupNormalization(
                GROUPS, axis=axis, epsilon=1e-5, name=f"{prefix}_norm{j}"
            )(x)
            x = keras.layers.ReLU(name=f"{prefix}_relu{j}")(x)
            if j <= upsamples:
                x = ResizeLike(align_corners=True, name=f"{prefix}_upsample{j}")(
                    [x, pyramid[level - j]]
                )
        maps.append(x)
    if merge_policy == "add":
        x = keras.layers.Add(name="merge")(maps)
    else:
        x = keras.layers.Concatenate(axis=axis, name="merge")(maps)
    if dropout:
        x = keras.layers.SpatialDropout2D(dropout, name="dropout")(x)
    x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
    logits = upsample_logits(x, inputs, align_corners=True)
    return keras.Model(inputs, logits, name=name)
