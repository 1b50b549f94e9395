"""Fully convolutional networks: FCN-32s, FCN-16s and FCN-8s on VGG-16, and the dilated FCN."""

import keras

from kseg._common import check_int
from kseg.backbones._weights import check_weights
from kseg.backbones.registry import VGG
from kseg.backbones.vgg import check_load_fc, load_vgg16_weights
from kseg.initializers import BilinearUpsampling
from kseg.layers import ConvBNAct, CropLike
from kseg.models._base import (
    aux_logits,
    backbone_features,
    check_num_classes,
    classify,
    outputs_dict,
    resnet_features,
)
from kseg.models.segmentation_model import builder

# Crop offsets of the official voc-fcn{32,16,8}s nets (shelhamer/fcn.berkeleyvision.org),
# which follow from conv1_1's padding of 100.
_OFFSETS = {"pool4": 5, "pool3": 9, 32: 19, 16: 27, 8: 31}


def _upscore(x, num_classes, factor, trainable, name):
    """Transposed conv with FCN's bilinear kernel: kernel 2 * factor, stride factor, no bias."""
    return keras.layers.Conv2DTranspose(
        num_classes,
        2 * factor,
        strides=factor,
        use_bias=False,
        kernel_initializer=BilinearUpsampling(),
        trainable=trainable,
        name=name,
    )(x)


def _score(x, num_classes, name):
    # The reference Caffe-to-PyTorch port initialises the score layers to zero.
    return keras.layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name=name)(x)


def _fcn(
    num_classes,
    stride,
    input_shape,
    backbone,
    backbone_weights,
    fc_filters,
    dropout,
    at_once,
    trainable_upsampling,
    normalization,
    load_fc,
    name,
):
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
        required_variant="fcn",
        variant="fcn",
        normalization=normalization,
        pretrained=deferred,
    )
    x = keras.layers.Conv2D(fc_filters, 7, activation="relu", name="fc6")(feats["pool5"])
    x = keras.layers.Dropout(dropout, name="drop6")(x)
    x = keras.layers.Conv2D(fc_filters, 1, activation="relu", name="fc7")(x)
    x = keras.layers.Dropout(dropout, name="drop7")(x)
    x = _score(x, num_classes, "score_fr")
    for skip, scale in (("pool4", 0.01), ("pool3", 1e-4))[: {32: 0, 16: 1, 8: 2}[stride]]:
        x = _upscore(x, num_classes, 2, trainable_upsampling, f"upscore_{skip}_in")
        s = feats[skip]
        if at_once:  # voc-fcn8s-atonce scales the skips so all can be trained at once
            s = keras.layers.Rescaling(scale, name=f"scale_{skip}")(s)
        s = _score(s, num_classes, f"score_{skip}")
        s = CropLike(offset=_OFFSETS[skip], name=f"score_{skip}_crop")([s, x])
        x = keras.layers.Add(name=f"fuse_{skip}")([x, s])
    x = _upscore(x, num_classes, stride, trainable_upsampling, f"upscore{stride}")
    logits = CropLike(offset=_OFFSETS[stride], dtype="float32", name="logits")([x, inputs])
    model = keras.Model(inputs, logits, name=name)
    if deferred:
        load_vgg16_weights(
            model.get_layer("vgg16"),
            model.get_layer("fc6"),
            model.get_layer("fc7"),
            backbone_weights,
            load_fc,
            layout="fcn",
        )
    return model


_DOC = """FCN-{stride}s on VGG-16 (Long, Shelhamer & Darrell, CVPR 2015).

    Layout (SPEC 4.6, the official voc-fcn{stride}s): the `fcn` VGG-16 variant
    (conv1_1 padded by 100, ceil-mode 2x2 pools), fc6 as a 7x7 valid conv to
    4096 + ReLU + Dropout 0.5, fc7 1x1 to 4096 + ReLU + Dropout 0.5, a 1x1
    score layer to `num_classes`{skips}, and a final transposed conv (kernel
    {kernel}, stride {stride}) cropped at offset {offset} to the input size.
    Every transposed conv has no bias and starts as bilinear upsampling
    (`kseg.initializers.BilinearUpsampling`); the score layers start at zero.
    With 21 classes the model has {params} parameters.

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`, values in [0, 255] (RGB
            for pretrained weights); any size and channel count works.
        backbone: `"vgg16"` or a `kseg.backbones.VGG16(variant="fcn")`.
        backbone_weights: None, `"imagenet"` or the path of a
            keras.applications VGG16 weights file (see `kseg.backbones`):
            the 13 convolutions, and fc6 / fc7 as `load_fc` says.
        fc_filters: width of fc6 and fc7. Defaults to 4096.
        dropout: after fc6 and fc7. Defaults to 0.5.
        at_once: scale pool4 by 0.01 and pool3 by 1e-4 before their score
            layers, as the "at-once" Caffe recipe does. Defaults to False.
        trainable_upsampling: train the transposed convs. Defaults to True
            (the PyTorch port); the Caffe nets freeze them (`lr_mult: 0`).
        normalization: input normalisation, `"auto"` (what the backbone's
            weights expect), `"caffe"`, `"torch"`, `"unit"` or None.
        load_fc: whether `backbone_weights` also initialise fc6 and fc7, as
            the paper does, from VGG-16's fc1 and fc2 made convolutional: fc6
            is fc1's kernel reshaped to 7x7x512x4096 (keras.applications
            flattens pool5 in channels_last order), fc7 is fc2's kernel as
            1x1x4096x4096, biases unchanged. `"auto"` (default): load them
            when `fc_filters` is 4096 and the weights have the classifier top
            (`"imagenet"` then fetches the full 528 MB VGG16 file instead of
            the 58 MB one without top); otherwise keep them random and warn
            (`UserWarning`). True: the same, but raise `ValueError` where
            "auto" warns (also when `backbone_weights` is None). False: only
            the convolutions. Applies to a backbone given by name.
        name: model name.

    Returns:
        A `keras.Model` mapping images to float32 logits at the input size.
    """


def _builder(stride, params, skips, kernel):
    def build(
        num_classes,
        input_shape=(None, None, 3),
        backbone="vgg16",
        backbone_weights=None,
        fc_filters=4096,
        dropout=0.5,
        at_once=False,
        trainable_upsampling=True,
        normalization="auto",
        load_fc="auto",
        name=f"fcn{stride}s",
    ):
        return _fcn(
            num_classes,
            stride,
            input_shape,
            backbone,
            backbone_weights,
            fc_filters,
            dropout,
            at_once,
            trainable_upsampling,
            normalization,
            load_fc,
            name,
        )

    build.__name__ = build.__qualname__ = f"FCN{stride}s"
    build.__doc__ = _DOC.format(
        stride=stride, params=params, skips=skips, kernel=kernel, offset=_OFFSETS[stride]
    )
    return builder(build)


FCN32s = _builder(32, "136,152,917", "", 64)
FCN16s = _builder(
    16,
    "134,815,994",
    ", then the 2x-upsampled scores plus pool4's 1x1 scores (cropped at offset 5)",
    32,
)
FCN8s = _builder(
    8,
    "134,489,759",
    ", then twice: 2x-upsampled scores plus the 1x1 scores of pool4 (offset 5), then of "
    "pool3 (offset 9)",
    16,
)


@builder
def DilatedFCN(
    num_classes,
    input_shape=(None, None, 3),
    backbone="resnet50",
    output_stride=8,
    multi_grid=None,
    backbone_weights=None,
    head_filters=512,
    dropout=0.1,
    aux_head=False,
    align_corners=False,
    normalization="auto",
    bn_momentum=0.9,
    name="dilated_fcn",
):
    """The FCN head on a dilated ResNet, as torchvision's `fcn_resnet50/101`.

    Layout (torchvision `models/segmentation/fcn.py`, `FCNHead`): a dilated
    ResNet at output stride 8, a 3x3 ConvBNReLU to `head_filters` (a quarter of the
    2048 input channels), dropout, a 1x1 classifier, and bilinear upsampling
    to the input size. `aux_head=True` adds the same head (256 filters) on
    stage 3; the outputs then become `{"main", "aux"}`. torchvision builds it
    on a v1.5 ResNet (`backbone="resnet50_v1.5"`; `kseg.convert.from_torchvision`
    loads its checkpoints). Long et al.'s FCN-8s/16s/32s on VGG-16 are
    `kseg.models.FCN8s` and friends.

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`, values in [0, 255] (RGB
            for pretrained weights); any size and channel count works.
        backbone: a ResNet name (`"resnet50"` (default), `"resnet101"`, with
            `"_v1.5"` or `"_v1c"` for the torch layouts),
            `"resnet152"`, `"xception65"` (DeepLab v3+'s aligned Xception-65,
            `kseg.backbones.Xception65`), a keras.applications encoder name
            (`"mobilenetv2"`, `"efficientnetb0"`, `"convnexttiny"`, ... : see
            `kseg.backbones.Application`; its family's output strides apply and
            `multi_grid` does not), or a backbone built by `kseg.backbones`.
        output_stride: 8 (default), 16 or 32, for a backbone given by name.
        multi_grid: last-stage rate multipliers. Defaults to None.
        backbone_weights: None, `"imagenet"` or a path (see `kseg.backbones`).
        head_filters: width of the head's 3x3 conv. Defaults to 512.
        dropout: before the classifier. Defaults to 0.1.
        aux_head: add the auxiliary head on stage 3. Defaults to False.
        align_corners: of the upsamplings. Defaults to False.
        normalization: input normalisation, as in the other builders:
            `"auto"` (default: what the backbone's weights expect), `"caffe"`,
            `"torch"`, `"unit"`, a `{"mean", "std"}` dict or None.
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
    head_filters = check_int("head_filters", head_filters, 1)
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
    x = ConvBNAct(head_filters, 3, bn_momentum=bn_momentum, name="head_conv")(
        feats[info.high_level]
    )
    main = classify(x, inputs, num_classes, align_corners, dropout=dropout)
    aux = (
        aux_logits(feats[info.aux], inputs, num_classes, align_corners, bn_momentum=bn_momentum)
        if aux_head
        else None
    )
    return keras.Model(inputs, outputs_dict(main, aux), name=name)
