"""Global reasoning unit (GloRe)."""

import keras
from keras import ops

from kseg._common import (
    check_choice,
    check_float,
    check_int,
    from_channels_last,
    standardize_data_format,
    to_channels_last,
)
from kseg.layers._graph import (
    GCN_RELU_POSITIONS,
    NodeStateGCN,
    fresh_initializer,
    graph_dtype,
    input_channels,
)


@keras.saving.register_keras_serializable(package="kseg")
class GloReUnit(keras.layers.Layer):
    """Global reasoning unit: project pixels to a graph, reason, project back.

    Reference: Chen et al., "Graph-Based Global Reasoning Networks", CVPR 2019.
    The computation follows the official code (facebookresearch/GloRe,
    `network/global_reasoning_unit.py`), in channels_last form:

    1. `Xs = conv_state(X)` (1x1, C -> S, with bias) and
       `Bp = conv_proj(X)` (1x1, C -> N, with bias); no softmax on `Bp`.
    2. `V = Bp^T Xs` of shape `(B, N, S)`, times `1/L` (L = H*W) when
       `normalize=True`.
    3. `Z = W_s · ReLU((I + A) V + a)`: node mixing with a per-node bias, then
       a state update without bias.
    4. `Y = Bp Z` of shape `(B, L, S)` (no `1/L`).
    5. `out = X + BN(conv_extend(Y))` with `conv_extend` 1x1, S -> C, no bias.

    Under mixed precision the whole unit up to and including the BN computes
    in float32, and only the residual sum is cast to the layer's compute
    dtype. Without `1/L`, `Y` grows with the number of pixels: on ReLU-like
    512-channel features `max|Y|` is about 1e6 at 64x128, far beyond
    float16's 65504, and so is `conv_extend(Y)`; the BN is the first point
    where the values are bounded again (normalised by their statistics).

    Initialisation follows the official code: xavier-uniform kernels, zero
    biases, and the gamma of the final BN (the "blocker") set to zero, so a
    fresh unit is the identity, in training and in inference.

    Args:
        num_state: int or None, number of state channels `S` (the paper's
            C'). Default None: `C // 2`, computed from the input channels at
            build time, the official `num_s = 2 * num_mid` with
            `num_mid = C / 4`.
        num_node: int or None, number of graph nodes `N`. Default None:
            `max(1, C // 4)`, the official `num_n = num_mid`.
        normalize: bool, multiply `V` by `1/L`. Default False (official
            default; the official docstring recommends True when training and
            test sizes differ).
        gcn_relu_position: `"before_state_conv"` (default, official:
            `W_s · ReLU(h)`) or `"after_state_conv"` (PaddleSeg `glore.py`:
            `ReLU(W_s · h)`).
        zero_init_bn: bool, initialise the final BN's gamma to zero (official)
            so the unit starts as the identity. Default True; PaddleSeg uses
            False (gamma 1).
        bn_epsilon: float, epsilon of the final BN. Default 1e-4 (official).
        bn_momentum: float, Keras momentum of the final BN. Default 0.9
            (torch momentum 0.1).
        kernel_initializer: initializer of every kernel. Default
            `"glorot_uniform"` (official xavier-uniform, gain 1).
        bias_initializer: initializer of every bias. Default `"zeros"`.
        data_format: `"channels_last"` or `"channels_first"`. Default
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        4D tensor `(batch, height, width, channels)` for channels_last,
        `(batch, channels, height, width)` for channels_first.

    Output shape:
        Same as the input.

    Example:

    >>> x = np.random.rand(2, 16, 16, 64).astype("float32")
    >>> y = kseg.layers.GloReUnit()(x)   # S = 32 states, N = 16 nodes
    >>> y.shape
    (2, 16, 16, 64)
    """

    def __init__(
        self,
        num_state=None,
        num_node=None,
        normalize=False,
        gcn_relu_position="before_state_conv",
        zero_init_bn=True,
        bn_epsilon=1e-4,
        bn_momentum=0.9,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_state = None if num_state is None else check_int("num_state", num_state, 1)
        self.num_node = None if num_node is None else check_int("num_node", num_node, 1)
        self.normalize = bool(normalize)
        self.gcn_relu_position = check_choice(
            "gcn_relu_position", gcn_relu_position, GCN_RELU_POSITIONS
        )
        self.zero_init_bn = bool(zero_init_bn)
        self.bn_epsilon = check_float("bn_epsilon", bn_epsilon, minimum=0.0, inclusive=False)
        self.bn_momentum = check_float("bn_momentum", bn_momentum, minimum=0.0, maximum=1.0)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.data_format = standardize_data_format(data_format)

        proj_dtype = graph_dtype(self)
        # The 1x1 convolutions' widths may depend on the input channels, so
        # they are created in `build`; the remaining children are created here.
        self.gcn = NodeStateGCN(
            relu_position=self.gcn_relu_position,
            kernel_initializer=fresh_initializer(self.kernel_initializer),
            bias_initializer=fresh_initializer(self.bias_initializer),
            dtype=proj_dtype,
            name="gcn",
        )
        # conv_extend and the BN stay in float32 too: see the class docstring.
        self.blocker = keras.layers.BatchNormalization(
            axis=-1,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            gamma_initializer="zeros" if self.zero_init_bn else "ones",
            dtype=proj_dtype,
            name="blocker",
        )

    def build(self, input_shape):
        channels = input_channels(self, input_shape)
        num_state = self.num_state if self.num_state is not None else max(1, channels // 2)
        num_node = self.num_node if self.num_node is not None else max(1, channels // 4)
        proj_dtype = graph_dtype(self)
        self.conv_state = keras.layers.Dense(
            num_state,
            kernel_initializer=fresh_initializer(self.kernel_initializer),
            bias_initializer=fresh_initializer(self.bias_initializer),
            dtype=proj_dtype,
            name="conv_state",
        )
        self.conv_proj = keras.layers.Dense(
            num_node,
            kernel_initializer=fresh_initializer(self.kernel_initializer),
            bias_initializer=fresh_initializer(self.bias_initializer),
            dtype=proj_dtype,
            name="conv_proj",
        )
        self.conv_extend = keras.layers.Dense(
            channels,
            use_bias=False,
            kernel_initializer=fresh_initializer(self.kernel_initializer),
            dtype=proj_dtype,
            name="conv_extend",
        )
        self.conv_state.build((None, None, None, channels))
        self.conv_proj.build((None, None, None, channels))
        self.gcn.build((None, num_node, num_state))
        self.conv_extend.build((None, None, None, num_state))
        self.blocker.build((None, None, None, channels))

    def call(self, inputs, training=None):
        x = to_channels_last(inputs, self.data_format)
        proj_dtype = self.conv_state.compute_dtype
        xf = ops.cast(x, proj_dtype)
        states = self.conv_state(xf)  # (B, H, W, S)
        proj = self.conv_proj(xf)  # (B, H, W, N)
        nodes = ops.einsum("bhwn,bhws->bns", proj, states)  # V = Bp^T Xs
        if self.normalize:
            shape = ops.shape(x)
            nodes = nodes / ops.cast(shape[1] * shape[2], proj_dtype)
        nodes = self.gcn(nodes)
        y = ops.einsum("bhwn,bns->bhws", proj, nodes)  # Y = Bp Z, grows with H*W
        y = self.blocker(self.conv_extend(y), training=training)  # bounded again
        out = ops.cast(xf + y, self.compute_dtype)
        return from_channels_last(out, self.data_format)

    def compute_output_shape(self, input_shape):
        input_channels(self, input_shape)
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "num_state": self.num_state,
            "num_node": self.num_node,
            "normalize": self.normalize,
            "gcn_relu_position": self.gcn_relu_position,
            "zero_init_bn": self.zero_init_bn,
            "bn_epsilon": self.bn_epsilon,
            "bn_momentum": self.bn_momentum,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "data_format": self.data_format,
        }
