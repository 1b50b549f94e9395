"""U-Net, with the original overlap-tile input padding."""

import keras
from keras import ops

from kseg._backend import int_range, is_symbolic_dim
from kseg._common import check_choice, check_int
from kseg.layers import ConvBNAct, CropLike
from kseg.models._base import normalization_layer


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


def UNet(
    num_classes,
    input_shape=(None, None, 3),
    base_filters=64,
    depth=4,
    padding="valid",
    batch_norm=False,
    upsampling="transpose",
    tile_padding="reflect",
    normalization="unit",
    name="unet",
):
    """U-Net (Ronneberger, Fischer & Brox, MICCAI 2015).

    The original layout by default: `depth` down steps of two 3x3 valid
    convolutions + ReLU and a 2x2 max-pool, doubling the width from `base_filters`
    (64 ... 1024); up steps of a 2x2 stride-2 transposed convolution that
    halves the width, concatenation with the centre-cropped encoder map, and
    two 3x3 valid convolutions + ReLU; a 1x1 classifier. With one input
    channel and 2 classes that is 31,030,658 parameters.

    Any input size works and the logits have the input size: the image is
    first padded (mirrored, the paper's overlap-tile strategy) to the smallest
    size the network maps onto the whole image, and the output is cropped back.
    With `padding="same"` the image is only padded up to a multiple of
    `2**depth`.

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`, values in [0, 255]; any
            channel count (1 for the paper's grey images).
        base_filters: width of the first level. Defaults to 64.
        depth: number of down-sampling steps. Defaults to 4.
        padding: `"valid"` (original) or `"same"` convolutions.
        batch_norm: BatchNormalization after every conv (a common modern
            variant; the original has none). Defaults to False.
        upsampling: `"transpose"` (original 2x2 up-convolution) or
            `"bilinear"` (bilinear x2 then a 1x1 conv that halves the width).
        tile_padding: how the input is padded, `"reflect"` (default),
            `"symmetric"` or `"constant"`.
        normalization: `"unit"` (divide by 255, any channel count; default),
            `"torch"` or `"caffe"` (ImageNet statistics: 3 channels, or their
            grey average for 1 channel), `{"mean": ..., "std": ...}` (one
            value or one per channel), or None.
        name: model name.

    Returns:
        A `keras.Model` mapping images to float32 logits at the input size.
    """
    num_classes = check_int("num_classes", num_classes, minimum=1)
    base_filters = check_int("base_filters", base_filters, minimum=1)
    depth = check_int("depth", depth, minimum=1)
    check_choice("padding", padding, ("valid", "same"))
    check_choice("upsampling", upsampling, ("transpose", "bilinear"))

    def double_conv(x, width, name):
        for i in (1, 2):
            if batch_norm:
                x = ConvBNAct(width, 3, padding=padding, name=f"{name}_conv{i}")(x)
            else:
                x = keras.layers.Conv2D(
                    width, 3, padding=padding, activation="relu", name=f"{name}_conv{i}"
                )(x)
        return x

    normalize = normalization_layer(normalization, input_shape)
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
