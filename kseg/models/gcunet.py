"""GCU network: a dilated ResNet with graph convolutional units ("Beyond Grids")."""

import keras

from kseg.layers import ConvBNAct, GraphConvolutionalUnit
from kseg.models._base import (
    aux_logits,
    check_num_classes,
    classify,
    outputs_dict,
    resnet_features,
)
from kseg.models.segmentation_model import builder


@builder
def GCUNet(
    num_classes,
    input_shape=(None, None, 3),
    backbone="resnet50",
    output_stride=8,
    backbone_weights=None,
    num_vertices=(2, 4, 8, 32),
    unit_filters=512,
    fusion_filters=512,
    dropout=0.1,
    aux_head=False,
    align_corners=False,
    normalization="auto",
    bn_momentum=0.9,
    name="gcunet",
):
    """GCU segmentation network (Li & Gupta, "Beyond Grids", NeurIPS 2018).

    Layout (SPEC 1.6; the paper builds on PSPNet and replaces its pyramid
    pooling): a dilated ResNet at output stride 8; one graph convolutional unit
    per entry of `num_vertices` (2, 4, 8 and 32 vertices), each on stage 4 and
    each producing `unit_filters` channels; `[X, GCU_2(X), ..., GCU_32(X)]`
    concatenated; a 3x3 ConvBNReLU to 512; dropout 0.1; a 1x1 classifier;
    bilinear upsampling to the input size. `unit_filters=512` (= 2048 / 4)
    makes the fusion conv see 4096 channels as in PSPNet; the paper does not
    state this width (SPEC 8). `aux_head=True` adds the PSPNet-style auxiliary
    head on stage 3 (loss weight 0.4 in PSPNet's recipe).

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
        num_vertices: vertex count of each unit. Defaults to (2, 4, 8, 32).
        unit_filters: output channels of each unit. Defaults to 512.
        fusion_filters: width of the fusion conv. Defaults to 512.
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
    if not isinstance(num_vertices, (list, tuple)) or not num_vertices:
        raise ValueError(
            "Expected `num_vertices` to be a non-empty list of vertex counts. "
            f"Received: num_vertices={num_vertices!r}"
        )
    inputs, feats, info = resnet_features(
        backbone,
        input_shape=input_shape,
        backbone_weights=backbone_weights,
        output_stride=output_stride,
        normalization=normalization,
        bn_momentum=bn_momentum,
        roles=("high_level", "aux") if aux_head else ("high_level",),
    )
    high = feats[info.high_level]
    units = [
        GraphConvolutionalUnit(num_vertices=v, filters=unit_filters, name=f"gcu_{v}")(high)
        for v in num_vertices
    ]
    x = keras.layers.Concatenate(name="gcu_concat")([high, *units])
    x = ConvBNAct(fusion_filters, 3, bn_momentum=bn_momentum, name="fusion")(x)
    main = classify(x, inputs, num_classes, align_corners, dropout)
    aux = (
        aux_logits(feats[info.aux], inputs, num_classes, align_corners, bn_momentum=bn_momentum)
        if aux_head
        else None
    )
    return keras.Model(inputs, outputs_dict(main, aux), name=name)
