"""U-Net: the paper's network with its overlap-tile input padding, or a decoder on a backbone."""

import keras
from keras import ops

from kseg._backend import int_range, is_symbolic_dim
from kseg._common import check_choice, check_float, check_int
from kseg.layers import ConvBNAct, CropLike, Resize2D, ResizeLike
from kseg.models._base import (
    check_num_classes,
    normalization_layer,
    stride32_features,
)
from kseg.models.segmentation_model import builder


def _tile_geometry(depth, padding):
    """Margin, size multiple and residue a U-Net input must be padded to.

    With valid convolutions every pre-pool size must be even; the network
    shrinks an input of valid size `P` by `12 * 2**depth - 8` pixels (184 for
    depth 4: 572 -> 388). With same convolutions the size must be a multiple
    of `2**depth`.
    """
    multiple = 2**depth
    if padding == "same":
        return 0, multiple, 0
    shrink = 12 * multiple - 8

    def valid(size):
        for _ in range(depth):
            size -= 4
            if size <= 0 or size % 2:
                return False
            size //= 2
        return size > 4

    residue = next(p % multiple for p in range(shrink, shrink + multiple) if valid(p + multiple))
    return shrink // 2, multiple, residue


@keras.saving.register_keras_serializable(package="kseg")
class UNetInputPadding(keras.layers.Layer):
    """Pads an image to the smallest size a U-Net maps onto all of it.

    The top and left get `margin` pixels; the bottom and right what makes the
    padded size at least `size + 2 * margin` and congruent to `residue` modulo
    `multiple`. The original U-Net mirrors the image into the margin
    ("overlap-tile strategy", Ronneberger et al. 2015, Fig. 2), so
    `mode="reflect"` is the default; reflection needs the image to be larger
    than the padding on each side, otherwise use `mode="constant"`.

    Args:
        margin: top/left padding. multiple, residue: the size rule.
        mode: `"reflect"`, `"symmetric"` or `"constant"` (zeros).

    Input shape: `(B, H, W, C)`. Output shape: `(B, H', W', C)`.
    """

    def __init__(self, margin, multiple, residue, mode="reflect", **kwargs):
        super().__init__(**kwargs)
        self.margin = check_int("margin", margin, minimum=0)
        self.multiple = check_int("multiple", multiple, minimum=1)
        self.residue = check_int("residue", residue, minimum=0)
        self.mode = check_choice("mode", mode, ("reflect", "symmetric", "constant"))

    def _after(self, n):
        # The padded size is the smallest `multiple * q + residue` >= n + 2 * margin. Its
        # operands are non-negative (a quotient of a negative number is floored in Python
        # and TensorFlow but truncated in ONNX's graph as tf2onnx writes it), and written
        # as `multiple * q + residue` it lets JAX's export tracing (symbolic sizes) see
        # that every pooling halves it exactly, as the decoder's concatenations need.
        q = (n + 2 * self.margin - self.residue + self.multiple - 1) // self.multiple
        return self.multiple * q + self.residue - (n + self.margin)

    def call(self, x):
        shape = ops.shape(x)
        widths = [[0, 0]]
        for n in (shape[1], shape[2]):
            after = self._after(n)
            if isinstance(n, int) and self.mode != "constant" and max(self.margin, after) >= n:
                raise ValueError(
                    f"U-Net {self.mode} padding of {self.margin}/{after} pixels needs an image "
                    f"larger than that; use `tile_padding='constant'` for small images. "
                    f"Received: input shape {tuple(x.shape)}"
                )
            widths.append([self.margin, after])
        widths.append([0, 0])
        if all(isinstance(w, int) and w == 0 for pair in widths for w in pair):
            return x  # torch's reflect padding rejects an all-zero padding
        if self.mode != "constant" and (is_symbolic_dim(shape[1]) or is_symbolic_dim(shape[2])):
            # Traced for export from JAX with a free height and width: `jnp.pad` mirrors
            # only widths it can compare with the size, so gather the mirrored rows and
            # columns instead (the same values).
            for axis in (1, 2):
                x = ops.take(x, self._mirror_indices(shape[axis], *widths[axis]), axis=axis)
            return x
        return ops.pad(x, widths, mode=self.mode)

    def _mirror_indices(self, n, before, after):
        """The source row (or column) of each output row of a reflect/symmetric padding."""
        i = int_range(before + n + after) - before
        if self.mode == "symmetric":  # the edge is repeated: -1 -> 0, n -> n - 1
            i = ops.where(i < 0, -1 - i, i)
            return ops.where(i >= n, 2 * n - 1 - i, i)
        i = ops.abs(i)  # reflect: -1 -> 1, n -> n - 2
        return (n - 1) - ops.abs((n - 1) - i)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        size = [None if n is None else n + self.margin + self._after(n) for n in (h, w)]
        return (b, *size, c)

    def get_config(self):
        return {
            **super().get_config(),
            "margin": self.margin,
            "multiple": self.multiple,
            "residue": self.residue,
            "mode": self.mode,
        }


#: Decoder widths of the encoder U-Net, from the stride-32 feature up to stride 1:
#: segmentation_models.pytorch's `decoder_channels` and segmentation_models'
#: `decoder_filters` default.
DECODER_FILTERS = (256, 128, 64, 32, 16)

# The arguments of one kind of U-Net only, with the value each means when left at None.
_PAPER_DEFAULTS = {
    "base_filters": 64,
    "depth": 4,
    "padding": "valid",
    "upsampling": "transpose",
    "tile_padding": "reflect",
}
_ENCODER_ONLY = ("decoder_filters", "backbone_weights")


@builder
def UNet(
    num_classes,
    input_shape=(None, None, 3),
    base_filters=None,
    depth=None,
    padding=None,
    batch_norm=None,
    upsampling=None,
    tile_padding=None,
    normalization="auto",
    backbone=None,
    backbone_weights=None,
    decoder_filters=None,
    bn_momentum=0.9,
    name="unet",
):
    """U-Net (Ronneberger, Fischer & Brox, MICCAI 2015), alone or on a backbone.

    Two networks share this builder. Without `backbone` it is the paper's
    network; with one it is the U-Net of segmentation_models.pytorch (smp,
    `smp.Unet`) and segmentation_models (Keras, `sm.Unet`): the paper's
    decoder on a pretrained classification encoder.

    **Paper U-Net** (`backbone=None`). The original layout by default:
    `depth` down steps of two 3x3 valid convolutions + ReLU and a 2x2
    max-pool, doubling the width from `base_filters` (64 ... 1024); up steps
    of a 2x2 stride-2 transposed convolution that halves the width,
    concatenation with the centre-cropped encoder map, and two 3x3 valid
    convolutions + ReLU; a 1x1 classifier. With one input channel and 2
    classes that is 31,030,658 parameters. Any input size works and the
    logits have the input size: the image is first padded (mirrored, the
    paper's overlap-tile strategy) to the smallest size the network maps onto
    the whole image, and the output is cropped back. With `padding="same"`
    the image is only padded up to a multiple of `2**depth`.

    **Encoder U-Net** (`backbone` given). The backbone runs at output stride
    32. The decoder starts from its deepest (stride-32) feature and has one
    block per entry of `decoder_filters` (5, strides 16, 8, 4, 2 and 1): each
    block upsamples the previous map by 2 (nearest neighbour), concatenates
    the encoder feature of that stride after it (`[x, skip]` on the channel
    axis), and applies two 3x3 convolutions + BatchNorm + ReLU (bias only
    without BatchNorm; He-uniform kernels, as both libraries). The skip of a
    stride is the backbone's last feature with that true stride
    (`kseg.backbones.feature_info`); a stride the backbone has no feature at
    (ConvNeXt has none at stride 2) and the last block (stride 1) upsample
    without a skip, as in smp. A 3x3 convolution to `num_classes` (bias,
    Glorot-uniform) gives the logits, as smp's `SegmentationHead(kernel_size=3)`
    and sm's `final_conv`. VGG19, whose deepest feature is a max-pool output,
    first gets smp's and sm's centre block: two 3x3 ConvBNReLU of its 512
    channels.

    Choices, with their source: decoder widths (256, 128, 64, 32, 16)
    (smp `decoder_channels`, sm `decoder_filters`); BatchNorm on (smp
    `decoder_use_batchnorm=True`, sm the same), here with torch's epsilon
    1e-5 and momentum 0.1 (Keras 0.9) as smp; nearest x2 upsampling (smp's
    `F.interpolate(scale_factor=2, mode="nearest")`, sm's
    `decoder_block_type="upsampling"`; sm's `"transpose"` block is not
    offered); concatenation order `[upsampled, skip]` (both). Unlike both
    libraries, which need sizes divisible by 32, any input size works: a
    block resizes its input (nearest, PyTorch's `mode="nearest"`) to the
    exact size of its skip, and the last block to the input size. For
    features of `ceil(h / s)` rows (ResNets, MobileNets and EfficientNets
    with a known input size) that is exactly "upsample by 2 and drop the last
    row if there is one too many", so every decoder pixel stays over the
    input pixels it stands for.

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`, values in [0, 255]; any
            channel count (1 for the paper's grey images; pretrained backbone
            weights are adapted to it, see `kseg.backbones.with_input_channels`).
        base_filters: paper U-Net only: width of the first level. Defaults
            to 64.
        depth: paper U-Net only: number of down-sampling steps. Defaults to 4.
        padding: paper U-Net only: `"valid"` (original, default) or `"same"`
            convolutions.
        batch_norm: BatchNormalization after every decoder convolution.
            Defaults (None) to False for the paper U-Net (the original has
            none; True gives a common modern variant, with BN in the encoder
            too) and to True for the encoder U-Net (smp and sm).
        upsampling: paper U-Net only: `"transpose"` (original 2x2
            up-convolution, default) or `"bilinear"` (bilinear x2 then a 1x1
            conv that halves the width).
        tile_padding: paper U-Net only: how the input is padded, `"reflect"`
            (default), `"symmetric"` or `"constant"`.
        normalization: input normalisation: `"auto"` (default: what the
            backbone's weights expect, adapted to the channel count when
            they are pretrained; `"unit"` for other than 3 channels without
            them, and for the paper U-Net), `"unit"`
            (divide by 255), `"torch"` or `"caffe"` (ImageNet statistics: 3
            channels, or their grey average for 1 channel), `"tf"`,
            `{"mean": ..., "std": ...}` (one value or one per channel), or None.
        backbone: None (the paper U-Net), a name from
            `kseg.backbones.registry.DILATED` (`"resnet50"`,
            `"resnet101"`, their `"_v1.5"` and `"_v1c"` torch layouts,
            `"resnet152"`, `"xception65"`, or a keras.applications encoder such as
            `"mobilenetv2"`, `"efficientnetb0"`, `"convnexttiny"`: see
            `kseg.backbones.Application`), built here at output stride 32, or
            a backbone model built by `kseg.backbones`
            at output stride 32.
        backbone_weights: encoder U-Net with a backbone name only: None,
            `"imagenet"` or a path (see `kseg.backbones`). Defaults to None.
        decoder_filters: encoder U-Net only: the 5 decoder block widths, from
            stride 16 to stride 1. Defaults to (256, 128, 64, 32, 16).
        bn_momentum: the momentum of every BatchNormalization built here: the
            decoder's (with `batch_norm`) and, for a backbone given by name,
            the backbone's (Keras' convention: torch's momentum 0.1 is 0.9).
            Defaults to 0.9. A backbone model keeps its own.
        name: model name. Defaults to `"unet"` for both kinds.

    Returns:
        A `keras.Model` mapping images to float32 logits at the input size.

    Layer names of the encoder U-Net: `normalize`, the backbone model,
    `center_conv{1,2}` (VGG19 only), then per block `i` = 1 ... 5
    `decoder_block{i}_upsample`, `decoder_block{i}_concat` (where it has a
    skip), `decoder_block{i}_conv1`, `decoder_block{i}_conv2` (`ConvBNAct`:
    sub-layers `conv` and `bn`), and `logits` (the 3x3 classifier).

    Example:

    >>> backbone = kseg.backbones.ResNet((1, 1, 1, 1), width=4)
    >>> model = kseg.models.UNet(3, backbone=backbone, decoder_filters=(16, 8, 8, 4, 4))
    >>> model(np.zeros((1, 45, 61, 3), "float32")).shape
    (1, 45, 61, 3)
    """
    num_classes = check_num_classes(num_classes)
    bn_momentum = check_float("bn_momentum", bn_momentum, 0.0, 1.0)
    paper_args = {
        "base_filters": base_filters,
        "depth": depth,
        "padding": padding,
        "upsampling": upsampling,
        "tile_padding": tile_padding,
    }
    encoder_args = {"decoder_filters": decoder_filters, "backbone_weights": backbone_weights}
    if backbone is None:
        for arg, value in encoder_args.items():
            if value is not None:
                raise ValueError(
                    f"`{arg}` applies only to a U-Net on a backbone; pass `backbone` (a name "
                    f"or a `kseg.backbones` model) to use it. Received: {arg}={value!r}, "
                    "backbone=None"
                )
        kwargs = {k: _PAPER_DEFAULTS[k] if v is None else v for k, v in paper_args.items()}
        return _paper_unet(
            num_classes,
            input_shape,
            batch_norm=bool(batch_norm),
            normalization=normalization,
            bn_momentum=bn_momentum,
            name=name,
            **kwargs,
        )
    for arg, value in paper_args.items():
        if value is not None:
            raise ValueError(
                f"`{arg}` applies only to the paper U-Net (`backbone=None`); the U-Net on a "
                f"backbone takes `decoder_filters` and `batch_norm`. Received: {arg}={value!r}, "
                f"backbone={_describe(backbone)}"
            )
    return _encoder_unet(
        num_classes,
        input_shape,
        backbone=backbone,
        backbone_weights=backbone_weights,
        decoder_filters=DECODER_FILTERS if decoder_filters is None else decoder_filters,
        batch_norm=True if batch_norm is None else bool(batch_norm),
        normalization=normalization,
        bn_momentum=bn_momentum,
        name=name,
    )


def _describe(backbone):
    if isinstance(backbone, str):
        return repr(backbone)
    return f"<model {getattr(backbone, 'name', '?')!r}>"


def _paper_unet(
    num_classes,
    input_shape,
    base_filters,
    depth,
    padding,
    batch_norm,
    upsampling,
    tile_padding,
    normalization,
    bn_momentum,
    name,
):
    base_filters = check_int("base_filters", base_filters, minimum=1)
    depth = check_int("depth", depth, minimum=1)
    check_choice("padding", padding, ("valid", "same"))
    check_choice("upsampling", upsampling, ("transpose", "bilinear"))

    def double_conv(x, width, name):
        for i in (1, 2):
            if batch_norm:
                x = ConvBNAct(
                    width, 3, padding=padding, bn_momentum=bn_momentum, name=f"{name}_conv{i}"
                )(x)
            else:
                x = keras.layers.Conv2D(
                    width, 3, padding=padding, activation="relu", name=f"{name}_conv{i}"
                )(x)
        return x

    # "auto" has no backbone weights to follow here: it means "unit".
    normalize = normalization_layer(normalization, input_shape, preprocessing="unit")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = normalize(inputs)
    x = UNetInputPadding(*_tile_geometry(depth, padding), mode=tile_padding, name="tile_pad")(x)
    skips = []
    for level in range(depth):
        x = double_conv(x, base_filters * 2**level, f"down{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = double_conv(x, base_filters * 2**depth, "bottom")
    for level in reversed(range(depth)):
        width = base_filters * 2**level
        if upsampling == "transpose":
            x = keras.layers.Conv2DTranspose(width, 2, strides=2, name=f"up{level}")(x)
        else:
            x = keras.layers.UpSampling2D(interpolation="bilinear", name=f"up{level}_resize")(x)
            x = keras.layers.Conv2D(width, 1, name=f"up{level}")(x)
        skip = CropLike(name=f"crop{level}")([skips[level], x])
        x = keras.layers.Concatenate(name=f"concat{level}")([skip, x])
        x = double_conv(x, width, f"up{level}")
    x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
    logits = CropLike(offset=0, dtype="float32", name="logits")([x, inputs])
    return keras.Model(inputs, logits, name=name)


def _check_decoder_filters(decoder_filters):
    if isinstance(decoder_filters, (str, bytes)) or not hasattr(decoder_filters, "__len__"):
        raise TypeError(
            "Expected `decoder_filters` to be a sequence of 5 integers (strides 16, 8, 4, 2, "
            f"1). Received: decoder_filters={decoder_filters!r}"
        )
    if len(decoder_filters) != 5:
        raise ValueError(
            "Expected `decoder_filters` to have 5 entries, one per decoder block from the "
            "stride-32 feature to stride 1 (strides 16, 8, 4, 2, 1). Received: "
            f"decoder_filters={tuple(decoder_filters)!r}"
        )
    return tuple(check_int("decoder_filters", f, minimum=1) for f in decoder_filters)


def _skip_features(info):
    """The feature key the encoder U-Net concatenates at strides 16, 8, 4 and 2 (or None).

    For each stride, the backbone's last feature with that true stride;
    None where it has none.
    """
    return {
        stride: next((s.key for s in reversed(info.features) if s.stride == stride), None)
        for stride in (16, 8, 4, 2)
    }


def _encoder_unet(
    num_classes,
    input_shape,
    backbone,
    backbone_weights,
    decoder_filters,
    batch_norm,
    normalization,
    bn_momentum,
    name,
):
    decoder_filters = _check_decoder_filters(decoder_filters)
    inputs, feats, info = stride32_features(
        backbone,
        "U-Net",
        input_shape=input_shape,
        backbone_weights=backbone_weights,
        normalization=normalization,
        bn_momentum=bn_momentum,
    )
    channels_last = keras.config.image_data_format() == "channels_last"
    axis = -1 if channels_last else 1

    def conv(x, filters, name):
        layer = ConvBNAct(
            filters,
            3,
            use_bn=batch_norm,
            bn_momentum=bn_momentum,
            kernel_initializer="he_uniform",
            name=name,
        )
        return layer(x)

    x = feats[info.high_level]
    if info.family == "vgg19":  # smp's and sm's centre block after VGG's last max-pool
        width = info.channels(info.high_level)
        x = conv(conv(x, width, "center_conv1"), width, "center_conv2")
    skips = _skip_features(info)
    strides = (16, 8, 4, 2, 1)
    for i, (stride, filters) in enumerate(zip(strides, decoder_filters), start=1):
        prefix = f"decoder_block{i}"
        key = skips.get(stride)
        if key is not None:
            skip = feats[key]
            x = ResizeLike(interpolation="nearest", name=f"{prefix}_upsample")([x, skip])
            x = keras.layers.Concatenate(axis=axis, name=f"{prefix}_concat")([x, skip])
        elif stride == 1:
            x = ResizeLike(interpolation="nearest", name=f"{prefix}_upsample")([x, inputs])
        else:
            x = Resize2D(scale=2, interpolation="nearest", name=f"{prefix}_upsample")(x)
        x = conv(x, filters, f"{prefix}_conv1")
        x = conv(x, filters, f"{prefix}_conv2")
    logits = keras.layers.Conv2D(num_classes, 3, padding="same", dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)
