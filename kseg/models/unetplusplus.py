"""UNet++: a U-Net whose skip pathways are dense stacks of nested decoder nodes."""

import keras

from kseg._common import check_float
from kseg.layers import ConvBNAct, Resize2D, ResizeLike
from kseg.models._base import check_num_classes, stride32_features
from kseg.models.segmentation_model import builder
from kseg.models.unet import DECODER_FILTERS, _check_decoder_filters, _skip_features


def node_filters(level_channels, decoder_filters):
    """The width of every node `(i, j)`, `j >= 1`, of the nested decoder (0: no node).

    `level_channels[i]` is the encoder's width at level `i` (stride `2**(i + 1)`,
    0 where it has no feature). A node on the decoder's main path (`i + j ==
    4`) has `decoder_filters[3 - i]`; an inner node (`i + j < 4`) the width of
    its level's encoder feature, as smp's `UnetPlusPlusDecoder` (its
    `skip_channels`), and none where the level has no feature.
    """
    return {
        (i, j): decoder_filters[3 - i] if i + j == 4 else level_channels[i]
        for j in range(1, 5)
        for i in range(5 - j)
    }


@builder
def UNetPlusPlus(
    num_classes,
    input_shape=(None, None, 3),
    backbone="resnet34",
    backbone_weights=None,
    decoder_filters=DECODER_FILTERS,
    batch_norm=True,
    normalization="auto",
    bn_momentum=0.9,
    name="unetplusplus",
):
    """UNet++ (Zhou et al., DLMIA 2018) on a backbone, as smp's `UnetPlusPlus`.

    Zhou, Rahman Siddiquee, Tajbakhsh and Liang, "UNet++: A Nested U-Net
    Architecture for Medical Image Segmentation" (DLMIA 2018), in the layout
    of segmentation_models.pytorch (smp) 0.6 (`decoders/unetplusplus`). The
    encoder's features at strides 2, 4, 8, 16 and 32 are the nodes `X(i, 0)`
    of levels `i` = 0 ... 4 (the backbone's last feature with that true
    stride, `kseg.backbones.feature_info`), and the backbone runs at output
    stride 32. The decoder fills the paper's triangle of nodes column by
    column: node `X(i, j)`, `j >= 1`, upsamples `X(i + 1, j - 1)` (nearest
    neighbour), concatenates after it every earlier node of its level, the
    latest first, `[U(X(i + 1, j - 1)), X(i, j - 1), ..., X(i, 1), X(i, 0)]`
    (smp's order; the paper writes the same set the other way round), and
    applies two 3x3 convolutions + BatchNorm + ReLU. Nodes on the main path
    (`i + j == 4`) have the widths `decoder_filters[:4]` (stride 16 to 2);
    the inner nodes (`i + j < 4`) keep the width of their level's encoder
    feature, as smp does. A last block upsamples `X(0, 4)` to the input size
    and applies two more convolutions of `decoder_filters[4]`, and a 3x3
    convolution to `num_classes` (bias, Glorot-uniform, as smp's
    `SegmentationHead(kernel_size=3)`) gives the logits. Deep supervision is
    not offered (smp has none either).

    Where a backbone has no feature at a stride (ConvNeXt has none at stride
    2) that level has no inner nodes and its main-path node upsamples without
    a skip, as smp's zero-channel features of such encoders do. Unlike smp,
    which needs sizes divisible by 32, any input size works: every upsampling
    resizes (nearest, PyTorch's `mode="nearest"`) to the exact size of its
    level's encoder feature, and the last one to the input size; at sizes
    divisible by 32 that is smp's `scale_factor=2`, and the logits equal
    smp's.

    Choices, with their source (smp 0.6 `decoders/unetplusplus`): decoder
    widths (256, 128, 64, 32, 16) (`decoder_channels`), BatchNorm with
    torch's epsilon 1e-5 and momentum 0.1 (Keras 0.9), no bias before it
    (`decoder_use_norm="batchnorm"`), He-uniform kernels (smp's
    `kaiming_uniform_`), nearest upsampling (`decoder_interpolation`), no
    attention (`decoder_attention_type=None`; scSE is not offered). smp
    builds a centre block for VGG encoders but never calls it; there is none
    here.

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`, values in [0, 255]; any size
            and channel count (pretrained backbone weights are adapted to it,
            see `kseg.backbones.with_input_channels`).
        backbone: a name from `kseg.backbones.registry.DILATED` (default
            `"resnet34"`, smp's default encoder, in torchvision's layout;
            `"resnet18"`, `"resnet50"`, `"resnet50_v1.5"`, ..., `"xception65"`,
            or a keras.applications encoder such as `"mobilenetv2"` or
            `"convnexttiny"`), built here at output stride 32, or a backbone
            model built by `kseg.backbones` at output stride 32.
        backbone_weights: for a backbone name: None, `"imagenet"` or a path
            (see `kseg.backbones`). Defaults to None.
        decoder_filters: the 5 main-path widths, from stride 16 to stride 1.
            Defaults to (256, 128, 64, 32, 16).
        batch_norm: BatchNormalization after every decoder convolution (else
            a bias). Defaults to True.
        normalization: input normalisation: `"auto"` (default: what the
            backbone's weights expect, adapted to the channel count when they
            are pretrained; `"unit"` for other than 3 channels without them),
            `"torch"` or `"caffe"` (ImageNet statistics; `"torch"` is what
            smp's ResNet encoders expect), `"tf"`, `"unit"`,
            `{"mean": ..., "std": ...}` or None. See
            `kseg.layers.ImageNormalization`.
        bn_momentum: the momentum of every BatchNormalization built here: the
            decoder's and, for a backbone given by name, the backbone's
            (Keras' convention: torch's momentum 0.1 is 0.9). Defaults to 0.9.
            A backbone model keeps its own.
        name: model name. Defaults to `"unetplusplus"`.

    Returns:
        A `keras.Model` mapping images to float32 logits at the input size.

    Layer names: `normalize`, the backbone model, then per node
    `decoder_x{i}_{j}_upsample` (where it has a lower neighbour),
    `decoder_x{i}_{j}_concat` (where it has more than one input),
    `decoder_x{i}_{j}_conv1` and `decoder_x{i}_{j}_conv2` (`ConvBNAct`:
    sub-layers `conv` and `bn`); `decoder_final_upsample`,
    `decoder_final_conv{1,2}`; and `logits`. smp's block `x_{d}_{l}` is node
    `(i, j) = (3 - l, l + 1 - d)` here, its `x_0_4` the final block
    (`kseg.convert._smp_decoders.copy_unetplusplus`).

    Example:

    >>> backbone = kseg.backbones.ResNet((1, 1, 1, 1), width=4)
    >>> model = kseg.models.UNetPlusPlus(3, backbone=backbone, decoder_filters=(16, 8, 8, 4, 4))
    >>> model(np.zeros((1, 45, 61, 3), "float32")).shape
    (1, 45, 61, 3)
    """
    num_classes = check_num_classes(num_classes)
    bn_momentum = check_float("bn_momentum", bn_momentum, 0.0, 1.0)
    decoder_filters = _check_decoder_filters(decoder_filters)
    batch_norm = bool(batch_norm)
    inputs, feats, info = stride32_features(
        backbone,
        "UNet++",
        input_shape=input_shape,
        backbone_weights=backbone_weights,
        normalization=normalization,
        bn_momentum=bn_momentum,
    )
    axis = -1 if keras.config.image_data_format() == "channels_last" else 1

    def double_conv(x, filters, prefix):
        for k in (1, 2):
            x = ConvBNAct(
                filters,
                3,
                use_bn=batch_norm,
                bn_momentum=bn_momentum,
                kernel_initializer="he_uniform",
                name=f"{prefix}_conv{k}",
            )(x)
        return x

    # Levels 0 ... 4: the skips of the encoder U-Net at strides 2 ... 16, the deepest feature.
    skip_keys = _skip_features(info)
    keys = (*(skip_keys[stride] for stride in (2, 4, 8, 16)), info.high_level)
    nodes = {(i, 0): None if key is None else feats[key] for i, key in enumerate(keys)}
    widths = node_filters([0 if k is None else info.channels(k) for k in keys], decoder_filters)
    for j in range(1, 5):
        for i in range(5 - j):
            if widths[i, j] == 0:  # an inner node of a level without encoder feature
                nodes[i, j] = None
                continue
            prefix = f"decoder_x{i}_{j}"
            # The earlier nodes of the level, the latest first (smp's order).
            skips = [nodes[i, k] for k in reversed(range(j)) if nodes[i, k] is not None]
            maps = []
            below = nodes[i + 1, j - 1]
            if below is not None:
                if skips:
                    up = ResizeLike(interpolation="nearest", name=f"{prefix}_upsample")
                    maps.append(up([below, nodes[i, 0]]))
                else:  # no feature at this level to take the size from
                    up = Resize2D(scale=2, interpolation="nearest", name=f"{prefix}_upsample")
                    maps.append(up(below))
            maps += skips
            x = maps[0]
            if len(maps) > 1:
                x = keras.layers.Concatenate(axis=axis, name=f"{prefix}_concat")(maps)
            nodes[i, j] = double_conv(x, widths[i, j], prefix)
    x = ResizeLike(interpolation="nearest", name="decoder_final_upsample")([nodes[0, 4], inputs])
    x = double_conv(x, decoder_filters[4], "decoder_final")
    logits = keras.layers.Conv2D(num_classes, 3, padding="same", dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)
