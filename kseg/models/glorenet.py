"""GloRe segmentation network: a dilated ResNet with a global reasoning head."""

import keras

from kseg.layers import ConvBNAct, GloReUnit
from kseg.models._base import (
    aux_logits,
    check_num_classes,
    classify,
    outputs_dict,
    resnet_features,
)
from kseg.models.segmentation_model import builder


@builder
def GloReNet(
    num_classes,
    input_shape=(None, None, 3),
    backbone="resnet50",
    output_stride=8,
    backbone_weights=None,
    reduce_filters=512,
    num_state=128,
    num_node=64,
    dropout=0.1,
    aux_head=False,
    align_corners=False,
    normalization="auto",
    bn_momentum=0.9,
    name="glorenet",
):
    """GloRe network for segmentation (Chen et al., "Graph-Based Global Reasoning Networks", CVPR 2019).

    Layout (SPEC 2.3, PaddleSeg's GloRe head, the same unit sizes as the
    official `GloRe_Unit_2D(512, num_mid=64)`): a dilated ResNet at output
    stride 8; stage 4 reduced by a 1x1 ConvBNReLU to 512; one GloRe unit (state
    width 128, 64 nodes, official computation and initialisation, so the unit
    starts as the identity); dropout 0.1; a 1x1 classifier; bilinear upsampling
    to the input size. `aux_head=True` adds the FCN head on stage 3 (PaddleSeg
    loss coefficients `[1, 0.4]`).

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
        output_stride: 8 (default), 16 or 32, for a backbone given by name.
        backbone_weights: None, `"imagenet"` or a path (see `kseg.backbones`).
        reduce_filters: width of the reduction conv (the unit's C). Defaults to 512.
        num_state: GloRe state width C'. Defaults to 128.
        num_node: GloRe node count N. Defaults to 64.
        dropout: before the classifier. Defaults to 0.1.
        aux_head: add the auxiliary head. Defaults to False.
        align_corners: of the final resize. Defaults to False.
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
        A `keras.Model` mapping images to float32 logits at the input size
        (or `{"main", "aux"}`).
    """
    num_classes = check_num_classes(num_classes)
    inputs, feats, info = resnet_features(
        backbone,
        input_shape=input_shape,
        backbone_weights=backbone_weights,
        output_stride=output_stride,
        normalization=normalization,
        bn_momentum=bn_momentum,
        roles=("high_level", "aux") if aux_head else ("high_level",),
    )
    x = ConvBNAct(reduce_filters, 1, bn_momentum=bn_momentum, name="reduce")(
        feats[info.high_level]
    )
    x = GloReUnit(
        num_state=num_state, num_node=num_node, bn_momentum=bn_momentum, name="glore"
    )(x)
    main = classify(x, inputs, num_classes, align_corners, dropout)
    aux = (
        aux_logits(feats[info.aux], inputs, num_classes, align_corners, bn_momentum=bn_momentum)
        if aux_head
        else None
    )
    return keras.Model(inputs, outputs_dict(main, aux), name=name)
