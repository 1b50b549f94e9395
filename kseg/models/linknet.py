"""LinkNet: an encoder-decoder whose decoder blocks add the encoder features, on any backbone."""

import keras

from kseg._common import check_int
from kseg.layers import ConvBNAct, ResizeLike
from kseg.models._base import (
    check_num_classes,
    skip_features,
    stride32_features,
)
from kseg.models.segmentation_model import builder

#: The true stride each decoder block brings the map to, from the stride-32 feature.
STRIDES = (16, 8, 4, 2, 1)


@builder
def Linknet(
    num_classes,
    input_shape=(None, None, 3),
    backbone="resnet34",
    backbone_weights=None,
    final_filters=32,
    batch_norm=True,
    normalization="auto",
    bn_momentum=0.9,
    name="linknet",
):
    """LinkNet (Chaurasia & Culurciello, "LinkNet: Exploiting Encoder Representations for
    Efficient Semantic Segmentation", VCIP 2017), as segmentation_models.pytorch's `Linknet`.

    The decoder starts from the backbone's stride-32 feature and has five
    blocks, to strides 16, 8, 4, 2 and 1 (smp 0.6, `decoders/linknet`). A
    block of `m` input and `n` output channels is the paper's (Figure 3): a
    1x1 convolution to `m // 4`, a 4x4 transposed convolution of stride 2
    (torch's `padding=1`: the size exactly doubles; with bias) to `m // 4`,
    and a 1x1 convolution to `n`, each followed by BatchNorm (epsilon 1e-5)
    and ReLU (the 1x1 convolutions have a bias only without BatchNorm, as
    smp's `Conv2dReLU`). The encoder feature of the block's stride is then
    added (LinkNet's "link"), so `n` is that feature's channel count; the
    last block (stride 1) has no feature to add and `n = final_filters`.
    As in smp, the paper's final block (a 3x3 full convolution, a 3x3
    convolution and a 2x2 full convolution to the classes) is replaced by
    this fifth decoder block and a 1x1 classifier (bias, Glorot-uniform as
    smp's `initialize_head`), and the stride-2 feature is added too (smp
    adds four encoder features, the paper three). Where the backbone has
    no feature at a stride (ConvNeXt has none at stride 2), the block keeps
    its input width and adds nothing, as smp does. Decoder kernels are
    He-uniform (smp's `initialize_decoder`).

    Any input size works; smp requires sizes divisible by 32. Where smp
    runs (sizes divisible by 32, with features of `H / s` rows) the logits
    are exactly smp's. At other sizes the doubled map is brought to the
    exact size of the feature it is added to (the input's for the last
    block) by a nearest-neighbour resize (PyTorch's `mode="nearest"`):
    for a ResNet, whose features have `ceil(H / s)` rows, that drops the
    transposed convolution's last row or column when there is one too many,
    which is a crop (a backbone with `floor(H / s)` rows would need one more
    row, which the resize takes from the top instead).

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
            at output stride 32. Its features at true strides 2, 4, 8 and 16
            (the last of each stride) are added in the decoder.
        backbone_weights: for a backbone name: None, `"imagenet"` or a path
            (see `kseg.backbones`). Defaults to None.
        final_filters: width of the last decoder block (smp's
            `prefinal_channels`). Defaults to 32.
        batch_norm: BatchNorm after every decoder convolution (smp's
            `decoder_use_norm="batchnorm"`). Defaults to True.
        normalization: input normalisation: `"auto"` (default: what the
            backbone's weights expect; `"torch"` for the torchvision-layout
            ResNets), `"unit"`, `"torch"`, `"caffe"`, `"tf"`,
            `{"mean": ..., "std": ...}` or None (see `kseg.models.UNet`).
        bn_momentum: the momentum of every BatchNormalization built here: the
            decoder's and, for a backbone given by name, the backbone's
            (Keras' convention: torch's momentum 0.1 is 0.9). Defaults to 0.9.
        name: model name. Defaults to `"linknet"`.

    Returns:
        A `keras.Model` mapping images to float32 logits at the input size.

    Layer names: `normalize`, the backbone model; per block `i` = 1 ... 5:
    `decoder_block{i}_reduce` (`ConvBNAct`, sub-layers `conv`, `bn`),
    `decoder_block{i}_upsample` (Conv2DTranspose), `decoder_block{i}_upsample_bn`
    (with `batch_norm`), `decoder_block{i}_upsample_relu`,
    `decoder_block{i}_resize`, `decoder_block{i}_expand` (`ConvBNAct`),
    `decoder_block{i}_add` (where a feature is added); then `logits` (the 1x1
    classifier).

    Example:

    >>> backbone = kseg.backbones.ResNet((1, 1, 1, 1), width=4)
    >>> model = kseg.models.Linknet(3, backbone=backbone)
    >>> model(np.zeros((1, 45, 61, 3), "float32")).shape
    (1, 45, 61, 3)
    """
    num_classes = check_num_classes(num_classes)
    final_filters = check_int("final_filters", final_filters)
    batch_norm = bool(batch_norm)
    inputs, feats, info = stride32_features(
        backbone,
        "Linknet",
        input_shape=input_shape,
        backbone_weights=backbone_weights,
        normalization=normalization,
        bn_momentum=bn_momentum,
    )
    skips = skip_features(info, STRIDES[:-1])
    axis = -1 if keras.config.image_data_format() == "channels_last" else 1

    def conv1x1(filters, name):
        return ConvBNAct(
            filters,
            1,
            use_bn=batch_norm,
            bn_momentum=bn_momentum,
            kernel_initializer="he_uniform",
            name=name,
        )

    x = feats[info.high_level]
    channels = info.channels(info.high_level)
    for i, stride in enumerate(STRIDES, start=1):
        prefix = f"decoder_block{i}"
        key = skips.get(stride)
        if stride == 1:
            reference, out_channels = inputs, final_filters
        elif key is None:
            reference, out_channels = None, channels
        else:
            reference, out_channels = feats[key], info.channels(key)
        inner = channels // 4
        if inner < 1:
            raise ValueError(
                "Linknet's decoder blocks reduce their input to a quarter of its channels: "
                f"expected at least 4. Received: {channels} channels before decoder block {i}"
            )
        x = conv1x1(inner, f"{prefix}_reduce")(x)
        x = keras.layers.Conv2DTranspose(
            inner,
            4,
            strides=2,
            padding="same",
            kernel_initializer="he_uniform",
            name=f"{prefix}_upsample",
        )(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(
                axis=axis, momentum=bn_momentum, epsilon=1e-5, name=f"{prefix}_upsample_bn"
            )(x)
        x = keras.layers.ReLU(name=f"{prefix}_upsample_relu")(x)
        if reference is not None:
            x = ResizeLike(interpolation="nearest", name=f"{prefix}_resize")([x, reference])
        x = conv1x1(out_channels, f"{prefix}_expand")(x)
        if key is not None:
            x = keras.layers.Add(name=f"{prefix}_add")([x, feats[key]])
        channels = out_channels
    logits = keras.layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)
