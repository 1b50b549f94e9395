"""Private building blocks shared by the GloRe and GINet graph-reasoning layers."""

import keras
from keras import ops

from kseg._common import check_choice, check_rank

GCN_RELU_POSITIONS = ("before_state_conv", "after_state_conv")


def graph_dtype(layer):
    """The dtype a layer's graph projections compute in.

    float32 under float32 and 16-bit (mixed) policies, float64 when the layer
    itself runs in float64 (used by high-precision tests).
    """
    return "float64" if layer.compute_dtype == "float64" else "float32"


def fresh_initializer(initializer):
    """A new instance of `initializer`.

    A Keras random initializer created without a seed draws one seed at
    construction and reuses it on every call, so sharing one instance between
    weights of equal shape would give them equal values.
    """
    return keras.initializers.get(keras.initializers.serialize(initializer))


class NodeStateGCN(keras.layers.Layer):
    """Two-step graph convolution over a set of nodes, in the GloRe form.

    `G(X) = W_s · ReLU((I + A) X + a)` for `X` of shape `(B, N, S)`: the node
    mixing `A` (N x N, with one bias `a[m]` per node broadcast over the states)
    acts on the node axis and adds the identity; the state update `W_s`
    (S x S, no bias) acts on the state axis. This is the `GCN` class of the
    official GloRe code (facebookresearch/GloRe,
    `network/global_reasoning_unit.py`) and of PaddleSeg's GINet. The
    PaddleSeg GloRe port applies the ReLU after the state update instead
    (`relu_position="after_state_conv"`).

    `N` and `S` are taken from the input shape at build time. Weights follow
    torch's layout after transposition: `node_kernel[m, n]` is the node conv
    weight `(N, N, 1)` as is, `state_kernel` is the state conv weight
    `(S, S, 1)` transposed to `(S_in, S_out)`.
    """

    def __init__(
        self,
        relu_position="before_state_conv",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.relu_position = check_choice("gcn_relu_position", relu_position, GCN_RELU_POSITIONS)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        num_nodes, num_states = int(input_shape[-2]), int(input_shape[-1])
        self.node_kernel = self.add_weight(
            name="node_kernel",
            shape=(num_nodes, num_nodes),
            initializer=fresh_initializer(self.kernel_initializer),
        )
        self.node_bias = self.add_weight(
            name="node_bias",
            shape=(num_nodes,),
            initializer=fresh_initializer(self.bias_initializer),
        )
        self.state_kernel = self.add_weight(
            name="state_kernel",
            shape=(num_states, num_states),
            initializer=fresh_initializer(self.kernel_initializer),
        )

    def call(self, inputs):
        # Mix nodes: h[b, m, s] = sum_n A[m, n] x[b, n, s] + a[m] + x[b, m, s].
        h = ops.einsum("mn,bns->bms", self.node_kernel, inputs)
        h = h + ops.reshape(self.node_bias, (1, -1, 1)) + inputs
        if self.relu_position == "before_state_conv":
            return ops.matmul(ops.relu(h), self.state_kernel)
        return ops.relu(ops.matmul(h, self.state_kernel))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "relu_position": self.relu_position,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }


def input_channels(layer, input_shape):
    """The (known) channel count of a rank-4 input of `layer`, by its `data_format`."""
    check_rank("inputs", input_shape, 4)
    axis = 1 if layer.data_format == "channels_first" else -1
    if input_shape[axis] is None:
        raise ValueError(
            f"{type(layer).__name__} needs a known number of input channels. "
            f"Received: input_shape={tuple(input_shape)}"
        )
    return int(input_shape[axis])
