"""DeepLab v1 (LargeFOV), v2 (ASPP-L), v3 and v3+ model builders."""

import keras

from kseg._common import check_bool, check_int
from kseg.backbones._weights import check_weights
from kseg.backbones.registry import VGG
from kseg.backbones.vgg import check_load_fc, load_vgg16_weights
from kseg.layers import ASPP, ConvBNAct, DeepLabV3PlusDecoder
from kseg.models._base import (
    aux_logits,
    backbone_features,
    check_num_classes,
    classifier_initializer,
    classify,
    outputs_dict,
    resnet_features,
    upsample_logits,
)
from kseg.models.segmentation_model import builder


def default_atrous_rates(output_stride):
    """DeepLab v3 rates: (6, 12, 18) at output stride 16, doubled at 8 (Chen et al. 2017, 3.3)."""
    return tuple(r * 16 // output_stride for r in (6, 12, 18))


@builder
def DeepLabV1(
    num_classes,
    input_shape=(None, None, 3),
    backbone="vgg16",
    backbone_weights=None,
    fc_filters=1024,
    fc6_dilation=12,
    dropout=0.5,
    align_corners=True,
    normalization="auto",
    load_fc="auto",
    name="deeplabv1",
):
    """DeepLab v1 "LargeFOV" on VGG-16 (Chen et al., ICLR 2015).

    Layout (SPEC 4.5, the official train.prototxt): the `deeplab_v1` VGG-16
    variant (3x3/2 ceil-mode pools 1-3, 3x3/1 pools 4-5, dilation 2 in block 5;
    output stride 8), then pool5a (3x3/1 average pool, zero padding counted as
    in Caffe), fc6 (3x3, dilation 12, 1024) + ReLU + Dropout 0.5, fc7 (1x1,
    1024) + ReLU + Dropout 0.5, fc8 (1x1, `num_classes`, N(0, 0.01^2)), and a
    bilinear upsampling of the logits to the input size. The paper's dense CRF
    post-processing is not part of the model. With 21 classes the model has
    20,505,429 parameters.

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`, values in [0, 255] (RGB
            for pretrained weights); any size and channel count works.
        backbone: `"vgg16"` or a `kseg.backbones.VGG16(variant="deeplab_v1")`.
        backbone_weights: None, `"imagenet"` or the path of a
            keras.applications VGG16 weights file (see `kseg.backbones`):
            the 13 convolutions, and fc6 / fc7 as `load_fc` says.
        fc_filters: width of fc6 and fc7. Defaults to 1024.
        fc6_dilation: dilation of fc6. Defaults to 12 (LargeFOV).
        dropout: dropout rate after fc6 and fc7. Defaults to 0.5.
        align_corners: of the final upsampling. Defaults to True (as the ports
            of the Caffe model do).
        normalization: input normalisation: `"auto"` (default: what the
            backbone's weights expect, adapted to the channel count when
            they are pretrained, see `kseg.backbones.with_input_channels`;
            `"unit"` for other than 3 channels without them), `"caffe"` or
            `"torch"` (ImageNet statistics: 3 channels, or their grey average
            for 1), `"unit"` (divide by 255),
            `{"mean": ..., "std": ...}` (one value, or one per channel) or
            None. See `kseg.layers.ImageNormalization`.
        load_fc: whether `backbone_weights` also initialise fc6 and fc7 from
            VGG-16's fc1 and fc2 subsampled by decimation (paper, section
            4.1). With fc1's kernel read as 7x7x512x4096 (keras.applications
            flattens pool5 in channels_last order), fc6 takes its taps at
            rows and columns 0, 3, 6 (3x3, dilated by `fc6_dilation` in the
            model) and its output channels 0, 4, ..., 4092 (every 4th, 1024),
            with fc1's bias at those channels; fc7 takes fc2's kernel at input
            and output channels 0, 4, ..., 4092 (1x1x1024x1024) and fc2's bias
            at those outputs. `"auto"` (default): load them when `fc_filters`
            is 1024 and the weights have the classifier top (`"imagenet"` then
            fetches the full 528 MB VGG16 file instead of the 58 MB one
            without top); otherwise keep them random and warn (`UserWarning`).
            True: the same, but raise `ValueError` where "auto" warns (also
            when `backbone_weights` is None). False: only the convolutions.
            Applies to a backbone given by name.
        name: model name.

    Returns:
        A `keras.Model` mapping images `(B, H, W, 3)` to float32 logits
        `(B, H, W, num_classes)`.
    """
    num_classes = check_num_classes(num_classes)
    load_fc = check_load_fc(load_fc, backbone_weights)
    # Weights for a backbone built here are loaded once the model exists, from
    # one file for the convolutions and fc6 / fc7.
    deferred = isinstance(backbone, str) and backbone_weights is not None
    if deferred:
        check_weights(backbone_weights)
    inputs, feats, info = backbone_features(
        backbone,
        names=VGG,
        input_shape=input_shape,
        backbone_weights=None if deferred else backbone_weights,
        family="vgg16",
        required_variant="deeplab_v1",
        variant="deeplab_v1",
        normalization=normalization,
        pretrained=deferred,
    )
    x = feats[info.high_level]
    # pool5a: Caffe average pooling counts the zero padding (count_include_pad).
    x = keras.layers.ZeroPadding2D(1, name="pool5a_pad")(x)
    x = keras.layers.AveragePooling2D(3, strides=1, name="pool5a")(x)
    x = keras.layers.Conv2D(
        fc_filters, 3, padding="same", dilation_rate=fc6_dilation, activation="relu", name="fc6"
    )(x)
    x = keras.layers.Dropout(dropout, name="drop6")(x)
    x = keras.layers.Conv2D(fc_filters, 1, activation="relu", name="fc7")(x)
    x = keras.layers.Dropout(dropout, name="drop7")(x)
    x = keras.layers.Conv2D(
        num_classes, 1, kernel_initializer=classifier_initializer(), name="fc8"
    )(x)
    logits = upsample_logits(x, inputs, align_corners)
    model = keras.Model(inputs, logits, name=name)
    if deferred:
        load_vgg16_weights(
            model.get_layer("vgg16"),
            model.get_layer("fc6"),
            model.get_layer("fc7"),
            backbone_weights,
            load_fc,
            layout="largefov",
        )
    return model


@builder
def DeepLabV2(
    num_classes,
    input_shape=(None, None, 3),
    backbone="resnet101",
    output_stride=8,
    backbone_weights=None,
    atrous_rates=(6, 12, 18, 24),
    align_corners=False,
    normalization="auto",
    bn_momentum=0.9,
    name="deeplabv2",
):
    """DeepLab v2 with ASPP-L on a dilated ResNet (Chen et al., TPAMI 2017).

    Layout (SPEC 4.1): ResNet-101 at output stride 8, four parallel 3x3
    convolutions straight to `num_classes` with dilation 6, 12, 18 and 24
    (with bias, N(0, 0.01^2)), summed (not concatenated), then bilinear
    upsampling of the logits to the input size. No dense CRF.

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`, values in [0, 255] (RGB
            for pretrained weights); any size and channel count works.
        backbone: `"resnet101"` (default), `"resnet50"` (keras.applications'
            layout), the same with `"_v1.5"` or `"_v1c"` for the torch layouts
            (e.g. `"resnet101_v1.5"`, see `kseg.backbones.ResNet`),
            `"resnet152"`, `"xception65"` (DeepLab v3+'s aligned Xception-65,
            `kseg.backbones.Xception65`), a keras.applications encoder name
            (`"mobilenetv2"`, `"efficientnetb0"`, `"convnexttiny"`, ... : see
            `kseg.backbones.Application`; its family's output strides apply and
            `multi_grid` does not), or a backbone built by `kseg.backbones`.
        output_stride: 8 (default), 16 or 32, for a backbone given by name.
        backbone_weights: None, `"imagenet"` or a path (see `kseg.backbones`).
        atrous_rates: ASPP rates. Defaults to ASPP-L, `(6, 12, 18, 24)`.
        align_corners: of the final upsampling. Defaults to False.
        normalization: input normalisation: `"auto"` (default: what the
            backbone's weights expect, adapted to the channel count when
            they are pretrained, see `kseg.backbones.with_input_channels`;
            `"unit"` for other than 3 channels without them), `"caffe"` or
            `"torch"` (ImageNet statistics: 3 channels, or their grey average
            for 1), `"unit"` (divide by 255),
            `{"mean": ..., "std": ...}` (one value, or one per channel) or
            None. See `kseg.layers.ImageNormalization`.
        bn_momentum: the momentum of every BatchNormalization of a backbone
            given by name (the ASPP-L head has none; Keras' convention:
            torch's momentum 0.1 is 0.9). Defaults to 0.9. A backbone model
            keeps its own.
        name: model name.

    Returns:
        A `keras.Model` mapping images to float32 logits at the input size.
    """
    num_classes = check_num_classes(num_classes)
    inputs, feats, info = resnet_features(
        backbone,
        input_shape=input_shape,
        backbone_weights=backbone_weights,
        output_stride=output_stride,
        normalization=normalization,
        bn_momentum=bn_momentum,
    )
    x = feats[info.high_level]
    x = ASPP(filters=num_classes, atrous_rates=atrous_rates, mode="v2", name="aspp")(x)
    return keras.Model(inputs, upsample_logits(x, inputs, align_corners), name=name)


@builder
def DeepLabV3(
    num_classes,
    input_shape=(None, None, 3),
    backbone="resnet50",
    output_stride=16,
    multi_grid=(1, 2, 4),
    backbone_weights=None,
    atrous_rates=None,
    aspp_filters=256,
    dropout=0.1,
    aux_head=False,
    head_filters=None,
    align_corners=False,
    normalization="auto",
    bn_momentum=0.9,
    name="deeplabv3",
):
    """DeepLab v3 (Chen et al., "Rethinking Atrous Convolution", 2017).

    Layout (SPEC 4.2): a dilated ResNet at output stride 16 (or 8) with
    multi-grid (1, 2, 4) in the last stage, ASPP (1x1 branch, three atrous 3x3
    branches at rates (6, 12, 18) at output stride 16 and doubled at 8, and
    image pooling; concatenated and projected by a 1x1 ConvBNReLU to 256,
    dropout), a 1x1 classifier, and bilinear upsampling to the input size.
    MobileNetV2's mobile setting (Sandler et al., CVPR 2018, section 6.3 and
    Table 7, 75.3% mIoU on VOC val): `backbone="mobilenetv2"` at output stride
    16 with `atrous_rates=()`, an ASPP of only its 1x1 and image-pooling
    branches on the 320-channel last block (the 1280-channel 1x1 convolution
    is not used).
    `aux_head=True` adds torchvision's/mmseg's FCN auxiliary head on stage 3;
    the outputs then become `{"main", "aux"}` (mmseg weighs the aux loss 0.4).
    torchvision's `deeplabv3_resnet50/101` is this model on a v1.5 ResNet at
    output stride 8 without multi-grid, with rates (12, 24, 36), dropout 0.5
    and `head_filters=256` (`kseg.convert.from_torchvision` builds it).

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`, values in [0, 255] (RGB
            for pretrained weights); any size and channel count works.
        backbone: `"resnet50"` (default), `"resnet101"` (keras.applications'
            layout), the same with `"_v1.5"` or `"_v1c"` for the torch layouts
            (e.g. `"resnet101_v1.5"`, see `kseg.backbones.ResNet`),
            `"resnet152"`, `"xception65"` (DeepLab v3+'s aligned Xception-65,
            `kseg.backbones.Xception65`), a keras.applications encoder name
            (`"mobilenetv2"`, `"efficientnetb0"`, `"convnexttiny"`, ... : see
            `kseg.backbones.Application`; its family's output strides apply and
            `multi_grid` does not), or a backbone built by `kseg.backbones`.
        output_stride: 16 (default), 8 or 32, for a backbone given by name.
        multi_grid: per-block rate multipliers of the last stage. Defaults to
            `(1, 2, 4)` (the paper's best); None for plain dilation.
        backbone_weights: None, `"imagenet"` or a path (see `kseg.backbones`).
        atrous_rates: ASPP rates. Defaults to `default_atrous_rates(os)`;
            `()` keeps only the 1x1 and image-pooling branches.
        aspp_filters: ASPP width. Defaults to 256.
        dropout: after the ASPP projection. Defaults to 0.1 (TF DeepLab).
        aux_head: add the auxiliary FCN head. Defaults to False.
        head_filters: None (default: the classifier reads the ASPP output, as
            in the paper) or the width of a 3x3 ConvBNReLU between the ASPP
            and the classifier (torchvision's `DeepLabHead` has one of 256).
        align_corners: of the upsamplings. Defaults to False.
        normalization: input normalisation: `"auto"` (default: what the
            backbone's weights expect, adapted to the channel count when
            they are pretrained, see `kseg.backbones.with_input_channels`;
            `"unit"` for other than 3 channels without them), `"caffe"` or
            `"torch"` (ImageNet statistics: 3 channels, or their grey average
            for 1), `"unit"` (divide by 255),
            `{"mean": ..., "std": ...}` (one value, or one per channel) or
            None. See `kseg.layers.ImageNormalization`.
        bn_momentum: the momentum of every BatchNormalization built here: the
            head's and, for a backbone given by name, the backbone's (Keras'
            convention: torch's momentum 0.1 is 0.9). Defaults to 0.9. A
            backbone model keeps its own.
        name: model name.

    Returns:
        A `keras.Model` mapping images to float32 logits at the input size,
        or to `{"main": ..., "aux": ...}` with `aux_head=True`.
    """
    num_classes = check_num_classes(num_classes)
    inputs, feats, info = resnet_features(
        backbone,
        input_shape=input_shape,
        backbone_weights=backbone_weights,
        output_stride=output_stride,
        multi_grid=multi_grid,
        normalization=normalization,
        bn_momentum=bn_momentum,
        roles=("high_level", "aux") if aux_head else ("high_level",),
    )
    rates = default_atrous_rates(info.output_stride) if atrous_rates is None else atrous_rates
    x = ASPP(
        filters=aspp_filters,
        atrous_rates=rates,
        dropout=dropout,
        pool_align_corners=align_corners,
        bn_momentum=bn_momentum,
        name="aspp",
    )(feats[info.high_level])
    if head_filters is not None:
        x = ConvBNAct(
            check_int("head_filters", head_filters, 1),
            3,
            bn_momentum=bn_momentum,
            name="head_conv",
        )(x)
    main = classify(x, inputs, num_classes, align_corners)
    aux = (
        aux_logits(feats[info.aux], inputs, num_classes, align_corners, bn_momentum=bn_momentum)
        if aux_head
        else None
    )
    return keras.Model(inputs, outputs_dict(main, aux), name=name)


@builder
def DeepLabV3Plus(
    num_classes,
    input_shape=(None, None, 3),
    backbone="resnet50",
    output_stride=16,
    multi_grid=None,
    backbone_weights=None,
    atrous_rates=None,
    aspp_filters=256,
    low_level_filters=48,
    decoder_filters=256,
    separable=False,
    dropout=0.1,
    align_corners=False,
    normalization="auto",
    bn_momentum=0.9,
    decoder_separable=None,
    separable_inner_bn_act=True,
    aspp_conv=False,
    decoder_convs=2,
    name="deeplabv3plus",
):
    """DeepLab v3+ encoder-decoder (Chen et al., ECCV 2018).

    Layout (SPEC 4.3): the DeepLab v3 encoder (dilated ResNet at output stride
    16, ASPP to 256), then the decoder: the stride-4 feature (stage 1) projected
    by a 1x1 ConvBNReLU to 48 channels, the ASPP output resized to its size and
    concatenated, two 3x3 ConvBNReLU to 256, a 1x1 classifier, and bilinear
    upsampling to the input size. `separable=True` makes the ASPP and decoder
    3x3 convolutions depthwise-separable (as with Xception in the paper).
    On MobileNetV2 the mobile setting of its paper (Sandler et al. 2018,
    section 6.3) is `backbone="mobilenetv2", atrous_rates=()`: the ASPP keeps
    its 1x1 and image-pooling branches only, and the decoder reads the 24-channel
    stride-4 feature (block 2's output).

    segmentation_models.pytorch's `DeepLabV3Plus` (smp 0.6;
    `kseg.convert.from_smp` builds it) is this model with
    `separable_inner_bn_act=False` (its `SeparableConv2d`: nothing between
    the depthwise and pointwise convolutions), `aspp_conv=True` (its separable
    ConvBNReLU after the ASPP), `decoder_separable=True, decoder_convs=1`,
    `align_corners=True`, `dropout=0.5`, its rates (12, 24, 36) at either
    output stride, `separable` its `decoder_aspp_separable` (True), and
    `aspp_filters` and `decoder_filters` both its `decoder_channels`.

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`, values in [0, 255] (RGB
            for pretrained weights); any size and channel count works.
        backbone: `"resnet50"` (default), `"resnet101"` (keras.applications'
            layout), the same with `"_v1.5"` or `"_v1c"` for the torch layouts
            (e.g. `"resnet101_v1.5"`, see `kseg.backbones.ResNet`),
            `"resnet152"`, `"xception65"` (DeepLab v3+'s aligned Xception-65,
            `kseg.backbones.Xception65`), a keras.applications encoder name
            (`"mobilenetv2"`, `"efficientnetb0"`, `"convnexttiny"`, ... : see
            `kseg.backbones.Application`; its family's output strides apply and
            `multi_grid` does not), or a backbone built by `kseg.backbones`.
        output_stride: 16 (default) or 8, for a backbone given by name.
        multi_grid: last-stage rate multipliers. Defaults to None.
        backbone_weights: None, `"imagenet"` or a path (see `kseg.backbones`).
        atrous_rates: ASPP rates. Defaults to (6, 12, 18) at output stride 16
            (doubled at 8); `()` keeps only the 1x1 and image-pooling branches.
        aspp_filters: ASPP width. Defaults to 256.
        low_level_filters: width of the low-level projection. Defaults to 48.
        decoder_filters: width of the decoder convs. Defaults to 256.
        separable: depthwise-separable ASPP and decoder convs. Defaults to False.
        dropout: after the ASPP projection. Defaults to 0.1.
        align_corners: of the resizes. Defaults to False.
        normalization: input normalisation: `"auto"` (default: what the
            backbone's weights expect, adapted to the channel count when
            they are pretrained, see `kseg.backbones.with_input_channels`;
            `"unit"` for other than 3 channels without them), `"caffe"` or
            `"torch"` (ImageNet statistics: 3 channels, or their grey average
            for 1), `"unit"` (divide by 255),
            `{"mean": ..., "std": ...}` (one value, or one per channel) or
            None. See `kseg.layers.ImageNormalization`.
        bn_momentum: the momentum of every BatchNormalization built here: the
            head's and, for a backbone given by name, the backbone's (Keras'
            convention: torch's momentum 0.1 is 0.9). Defaults to 0.9. A
            backbone model keeps its own.
        decoder_separable: depthwise-separable decoder convs (and `aspp_conv`).
            Defaults to None: as `separable`.
        separable_inner_bn_act: BN and ReLU between the depthwise and
            pointwise parts of every separable conv (TF DeepLab), or nothing
            between them (smp). Defaults to True.
        aspp_conv: a 3x3 ConvBNReLU of `aspp_filters` after the ASPP
            (`aspp_conv`), separable as the decoder convs. Defaults to False.
        decoder_convs: number of 3x3 fusion convs of the decoder. Defaults
            to 2.
        name: model name.

    Returns:
        A `keras.Model` mapping images to float32 logits at the input size.

    Example:

    >>> model = kseg.models.DeepLabV3Plus(num_classes=21)
    >>> model.compile("sgd", kseg.losses.SegmentationCrossEntropy())
    """
    num_classes = check_num_classes(num_classes)
    inputs, feats, info = resnet_features(
        backbone,
        input_shape=input_shape,
        backbone_weights=backbone_weights,
        output_stride=output_stride,
        multi_grid=multi_grid,
        normalization=normalization,
        bn_momentum=bn_momentum,
        roles=("high_level", "low_level"),
    )
    rates = default_atrous_rates(info.output_stride) if atrous_rates is None else atrous_rates
    separable = check_bool("separable", separable)
    decoder_separable = (
        separable
        if decoder_separable is None
        else check_bool("decoder_separable", decoder_separable)
    )
    inner = check_bool("separable_inner_bn_act", separable_inner_bn_act)
    x = ASPP(
        filters=aspp_filters,
        atrous_rates=rates,
        dropout=dropout,
        separable=separable,
        pool_align_corners=align_corners,
        bn_momentum=bn_momentum,
        separable_inner_bn_act=inner,
        name="aspp",
    )(feats[info.high_level])
    if check_bool("aspp_conv", aspp_conv):
        x = ConvBNAct(
            aspp_filters,
            3,
            separable=decoder_separable,
            separable_inner_bn_act=inner,
            bn_momentum=bn_momentum,
            name="aspp_conv",
        )(x)
    x = DeepLabV3PlusDecoder(
        filters=decoder_filters,
        low_level_filters=low_level_filters,
        separable=decoder_separable,
        align_corners=align_corners,
        num_convs=check_int("decoder_convs", decoder_convs),
        bn_momentum=bn_momentum,
        separable_inner_bn_act=inner,
        name="decoder",
    )([x, feats[info.low_level]])
    return keras.Model(inputs, classify(x, inputs, num_classes, align_corners), name=name)
