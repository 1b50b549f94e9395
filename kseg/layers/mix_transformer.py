"""The parts of the Mix Transformer (SegFormer's encoder): patch embedding, attention, Mix-FFN, DropPath."""

import keras
from keras import ops

from kseg._backend import erf
from kseg._common import (
    check_float,
    check_int,
    from_channels_last,
    standardize_data_format,
    to_channels_last,
)

#: The LayerNorm epsilon of every LayerNorm of Hugging Face's SegFormer (`transformers`
#: `modeling_segformer.py` builds them all as `nn.LayerNorm(hidden_size)`, torch's default
#: 1e-5; its config's `layer_norm_eps=1e-6` is read nowhere). mmsegmentation's MiT uses 1e-6.
LAYER_NORM_EPSILON = 1e-5


def _check_filters(layer, channels):
    if channels is not None and channels != layer.filters:
        raise ValueError(
            f"Expected the input of {type(layer).__name__} {layer.name!r} to have `filters` = "
            f"{layer.filters} channels. Received: {channels} channels"
        )


def _channels_last_shape(input_shape, data_format):
    shape = tuple(input_shape)
    if len(shape) != 4:
        raise ValueError(f"Expected a rank-4 input. Received: input_shape={shape}")
    if data_format == "channels_first":
        return (shape[0], shape[2], shape[3], shape[1])
    return shape


def _from_channels_last_shape(shape, data_format):
    if data_format == "channels_first":
        return (shape[0], shape[3], shape[1], shape[2])
    return tuple(shape)


@keras.saving.register_keras_serializable(package="kseg")
class OverlapPatchEmbedding(keras.layers.Layer):
    """Overlapping patch embedding: a strided convolution wider than its stride, then LayerNorm.

    Xie et al., "SegFormer: Simple and Efficient Design for Semantic
    Segmentation with Transformers" (NeurIPS 2021), section 3.1 "Overlapped
    Patch Merging": a `patch_size` x `patch_size` convolution with stride
    `strides` and zero padding `patch_size // 2` on every side (K=7, S=4, P=3
    for the first stage, K=3, S=2, P=1 for the others), followed by a
    LayerNorm over the channels (Hugging Face's
    `SegformerOverlapPatchEmbeddings`). The padding is explicit
    (`ZeroPadding2D` then a `"valid"` convolution), as in torch, so an input
    of `h` rows gives `floor((h + 2 * (patch_size // 2) - patch_size) /
    strides) + 1` rows on every backend (`ceil(h / strides)` for an odd
    `patch_size`).

    Sub-layers: `pad`, `conv` (with bias), `norm` (LayerNormalization).

    Args:
        filters: int, the embedding width (output channels).
        patch_size: int, the kernel size. Defaults to 7.
        strides: int, the stride. Defaults to 4.
        epsilon: float, the LayerNorm epsilon. Defaults to 1e-5 (Hugging Face's).
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        4D tensor `(batch, height, width, channels)` (channels_last) or
        `(batch, channels, height, width)`.

    Output shape:
        4D tensor with `filters` channels and the spatial sizes above.

    Example:

    >>> x = np.random.rand(2, 97, 131, 3).astype("float32")
    >>> kseg.layers.OverlapPatchEmbedding(32, 7, 4)(x).shape
    (2, 25, 33, 32)
    """

    def __init__(
        self,
        filters,
        patch_size=7,
        strides=4,
        epsilon=LAYER_NORM_EPSILON,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = check_int("filters", filters, 1)
        self.patch_size = check_int("patch_size", patch_size, 1)
        self.strides = check_int("strides", strides, 1)
        self.epsilon = check_float("epsilon", epsilon, 0.0, None, inclusive=False)
        self.data_format = standardize_data_format(data_format)
        self.pad = keras.layers.ZeroPadding2D(
            self.patch_size // 2,
            data_format="channels_last",
            name="pad",
            dtype=self.dtype_policy,
        )
        self.conv = keras.layers.Conv2D(
            self.filters,
            self.patch_size,
            strides=self.strides,
            padding="valid",
            data_format="channels_last",
            name="conv",
            dtype=self.dtype_policy,
        )
        self.norm = keras.layers.LayerNormalization(
            epsilon=self.epsilon, name="norm", dtype=self.dtype_policy
        )

    def build(self, input_shape):
        shape = _channels_last_shape(input_shape, self.data_format)
        self.pad.build(shape)
        shape = self.pad.compute_output_shape(shape)
        self.conv.build(shape)
        self.norm.build(self.conv.compute_output_shape(shape))

    def call(self, inputs):
        x = to_channels_last(inputs, self.data_format)
        x = self.norm(self.conv(self.pad(x)))
        return from_channels_last(x, self.data_format)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = _channels_last_shape(input_shape, self.data_format)
        pad = self.patch_size // 2

        def size(n):
            return None if n is None else (n + 2 * pad - self.patch_size) // self.strides + 1

        shape = (batch, size(height), size(width), self.filters)
        return _from_channels_last_shape(shape, self.data_format)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "patch_size": self.patch_size,
            "strides": self.strides,
            "epsilon": self.epsilon,
            "data_format": self.data_format,
        }


@keras.saving.register_keras_serializable(package="kseg")
class EfficientSelfAttention(keras.layers.Layer):
    """Multi-head self-attention whose keys and values come from a spatially reduced map.

    Xie et al., "SegFormer" (NeurIPS 2021), section 3.1 "Efficient
    Self-Attention", after the spatial-reduction attention of PVT (Wang et
    al., ICCV 2021): the queries are every position of the map; the keys and
    values are computed from the map reduced by `sr_ratio` with an
    `sr_ratio` x `sr_ratio` convolution of stride `sr_ratio` (no padding: a
    map of `h` rows gives `floor(h / sr_ratio)`) followed by a LayerNorm, so
    attention costs `O(N^2 / sr_ratio^2)` for `N` positions. With
    `sr_ratio=1` it is plain multi-head self-attention. Per head of width
    `d = filters / num_heads`: `softmax(q k^T / sqrt(d)) v`; the heads are
    concatenated and projected back to `filters` (Hugging Face's
    `SegformerAttention`, `transformers` 5.25).

    The attention logits and their softmax are computed in float32 whatever
    the dtype policy (queries and keys are cast before their product), so
    they stay finite under `mixed_float16`; the weights are cast back to the
    compute dtype before they average the values. Where the reduced map has
    a single position (a map of fewer than `2 * sr_ratio` rows and columns:
    in MiT-B0 ... B5, images under about 60 pixels on a side) every query
    attends to that one key with weight exactly 1: the output no longer
    depends on `query` and `key`, which then get no gradient.

    Sub-layers: `query`, `key`, `value`, `output` (Dense, with bias), and for
    `sr_ratio > 1` `sr` (Conv2D, with bias) and `sr_norm` (LayerNormalization).

    Args:
        filters: int, the input and output width (a multiple of `num_heads`).
        num_heads: int, the number of heads. Defaults to 1.
        sr_ratio: int, the spatial reduction ratio of keys and values.
            Defaults to 1.
        epsilon: float, the epsilon of `sr_norm`. Defaults to 1e-5 (Hugging
            Face's).
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        4D tensor with `filters` channels; height and width at least
        `sr_ratio`.

    Output shape:
        Same as the input.

    Example:

    >>> x = np.random.rand(2, 25, 33, 32).astype("float32")
    >>> kseg.layers.EfficientSelfAttention(32, num_heads=1, sr_ratio=8)(x).shape
    (2, 25, 33, 32)
    """

    def __init__(
        self,
        filters,
        num_heads=1,
        sr_ratio=1,
        epsilon=LAYER_NORM_EPSILON,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = check_int("filters", filters, 1)
        self.num_heads = check_int("num_heads", num_heads, 1)
        self.sr_ratio = check_int("sr_ratio", sr_ratio, 1)
        self.epsilon = check_float("epsilon", epsilon, 0.0, None, inclusive=False)
        self.data_format = standardize_data_format(data_format)
        if self.filters % self.num_heads:
            raise ValueError(
                "Expected `filters` to be a multiple of `num_heads`. Received: "
                f"filters={self.filters}, num_heads={self.num_heads}"
            )
        self.head_size = self.filters // self.num_heads

        def dense(name):
            return keras.layers.Dense(self.filters, name=name, dtype=self.dtype_policy)

        self.query = dense("query")
        self.key = dense("key")
        self.value = dense("value")
        self.output_dense = dense("output")
        self.sr = None
        self.sr_norm = None
        if self.sr_ratio > 1:
            self.sr = keras.layers.Conv2D(
                self.filters,
                self.sr_ratio,
                strides=self.sr_ratio,
                padding="valid",
                data_format="channels_last",
                name="sr",
                dtype=self.dtype_policy,
            )
            self.sr_norm = keras.layers.LayerNormalization(
                epsilon=self.epsilon, name="sr_norm", dtype=self.dtype_policy
            )

    def build(self, input_shape):
        shape = _channels_last_shape(input_shape, self.data_format)
        _check_filters(self, shape[-1])
        self.query.build(shape)
        reduced = shape
        if self.sr is not None:
            self.sr.build(shape)
            reduced = self.sr.compute_output_shape(shape)
            self.sr_norm.build(reduced)
        self.key.build(reduced)
        self.value.build(reduced)
        self.output_dense.build(shape)

    def _whole_windows(self, x):
        """`x` cut to whole `sr_ratio` windows: the rows and columns the reduction reads.

        The strided "valid" convolution ignores the remainder anyway (torch's
        output size `floor(h / r)`); cut first, its output size is `h // r`
        in a form that jax2tf and jax2onnx can bound when they trace symbolic
        sizes (the uncut form `(h - r) // r + 1` could be negative for all they
        know, and the exports failed).
        """
        r = self.sr_ratio
        shape = ops.shape(x)
        rows, cols = (shape[1] // r) * r, (shape[2] // r) * r
        return ops.slice(x, (0, 0, 0, 0), (shape[0], rows, cols, shape[3]))

    def _heads(self, x):
        """`(B, h, w, C)` -> `(B, heads, h * w, d)`."""
        # The length written out, not -1: jax2tf cannot infer a -1 from symbolic sizes
        # (it cannot decide that the product of two reduced sizes is non-negative).
        shape = ops.shape(x)
        x = ops.reshape(x, (shape[0], shape[1] * shape[2], self.num_heads, self.head_size))
        return ops.transpose(x, (0, 2, 1, 3))

    def call(self, inputs):
        x = to_channels_last(inputs, self.data_format)
        batch, height, width = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        reduced = x if self.sr is None else self.sr_norm(self.sr(self._whole_windows(x)))
        query = self._heads(self.query(x))
        key = self._heads(self.key(reduced))
        value = self._heads(self.value(reduced))
        # Logits and softmax in float32 (see the class docstring).
        logits = ops.matmul(
            ops.cast(query, "float32"), ops.transpose(ops.cast(key, "float32"), (0, 1, 3, 2))
        )
        # Only a size known when the graph is built: an exported graph's sizes are
        # symbolic (jax2tf), and the softmax of one element is 1 anyway.
        if isinstance(key.shape[2], int) and key.shape[2] == 1:
            # One key and value (a map reduced to 1x1): the softmax is exactly 1
            # (and Keras warns about a softmax over one element).
            weights = ops.ones_like(logits)
        else:
            weights = ops.softmax(logits * (self.head_size**-0.5), axis=-1)
        y = ops.matmul(ops.cast(weights, value.dtype), value)
        y = ops.reshape(ops.transpose(y, (0, 2, 1, 3)), (batch, height, width, self.filters))
        return from_channels_last(self.output_dense(y), self.data_format)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "num_heads": self.num_heads,
            "sr_ratio": self.sr_ratio,
            "epsilon": self.epsilon,
            "data_format": self.data_format,
        }


def _gelu(x):
    """The exact GELU, `x / 2 * (1 + erf(x / sqrt(2)))` (torch's `nn.GELU()`).

    Written out rather than `ops.gelu(x, approximate=False)`: TensorFlow computes
    that with `erfc`, which tf2onnx's ONNX opsets cannot express, so an ONNX export
    from TensorFlow failed to load; `kseg._backend.erf` exports everywhere.
    """
    return ops.multiply(ops.multiply(x, 0.5), ops.add(1.0, erf(ops.multiply(x, 0.5**0.5))))


@keras.saving.register_keras_serializable(package="kseg")
class MixFFN(keras.layers.Layer):
    """Mix-FFN: a position-wise MLP with a 3x3 depthwise convolution before its activation.

    Xie et al., "SegFormer" (NeurIPS 2021), section 3.1, equation (3):
    `x_out = MLP(GELU(Conv3x3(MLP(x_in))))`: a linear layer to
    `int(filters * mlp_ratio)` channels, a 3x3 depthwise convolution (stride
    1, padding 1, with bias) that gives the encoder its positional
    information in place of position embeddings, the exact (erf) GELU, and a
    linear layer back to `filters` (Hugging Face's `SegformerMixMLP`). The
    residual connection around it belongs to the block, not to this layer.

    Sub-layers: `dense1`, `dwconv` (DepthwiseConv2D), `dense2`.

    Args:
        filters: int, the input and output width.
        mlp_ratio: number, the hidden width is `int(filters * mlp_ratio)`.
            Defaults to 4.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        4D tensor with `filters` channels.

    Output shape:
        Same as the input.

    Example:

    >>> x = np.random.rand(2, 25, 33, 32).astype("float32")
    >>> kseg.layers.MixFFN(32, mlp_ratio=4)(x).shape
    (2, 25, 33, 32)
    """

    def __init__(self, filters, mlp_ratio=4, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = check_int("filters", filters, 1)
        self.mlp_ratio = check_float("mlp_ratio", mlp_ratio, 0.0, None, inclusive=False)
        if self.mlp_ratio == int(self.mlp_ratio):
            self.mlp_ratio = int(self.mlp_ratio)
        self.hidden_filters = int(self.filters * self.mlp_ratio)
        if self.hidden_filters < 1:
            raise ValueError(
                "Expected `filters * mlp_ratio` to be at least 1. Received: "
                f"filters={self.filters}, mlp_ratio={self.mlp_ratio}"
            )
        self.data_format = standardize_data_format(data_format)
        self.dense1 = keras.layers.Dense(
            self.hidden_filters, name="dense1", dtype=self.dtype_policy
        )
        self.dwconv = keras.layers.DepthwiseConv2D(
            3, padding="same", data_format="channels_last", name="dwconv", dtype=self.dtype_policy
        )
        self.dense2 = keras.layers.Dense(self.filters, name="dense2", dtype=self.dtype_policy)

    def build(self, input_shape):
        shape = _channels_last_shape(input_shape, self.data_format)
        _check_filters(self, shape[-1])
        self.dense1.build(shape)
        hidden = (*shape[:3], self.hidden_filters)
        self.dwconv.build(hidden)
        self.dense2.build(hidden)

    def call(self, inputs):
        x = to_channels_last(inputs, self.data_format)
        x = _gelu(self.dwconv(self.dense1(x)))
        return from_channels_last(self.dense2(x), self.data_format)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "mlp_ratio": self.mlp_ratio,
            "data_format": self.data_format,
        }


@keras.saving.register_keras_serializable(package="kseg")
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops a residual branch for whole samples during training.

    Huang et al., "Deep Networks with Stochastic Depth" (ECCV 2016), in the
    per-sample form of timm's `drop_path` (and Hugging Face's
    `SegformerDropPath`): in training, each sample of the batch keeps its
    input with probability `1 - rate`, scaled by `1 / (1 - rate)`, and is
    zeroed otherwise, so the expectation is unchanged; outside training (and
    with `rate=0`) the layer is the identity. Apply it to a residual branch
    before the sum.

    Args:
        rate: float in [0, 1), the probability of dropping a sample's branch.
            Defaults to 0.
        seed: None or int, the seed of the random draws.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        Any tensor with the batch first.

    Output shape:
        Same as the input.

    Example:

    >>> x = np.ones((4, 2, 2, 3), "float32")
    >>> y = kseg.layers.DropPath(0.5, seed=0)(x, training=True)  # each sample 0 or 2
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = check_float("rate", rate, 0.0, 1.0)
        if self.rate >= 1.0:
            raise ValueError(f"Expected `rate` in [0, 1). Received: rate={rate}")
        if seed is not None:
            seed = check_int("seed", seed, 0)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        draw = keras.random.uniform(shape, seed=self.seed_generator, dtype="float32")
        scale = ops.floor(draw + keep) / keep
        return inputs * ops.cast(scale, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
