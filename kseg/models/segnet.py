"""SegNet: VGG-16-BN encoder, decoder that unpools with the encoder's max-pooling indices."""

import keras

from kseg.backbones.registry import VGG
from kseg.layers import MaxPoolingWithArgmax2D, MaxUnpooling2D
from kseg.models._base import (
    backbone_features,
    check_num_classes,
)
from kseg.models.segmentation_model import builder

# Decoder widths per stage, from the deepest (mirrors VGG-16's 13 convolutions).
_DECODER = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64,))


def _conv_bn_relu(x, filters, name, bn_momentum, bn_epsilon):
    # Conv with bias, then BN and ReLU, as in the VGG-16-BN encoder.
    x = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(
        momentum=bn_momentum, epsilon=bn_epsilon, name=f"{name}_bn"
    )(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


@builder
def SegNet(
    num_classes,
    input_shape=(None, None, 3),
    backbone="vgg16",
    backbone_weights=None,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    normalization="auto",
    name="segnet",
):
    """SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017).

    Layout (SPEC 4.8): the 13 convolutions of VGG-16 with BatchNorm as the
    encoder; after each of its 5 blocks a 2x2 stride-2 max-pool that records
    the argmax indices (`kseg.layers.MaxPoolingWithArgmax2D`, PyTorch index
    semantics). The decoder mirrors it: each stage max-unpools with the stored
    indices (values go back to their argmax position, zeros elsewhere) to the
    size of the encoder map before that pool, then 3x3 ConvBNReLU layers with
    mirrored widths (512-512-512, 512-512-256, 256-256-128, 128-64, 64), and a
    final 3x3 convolution to `num_classes` gives the logits. With 11 classes
    the model has 29,449,355 parameters (the paper reports 29.5M).

    Odd sizes work: the floor-mode pools drop the last row/column and the
    unpooling leaves it zero (as PyTorch's `MaxUnpool2d` with `output_size`).

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`, values in [0, 255] (RGB
            for pretrained weights); any channel count, any size of at least 32.
        backbone: `"vgg16"` or a `kseg.backbones.VGG16(variant="bn")`.
        backbone_weights: None, `"imagenet"` (the encoder's convolutions from
            VGG-16, as the paper initialises it) or a path.
        bn_momentum: BatchNorm momentum of the decoder and, for
            `backbone="vgg16"`, of the encoder. Defaults to 0.9 (torch 0.1). A
            backbone model keeps its own.
        bn_epsilon: BatchNorm epsilon of the decoder and, for
            `backbone="vgg16"`, of the encoder. Defaults to 1e-5 (torch).
        normalization: input normalisation: `"auto"` (default: what the
            backbone's weights expect, adapted to the channel count when
            they are pretrained, see `kseg.backbones.with_input_channels`;
            `"unit"` for other than 3 channels without them), `"caffe"` or
            `"torch"` (ImageNet statistics: 3 channels, or their grey average
            for 1), `"unit"` (divide by 255),
            `{"mean": ..., "std": ...}` (one value, or one per channel) or
            None. See `kseg.layers.ImageNormalization`.
        name: model name.

    Returns:
        A `keras.Model` mapping images to float32 logits at the input size.
    """
    num_classes = check_num_classes(num_classes)
    inputs, feats, info = backbone_features(
        backbone,
        names=VGG,
        input_shape=input_shape,
        backbone_weights=backbone_weights,
        family="vgg16",
        required_variant="bn",
        variant="bn",
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
        normalization=normalization,
    )
    # The encoder's pools again, now keeping the argmax indices (same windows, same values).
    pooled = {}
    for stage in range(1, 6):
        pooled[stage] = MaxPoolingWithArgmax2D(name=f"pool{stage}_argmax")(feats[f"block{stage}"])
    x = pooled[5][0]
    for stage, widths in zip(range(5, 0, -1), _DECODER):
        indices, before = pooled[stage][1], feats[f"block{stage}"]
        x = MaxUnpooling2D(name=f"unpool{stage}")([x, indices, before])
        for i, width in enumerate(widths, start=1):
            x = _conv_bn_relu(x, width, f"decoder{stage}_{i}", bn_momentum, bn_epsilon)
    logits = keras.layers.Conv2D(num_classes, 3, padding="same", dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)
