"""Pooling and unpooling layers: adaptive, argmax, max-unpooling and torch-style padded pooling."""

import keras

from kseg._common import check_choice, normalize_tuple, standardize_data_format
from kseg.ops._utils import spatial_axes, static_or_dynamic_dims
from kseg.ops.pooling import (
    adaptive_average_pool,
    check_unpool_shapes,
    max_pool_with_argmax,
    max_unpool,
    normalize_pool_args,
    normalize_unpool_size,
    pool,
    pooled_length,
    torch_pool_length,
)


def _with_hw(shape, hw, data_format):
    shape = list(shape)
    for axis, v in zip(spatial_axes(data_format), hw):
        shape[axis] = v
    return tuple(shape)


def _check_rank4(name, shape):
    if len(shape) != 4:
        raise ValueError(f"Expected `{name}` to have rank 4. Received: {name}.shape={tuple(shape)}")


@keras.saving.register_keras_serializable(package="kseg")
class AdaptiveAveragePooling2D(keras.layers.Layer):
    """Average pooling to a fixed output grid with PyTorch's overlapping adaptive bins.

    Output cell `i` of `o` along an axis of length `n` averages input cells
    `[floor(i n / o), ceil((i + 1) n / o))`, exactly torch `adaptive_avg_pool2d`
    (SPEC section 4.10), as used by the PSPNet pyramid pooling module (Zhao et al.,
    "Pyramid Scene Parsing Network", CVPR 2017). Computed with two pooling matrices, so
    it is identical on every backend and works for any input size (also smaller than
    the output).

    Args:
        output_size: int or `(height, width)`, each `>= 1`.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        **kwargs: base `Layer` arguments.

    Input shape:
        4D float tensor.

    Output shape:
        4D tensor with spatial size `output_size`.

    Example:

    >>> x = np.random.rand(2, 65, 65, 16).astype("float32")
    >>> kseg.layers.AdaptiveAveragePooling2D(6)(x).shape
    (2, 6, 6, 16)
    """

    def __init__(self, output_size, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.output_size = normalize_tuple("output_size", output_size, 2, minimum=1)
        self.data_format = standardize_data_format(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        return adaptive_average_pool(inputs, self.output_size, data_format=self.data_format)

    def compute_output_shape(self, input_shape):
        return _with_hw(input_shape, self.output_size, self.data_format)

    def get_config(self):
        return {
            **super().get_config(),
            "output_size": list(self.output_size),
            "data_format": self.data_format,
        }


@keras.saving.register_keras_serializable(package="kseg")
class MaxPoolingWithArgmax2D(keras.layers.Layer):
    """Max pooling that also returns PyTorch-style argmax indices, for SegNet.

    Returns `(pooled, indices)`. `indices` (int32) holds the flat position `h * W + w`
    of each maximum inside its `(batch, channel)` plane of the input, with ties going to
    the first maximum in row-major window order: the same as torch
    `MaxPool2d(..., return_indices=True)` (Badrinarayanan et al., "SegNet", TPAMI 2017;
    SPEC section 4.8). Feed them to `MaxUnpooling2D`. See `kseg.ops.max_pool_with_argmax`
    for the `"same"` padding rule.

    Args:
        pool_size: int or pair, default 2.
        strides: int or pair, default 2.
        padding: `"valid"` (default, torch floor mode) or `"same"`.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        **kwargs: base `Layer` arguments.

    Input shape:
        4D tensor.

    Output shape:
        Two 4D tensors of the pooled shape: values (input dtype) and int32 indices.

    Example:

    >>> x = np.random.rand(2, 9, 8, 4).astype("float32")
    >>> pooled, indices = kseg.layers.MaxPoolingWithArgmax2D()(x)
    >>> pooled.shape, indices.shape
    ((2, 4, 4, 4), (2, 4, 4, 4))
    """

    def __init__(self, pool_size=2, strides=2, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = normalize_tuple("pool_size", pool_size, 2)
        self.strides = normalize_tuple("strides", strides, 2)
        self.padding = check_choice("padding", padding, ("valid", "same"))
        self.data_format = standardize_data_format(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        return max_pool_with_argmax(
            inputs, self.pool_size, self.strides, self.padding, data_format=self.data_format
        )

    def compute_output_shape(self, input_shape):
        hw = tuple(
            pooled_length(input_shape[a], k, s, self.padding)
            for a, k, s in zip(spatial_axes(self.data_format), self.pool_size, self.strides)
        )
        shape = _with_hw(input_shape, hw, self.data_format)
        return shape, shape

    def compute_output_spec(self, inputs):
        shape, _ = self.compute_output_shape(tuple(inputs.shape))
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        if "float" in dtype and self.autocast:
            dtype = self.compute_dtype
        return keras.KerasTensor(shape, dtype=dtype), keras.KerasTensor(shape, dtype="int32")

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": self.padding,
            "data_format": self.data_format,
        }


@keras.saving.register_keras_serializable(package="kseg")
class MaxUnpooling2D(keras.layers.Layer):
    """Puts values back at the argmax positions recorded by `MaxPoolingWithArgmax2D`.

    The output is zero except at the positions named by `indices`, exactly torch
    `MaxUnpool2d` (SegNet decoder, SPEC section 4.8). Call it as `layer([x, indices])`
    with a fixed `output_size`, or as `layer([x, indices, reference])` to take the size
    from the tensor that was pooled (read at run time, so odd and unknown sizes work:
    the row/column dropped by floor-mode pooling stays 0).

    Args:
        output_size: `(height, width)` or int, or `None` (default) to use the reference
            input's spatial size.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        **kwargs: base `Layer` arguments.

    Input shape:
        `[x, indices]` or `[x, indices, reference]`: `x` and `indices` of the same 4D
        shape; `reference` any 4D tensor of the wanted spatial size.

    Output shape:
        `x`'s batch and channels with spatial size `output_size` (or the reference's).

    Example:

    >>> x = np.random.rand(2, 9, 8, 4).astype("float32")
    >>> pooled, indices = kseg.layers.MaxPoolingWithArgmax2D()(x)
    >>> kseg.layers.MaxUnpooling2D()([pooled, indices, x]).shape
    (2, 9, 8, 4)
    """

    def __init__(self, output_size=None, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if output_size is not None:
            output_size = normalize_unpool_size(output_size)
        self.output_size = output_size
        self.data_format = standardize_data_format(data_format)

    def _split(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) not in (2, 3):
            raise ValueError(
                "Expected `MaxUnpooling2D` to be called on [x, indices] or "
                f"[x, indices, reference]. Received: inputs={inputs!r}"
            )
        if len(inputs) == 2 and self.output_size is None:
            raise ValueError(
                "`MaxUnpooling2D` needs `output_size` or a third input whose spatial size "
                "is used: layer([x, indices, reference]). Received: output_size=None"
            )
        return inputs

    def _size(self, inputs, static=False):
        if len(inputs) == 3:
            ref = inputs[2]
            axes = spatial_axes(self.data_format)
            if static:
                return tuple(ref[a] for a in axes)
            return static_or_dynamic_dims(ref, axes)
        return self.output_size

    def call(self, inputs):
        inputs = self._split(inputs)
        return max_unpool(
            inputs[0], inputs[1], self._size(inputs), data_format=self.data_format
        )

    def compute_output_shape(self, input_shape):
        input_shape = self._split(input_shape)
        for name, shape in zip(("x", "indices", "reference"), input_shape):
            _check_rank4(name, shape)
        size = self._size(input_shape, static=True)
        check_unpool_shapes(
            input_shape[0], input_shape[1], [o if o is not None else 1 << 30 for o in size], self.data_format
        )
        return _with_hw(input_shape[0], size, self.data_format)

    def compute_output_spec(self, inputs):
        shape = self.compute_output_shape([tuple(t.shape) for t in self._split(inputs)])
        dtype = keras.backend.standardize_dtype(inputs[0].dtype)
        if "float" in dtype and self.autocast:
            dtype = self.compute_dtype
        return keras.KerasTensor(shape, dtype=dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "output_size": None if self.output_size is None else list(self.output_size),
            "data_format": self.data_format,
        }


@keras.saving.register_keras_serializable(package="kseg")
class Pooling2D(keras.layers.Layer):
    """Max or average pooling with torch/Caffe symmetric padding and `ceil_mode`.

    Equals torch `nn.MaxPool2d(pool_size, strides, padding, ceil_mode=...)` and
    `nn.AvgPool2d(..., count_include_pad=...)`: the output length is
    `floor_or_ceil((n + 2p - k) / s) + 1`, a ceil-mode window that would start in the
    right padding is dropped, and average pooling counts padded cells by default. Keras'
    own `padding="same"` pools differ (asymmetric padding, padded cells not counted);
    this layer reproduces references such as DeepLab v1's `max_pool(3, 2, pad 1,
    ceil_mode=True)` and its average pool 3/1/1 (SPEC sections 4.5-4.7).

    Args:
        pool_size: int or pair.
        strides: int or pair; `None` (default) means `pool_size`.
        padding: int or pair `>= 0`, at most half the pool size; default 0.
        pool_mode: `"max"` (default) or `"average"`.
        ceil_mode: bool, default `False`.
        count_include_pad: bool, default `True` (average pooling only).
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        **kwargs: base `Layer` arguments.

    Input shape:
        4D tensor.

    Output shape:
        4D tensor with the torch output size.

    Example:

    >>> x = np.random.rand(1, 321, 321, 64).astype("float32")
    >>> kseg.layers.Pooling2D(3, 2, padding=1, ceil_mode=True)(x).shape
    (1, 161, 161, 64)
    """

    def __init__(
        self,
        pool_size,
        strides=None,
        padding=0,
        pool_mode="max",
        ceil_mode=False,
        count_include_pad=True,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        (
            self.pool_size,
            self.strides,
            self.padding,
            self.pool_mode,
            self.ceil_mode,
            self.count_include_pad,
        ) = normalize_pool_args(pool_size, strides, padding, pool_mode, ceil_mode, count_include_pad)
        self.data_format = standardize_data_format(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs):
        return pool(
            inputs,
            self.pool_size,
            self.strides,
            self.padding,
            self.pool_mode,
            self.ceil_mode,
            self.count_include_pad,
            data_format=self.data_format,
        )

    def compute_output_shape(self, input_shape):
        hw = tuple(
            torch_pool_length(input_shape[a], k, s, p, self.ceil_mode)
            for a, k, s, p in zip(
                spatial_axes(self.data_format), self.pool_size, self.strides, self.padding
            )
        )
        return _with_hw(input_shape, hw, self.data_format)

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": list(self.padding),
            "pool_mode": self.pool_mode,
            "ceil_mode": self.ceil_mode,
            "count_include_pad": self.count_include_pad,
            "data_format": self.data_format,
        }
