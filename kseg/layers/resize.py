"""Resizing layers with PyTorch `F.interpolate` semantics."""

import keras

from kseg._common import standardize_data_format
from kseg.ops._utils import spatial_axes, static_or_dynamic_dims
from kseg.ops.resize import normalize_resize_args, output_length
from kseg.ops.resize import resize as resize_op


def _out_dtype(layer, x):
    """Float inputs come out in the layer's compute dtype (autocast), others unchanged."""
    dtype = keras.backend.standardize_dtype(x.dtype)
    return layer.compute_dtype if "float" in dtype and layer.autocast else dtype


@keras.saving.register_keras_serializable(package="kseg")
class Resize2D(keras.layers.Layer):
    """Resizes feature maps or label maps to a fixed size or by a scale factor.

    Exactly PyTorch `F.interpolate` (see `kseg.ops.resize` and SPEC section 4.9):
    bilinear with `align_corners=True` (DeepLab v1/v2 style, `nn.UpsamplingBilinear2d`)
    or `False` (half-pixel, `nn.Upsample`), torch `"nearest"` (for label maps) or
    `"nearest-exact"` (what Keras calls "nearest"). With `scale`, the source coordinate
    uses `1 / scale` and the output size is `floor(n * scale)`, as in torch.

    Args:
        size: int or `(height, width)` of the output, or `None`. Exactly one of `size`
            and `scale` must be set.
        scale: number or `(scale_h, scale_w)`, each `> 0`, or `None`.
        interpolation: `"bilinear"` (default), `"nearest"` or `"nearest-exact"`.
        align_corners: bool, default `False`; only with `"bilinear"`.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        **kwargs: base `Layer` arguments.

    Input shape:
        4D tensor `(batch, height, width, channels)` for `"channels_last"`, or
        `(batch, channels, height, width)` for `"channels_first"`. Integer inputs need a
        nearest mode and keep their dtype.

    Output shape:
        The same with the new spatial size.

    Example:

    >>> x = np.random.rand(2, 41, 41, 21).astype("float32")
    >>> kseg.layers.Resize2D(scale=8, align_corners=True)(x).shape
    (2, 328, 328, 21)
    """

    def __init__(
        self,
        size=None,
        scale=None,
        interpolation="bilinear",
        align_corners=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        size, scale, interpolation, align_corners = normalize_resize_args(
            size, scale, interpolation, align_corners
        )
        if size is not None and not all(isinstance(v, int) for v in size):
            raise TypeError(
                "Expected `size` to hold Python integers; use `ResizeLike` to resize to "
                f"another tensor's size. Received: size={size!r}"
            )
        self.size = size
        self.scale = scale
        self.interpolation = interpolation
        self.align_corners = align_corners
        self.data_format = standardize_data_format(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        return resize_op(
            inputs,
            size=self.size,
            scale=self.scale,
            interpolation=self.interpolation,
            align_corners=self.align_corners,
            data_format=self.data_format,
        )

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        for i, axis in enumerate(spatial_axes(self.data_format)):
            shape[axis] = output_length(
                shape[axis],
                None if self.size is None else self.size[i],
                None if self.scale is None else self.scale[i],
            )
        return tuple(shape)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(self.compute_output_shape(tuple(inputs.shape)), dtype=_out_dtype(self, inputs))

    def get_config(self):
        return {
            **super().get_config(),
            "size": None if self.size is None else list(self.size),
            "scale": None if self.scale is None else list(self.scale),
            "interpolation": self.interpolation,
            "align_corners": self.align_corners,
            "data_format": self.data_format,
        }


@keras.saving.register_keras_serializable(package="kseg")
class ResizeLike(keras.layers.Layer):
    """Resizes `x` to the spatial size of a reference tensor, read at run time.

    Decoders use it to align maps of any input size (odd sizes, sizes not divisible by
    the output stride) without knowing strides: `ResizeLike()([logits, image])`. The
    interpolation is exactly PyTorch `F.interpolate(x, size=reference.shape[-2:])`
    (see `kseg.ops.resize`, SPEC section 4.9).

    Args:
        interpolation: `"bilinear"` (default), `"nearest"` or `"nearest-exact"`.
        align_corners: bool, default `False`; only with `"bilinear"`.
        data_format: `"channels_last"` or `"channels_first"` (of both inputs); defaults
            to `keras.config.image_data_format()`.
        **kwargs: base `Layer` arguments.

    Input shape:
        A list `[x, reference]` of 4D tensors; only the spatial size of `reference` is
        used (its channels and dtype do not matter).

    Output shape:
        `x`'s batch and channels with `reference`'s height and width.

    Example:

    >>> x = np.random.rand(2, 9, 9, 21).astype("float32")
    >>> image = np.random.rand(2, 65, 63, 3).astype("float32")
    >>> kseg.layers.ResizeLike(align_corners=True)([x, image]).shape
    (2, 65, 63, 21)
    """

    def __init__(self, interpolation="bilinear", align_corners=False, data_format=None, **kwargs):
        super().__init__(**kwargs)
        _, _, interpolation, align_corners = normalize_resize_args(
            1, None, interpolation, align_corners
        )
        self.interpolation = interpolation
        self.align_corners = align_corners
        self.data_format = standardize_data_format(data_format)

    def _split(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(
                "Expected `ResizeLike` to be called on a list [x, reference]. "
                f"Received: inputs={inputs!r}"
            )
        return inputs

    def call(self, inputs):
        x, reference = self._split(inputs)
        size = static_or_dynamic_dims(reference, spatial_axes(self.data_format))
        return resize_op(
            x,
            size=size,
            interpolation=self.interpolation,
            align_corners=self.align_corners,
            data_format=self.data_format,
        )

    def compute_output_shape(self, input_shape):
        x_shape, ref_shape = self._split(input_shape)
        if len(x_shape) != 4 or len(ref_shape) != 4:
            raise ValueError(
                "Expected `x` and `reference` to have rank 4. "
                f"Received: input_shape={input_shape!r}"
            )
        shape = list(x_shape)
        for axis in spatial_axes(self.data_format):
            shape[axis] = ref_shape[axis]
        return tuple(shape)

    def compute_output_spec(self, inputs):
        x, _ = self._split(inputs)
        shape = self.compute_output_shape([tuple(t.shape) for t in inputs])
        return keras.KerasTensor(shape, dtype=_out_dtype(self, x))

    def get_config(self):
        return {
            **super().get_config(),
            "interpolation": self.interpolation,
            "align_corners": self.align_corners,
            "data_format": self.data_format,
        }
