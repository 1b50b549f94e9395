"""UPerNet: a pyramid pooling module and a feature pyramid fused at stride 4."""

import keras

from kseg._common import check_float, check_int
from kseg.layers import ConvBNAct, PyramidPoolingModule, ResizeLike
from kseg.models._base import (
    aux_logits,
    check_num_classes,
    classify,
    outputs_dict,
    resnet_features,
)
from kseg.models.segmentation_model import builder
from kseg.models.unet import _skip_features

#: The strides of the four pyramid levels, from the finest.
LEVEL_STRIDES = (4, 8, 16, 32)


def pyramid_features(info):
    """The backbone's feature keys at strides 4, 8, 16 and 32 (levels 1 ... 4).

    Each is the backbone's last feature with that true stride; the deepest is
    its `high_level` feature, which must have stride 32.
    """
    skips = _skip_features(info)
    keys = (skips[4], skips[8], skips[16], info.high_level)
    strides = {key: info.stride(key) for key in keys if key is not None}
    if None in keys or strides[info.high_level] != 32:
        raise ValueError(
            "UPerNet's feature pyramid reads the backbone's features at strides 4, 8, 16 and "
            "32: build the backbone at output stride 32, with a feature at each of them. "
            f"Received: a {info.family} backbone ({info.variant!r}) with features at strides "
            f"{sorted({spec.stride for spec in info.features})}"
        )
    return keys


@builder
def UPerNet(
    num_classes,
    input_shape=(None, None, 3),
    backbone="resnet50",
    backbone_weights=None,
    decoder_filters=512,
    bins=(1, 2, 3, 6),
    dropout=0.1,
    aux_head=False,
    feature_norm=False,
    align_corners=False,
    logits_align_corners=None,
    normalization="auto",
    bn_momentum=0.9,
    name="upernet",
):
    """UPerNet (Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018).

    The semantic-segmentation branch of the paper, in the layout of
    mmsegmentation's `UPerHead` (`configs/_base_/models/upernet_r50.py`) and
    Hugging Face transformers' `UperNetForSemanticSegmentation`, or, with
    the arguments below, exactly segmentation_models.pytorch's `UPerNet`.
    The backbone runs at output stride 32; the pyramid reads its last
    features at strides 4, 8, 16 and 32 (`kseg.backbones.feature_info`):

    - the pyramid pooling module on the stride-32 feature (average pools to
      1, 2, 3 and 6 bins with PyTorch's bin boundaries, a 1x1 ConvBNReLU of
      `decoder_filters` each, bilinear resizes, concatenated after the
      feature as `[X, P1, P2, P3, P6]`), then a 3x3 ConvBNReLU: the top of
      the feature pyramid;
    - a 1x1 ConvBNReLU lateral on each of the stride 16, 8 and 4 features;
      top-down, each lateral adds the bilinear resize of the level above,
      and a 3x3 ConvBNReLU then smooths each level (the top one excepted);
    - the four levels resized (bilinear) to stride 4 and concatenated, finest
      first, a 3x3 ConvBNReLU ("fpn bottleneck"), channel dropout, a 1x1
      classifier (N(0, 0.01^2)), and a bilinear resize of the logits to the
      input size.

    Every conv before a BatchNorm has no bias; BatchNorm has torch's epsilon
    1e-5 and momentum 0.1 (Keras 0.9). `aux_head=True` adds the auxiliary
    FCN head of mmseg's UPerNet configs on the stride-16 feature (stage 3):
    a 3x3 ConvBNReLU of 256, dropout 0.1 and a 1x1 classifier, resized to
    the input size; the outputs then become `{"main", "aux"}`, and mmseg
    weighs the aux loss 0.4 (`loss_weights={"main": 1.0, "aux": 0.4}`).
    Any input size works: every map is resized to the size of the one it
    meets.

    **smp's `UPerNet`** (segmentation_models.pytorch 0.6,
    `decoders/upernet`) is this network built with `decoder_filters=256`
    (its `decoder_channels`), `feature_norm=True` (its `feature_norms`, a
    LayerNorm of each pyramid input), `dropout=0.0` (it has none) and
    `logits_align_corners=True` (its `SegmentationHead(upsampling=4)`, a
    bilinear x4 with `align_corners=True`, equal to the resize to the input
    size at sizes divisible by 4); `kseg.convert._smp_decoders` builds it
    from an smp config and copies its weights.

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`, values in [0, 255] (RGB
            for pretrained weights); any size and channel count works.
        backbone: `"resnet50"` (default; the paper's and mmseg's depth, here
            in keras.applications' layout), another name from
            `kseg.backbones.registry.DILATED` (`"resnet50_v1c"`, mmseg's
            layout; `"resnet18"`, `"resnet34"`, `"resnet50_v1.5"`, ... in
            torchvision's; `"xception65"`; a keras.applications encoder such
            as `"convnexttiny"` or `"mobilenetv2"`), built here at output
            stride 32, or a backbone model built by `kseg.backbones` at
            output stride 32.
        backbone_weights: for a backbone name: None, `"imagenet"` or a path
            (see `kseg.backbones`). Defaults to None.
        decoder_filters: width of the whole decoder: the pooling branches,
            the laterals, the pyramid convs and the bottlenecks. Defaults to
            512 (mmseg's `channels`, transformers' `hidden_size`); smp: 256.
        bins: pyramid pooling bin sizes. Defaults to (1, 2, 3, 6).
        dropout: channel dropout (`Dropout2d`, as mmseg) before the
            classifier. Defaults to 0.1; smp: 0.
        aux_head: add the auxiliary FCN head. Defaults to False.
        feature_norm: a LayerNormalization (epsilon 1e-6, over the channels)
            of each of the four backbone features before the pyramid, as
            smp's UPerNet has. Defaults to False (mmseg, transformers).
        align_corners: of the decoder's bilinear resizes (and of the logits'
            unless `logits_align_corners` says otherwise). Defaults to False
            (mmseg, transformers and smp).
        logits_align_corners: of the resize of the logits (main and aux) to
            the input size; None (default) means `align_corners`. smp: True.
        normalization: input normalisation: `"auto"` (default: what the
            backbone's weights expect, adapted to the channel count when they
            are pretrained; `"unit"` for other than 3 channels without them),
            `"caffe"` or `"torch"` (ImageNet statistics), `"tf"`, `"unit"`,
            `{"mean": ..., "std": ...}` or None. See
            `kseg.layers.ImageNormalization`.
        bn_momentum: the momentum of every BatchNormalization built here: the
            decoder's and, for a backbone given by name, the backbone's
            (Keras' convention: torch's momentum 0.1 is 0.9). Defaults to 0.9.
            A backbone model keeps its own.
        name: model name. Defaults to `"upernet"`.

    Returns:
        A `keras.Model` mapping images to float32 logits at the input size
        (or `{"main", "aux"}`).

    Layer names: `normalize`, the backbone model, `feature_norm{k}` (with
    `feature_norm`; level `k` = 1 ... 4 is stride 4 ... 32), `ppm`
    (`kseg.layers.PyramidPoolingModule`), `ppm_bottleneck`, `lateral{k}`,
    `top_down{k}` (resize) and `top_down{k}_add`, `fpn_conv{k}` (k = 1, 2,
    3), `fpn_resize{k}` (k = 2, 3, 4), `fpn_concat`, `fpn_bottleneck`,
    `dropout`, `classifier`, `logits`; with `aux_head` `aux_conv`,
    `aux_dropout`, `aux_classifier` and `aux_logits`.

    Example:

    >>> backbone = kseg.backbones.ResNet((1, 1, 1, 1), width=4)
    >>> model = kseg.models.UPerNet(3, backbone=backbone, decoder_filters=16)
    >>> model(np.zeros((1, 45, 61, 3), "float32")).shape
    (1, 45, 61, 3)
    """
    num_classes = check_num_classes(num_classes)
    decoder_filters = check_int("decoder_filters", decoder_filters, minimum=1)
    dropout = check_float("dropout", dropout, 0.0, 1.0)
    bn_momentum = check_float("bn_momentum", bn_momentum, 0.0, 1.0)
    align_corners = bool(align_corners)
    if logits_align_corners is None:
        logits_align_corners = align_corners
    logits_align_corners = bool(logits_align_corners)
    inputs, feats, info = resnet_features(
        backbone,
        input_shape=input_shape,
        backbone_weights=backbone_weights,
        normalization=normalization,
        output_stride=32,
        bn_momentum=bn_momentum,
        roles=("high_level", "aux") if aux_head else ("high_level",),
    )
    keys = pyramid_features(info)
    axis = -1 if keras.config.image_data_format() == "channels_last" else 1
    levels = [feats[key] for key in keys]
    if feature_norm:
        levels = [
            keras.layers.LayerNormalization(axis=axis, epsilon=1e-6, name=f"feature_norm{k}")(x)
            for k, x in enumerate(levels, start=1)
        ]

    def conv(x, kernel_size, name):
        return ConvBNAct(decoder_filters, kernel_size, bn_momentum=bn_momentum, name=name)(x)

    def resize(x, like, name):
        return ResizeLike(align_corners=align_corners, name=name)([x, like])

    x = PyramidPoolingModule(
        bins=bins,
        filters=decoder_filters,
        align_corners=align_corners,
        bn_momentum=bn_momentum,
        name="ppm",
    )(levels[3])
    outs = {4: conv(x, 3, "ppm_bottleneck")}
    state = outs[4]
    for k in (3, 2, 1):
        lateral = conv(levels[k - 1], 1, f"lateral{k}")
        state = keras.layers.Add(name=f"top_down{k}_add")(
            [resize(state, lateral, f"top_down{k}"), lateral]
        )
        outs[k] = conv(state, 3, f"fpn_conv{k}")
    maps = [outs[1]] + [resize(outs[k], outs[1], f"fpn_resize{k}") for k in (2, 3, 4)]
    x = keras.layers.Concatenate(axis=axis, name="fpn_concat")(maps)
    x = conv(x, 3, "fpn_bottleneck")
    main = classify(
        x, inputs, num_classes, logits_align_corners, dropout, keras.layers.SpatialDropout2D
    )
    aux = None
    if aux_head:
        aux = aux_logits(
            feats[info.aux], inputs, num_classes, logits_align_corners, bn_momentum=bn_momentum
        )
    return keras.Model(inputs, outputs_dict(main, aux), name=name)
