"""PSPNet: pyramid scene parsing network."""

import keras

from kseg._common import check_bool, check_int
from kseg.layers import ConvBNAct, PyramidPoolingModule
from kseg.models._base import (
    aux_logits,
    check_num_classes,
    classify,
    outputs_dict,
    resnet_features,
)
from kseg.models.segmentation_model import builder


@builder
def PSPNet(
    num_classes,
    input_shape=(None, None, 3),
    backbone="resnet50",
    output_stride=8,
    backbone_weights=None,
    bins=(1, 2, 3, 6),
    fusion_filters=512,
    dropout=0.1,
    aux_head=False,
    align_corners=False,
    normalization="auto",
    bn_momentum=0.9,
    feature=None,
    batch_norm=True,
    global_bn=True,
    pyramid_first=False,
    fusion_kernel_size=3,
    classifier_kernel_size=1,
    name="pspnet",
):
    """PSPNet (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017).

    Layout (SPEC 4.4, following hszhao/semseg and mmseg): a dilated ResNet at
    output stride 8; the pyramid pooling module (adaptive average pools to 1,
    2, 3 and 6 bins with PyTorch's bin boundaries, a 1x1 ConvBNReLU to C/4 each,
    bilinear upsampling, concatenated after the input as `[X, P1, P2, P3, P6]`);
    a 3x3 ConvBNReLU to 512, channel dropout 0.1 (`Dropout2d`), a 1x1
    classifier, and bilinear upsampling to the input size. The paper's
    auxiliary head on stage 3 (3x3 ConvBNReLU to 256, dropout 0.1, 1x1) comes
    with `aux_head=True`; outputs then become `{"main", "aux"}`, and the paper
    weighs the aux loss 0.4 (`loss_weights={"main": 1.0, "aux": 0.4}`).

    segmentation_models.pytorch's `PSPNet` (smp 0.6; `kseg.convert.from_smp`
    builds it) is this model with `feature="stage2"` (the ResNet cut after
    its stride-8 stage, undilated at every output stride: smp's default
    `encoder_depth=3`), `global_bn=False, pyramid_first=True,
    fusion_kernel_size=1, classifier_kernel_size=3, align_corners=True`,
    `fusion_filters` its `psp_out_channels` (512), `dropout` its
    `psp_dropout` (0.2) and `batch_norm` its `decoder_use_norm`.

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
        bins: pyramid bin sizes. Defaults to (1, 2, 3, 6).
        fusion_filters: width of the fusion conv. Defaults to 512.
        dropout: channel dropout before the classifier. Defaults to 0.1.
        aux_head: add the auxiliary head. Defaults to False.
        align_corners: of the resizes. Defaults to False (mmseg; the original
            code uses True with 473/713 crops).
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
        feature: None (default: the backbone's deepest feature) or the key
            of the backbone feature the pyramid pools (`"stage2"`, ...); the
            backbone is cut after it, and the stages after it are not built.
        batch_norm: BatchNorm in the pyramid branches and the fusion
            convolution (without it they have a bias). Defaults to True.
        global_bn: BatchNorm in the pyramid branch of bin size 1 too; False
            gives it a bias instead (smp). Defaults to True.
        pyramid_first: concatenate the pyramid maps before the backbone
            feature, `[P1, P2, P3, P6, X]` (smp), instead of after it.
            Defaults to False.
        fusion_kernel_size: kernel size of the fusion convolution. Defaults
            to 3 (smp: 1).
        classifier_kernel_size: kernel size of the classifier (same
            padding). Defaults to 1 (smp: 3).
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
        feature=feature,
    )
    batch_norm = check_bool("batch_norm", batch_norm)
    x = PyramidPoolingModule(
        bins=bins,
        align_corners=align_corners,
        bn_momentum=bn_momentum,
        use_bn=batch_norm,
        global_bn=check_bool("global_bn", global_bn),
        input_position="last" if check_bool("pyramid_first", pyramid_first) else "first",
        name="ppm",
    )(feats[info.high_level])
    x = ConvBNAct(
        fusion_filters,
        check_int("fusion_kernel_size", fusion_kernel_size),
        use_bn=batch_norm,
        bn_momentum=bn_momentum,
        name="fusion",
    )(x)
    main = classify(
        x,
        inputs,
        num_classes,
        align_corners,
        dropout,
        keras.layers.SpatialDropout2D,
        kernel_size=check_int("classifier_kernel_size", classifier_kernel_size),
    )
    aux = (
        aux_logits(feats[info.aux], inputs, num_classes, align_corners, bn_momentum=bn_momentum)
        if aux_head
        else None
    )
    return keras.Model(inputs, outputs_dict(main, aux), name=name)
