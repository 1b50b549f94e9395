"""Graph convolutional unit (GCU, 'Beyond Grids')."""

import keras
import numpy as np
from keras import ops

from kseg._common import (
    check_float,
    check_int,
    from_channels_last,
    standardize_data_format,
    to_channels_last,
)
from kseg.layers._graph import fresh_initializer, graph_dtype, input_channels

# Lower bound of sigma; keeps the logits finite when a learned scale shrinks.
_MIN_SIGMA = 1e-3


@keras.saving.register_keras_serializable(package="kseg")
class GraphConvolutionalUnit(keras.layers.Layer):
    """Graph convolutional unit: soft-assign pixels to vertices, convolve, reproject.

    Reference: Li and Gupta, "Beyond Grids: Learning Graph Representations for
    Visual Recognition", NeurIPS 2018. With `X` of shape `(B, L, d)`
    (L = H*W), anchors `W` `(d, V)`, per-dimension scales `sigma` `(d, V)`
    and the graph-convolution kernel `W_g` `(d, filters)`:

    1. `Q = softmax_k(-1/2 ||(x_i - w_k) / sigma_k||^2 / temperature)`,
       `(B, L, V)`; each row sums to 1.
    2. `z'_k = (sum_i q_ik (x_i - w_k) / sigma_k) / sum_i q_ik`,
       `z_k = z'_k / ||z'_k||`; `Z` has shape `(B, d, V)`.
    3. `A = Z^T Z` `(B, V, V)`: cosine similarities, `A_kk = 1`.
    4. `Z~ = ReLU(A Z^T W_g)` `(B, V, filters)`.
    5. `X~ = Q Z~`, reshaped to `(B, H, W, filters)`.

    The layer evaluates the expanded form, which never builds a
    `(B, L, d, V)` tensor: `logits = -1/2 [(X*X) P - 2 X (W*P) + sum_d W*W*P]`
    with `P = 1/sigma^2`, and `z'_k = (M_k / (n_k + eps) - w_k) / sigma_k` with
    `M = Q^T X`, `n_k = sum_i q_ik`. The norm is `sqrt(sum z'^2 + eps^2)`,
    whose gradient stays finite at zero. The whole unit computes in float32
    under mixed precision (its logits are large and the softmax is delicate)
    and returns the layer's compute dtype.

    `sigma` is stored as `log_sigma` (so it stays positive) and used as
    `max(exp(log_sigma), 1e-3)`. The paper initialises `W` and `sigma` by
    k-means over backbone features; here that is an explicit step,
    `initialize_from_features` or `set_anchors`, and by default `W` is drawn
    from N(0, 0.01^2) and `sigma` is 1.

    Args:
        num_vertices: int, number of graph vertices `V` (the paper uses 2, 4,
            8 and 32).
        filters: int, number of output channels (`d_out`).
        temperature: float > 0, divides the assignment logits. Default 1.0
            (the paper's formulation).
        epsilon: float >= 0, added to the vertex masses `n_k` and inside the
            vertex-feature norm. Default 1e-6.
        anchor_initializer: initializer of the anchors `W`. Default
            `RandomNormal(stddev=0.01)`.
        kernel_initializer: initializer of `W_g`. Default `"glorot_uniform"`.
        data_format: `"channels_last"` or `"channels_first"`. Default
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        4D tensor `(batch, height, width, d)` for channels_last,
        `(batch, d, height, width)` for channels_first.

    Output shape:
        4D tensor `(batch, height, width, filters)` for channels_last,
        `(batch, filters, height, width)` for channels_first.

    Example:

    >>> x = np.random.rand(2, 17, 17, 32).astype("float32")
    >>> gcu = kseg.layers.GraphConvolutionalUnit(num_vertices=8, filters=16)
    >>> gcu(x).shape
    (2, 17, 17, 16)
    >>> q, z, a = gcu.graph(x)   # (2, 289, 8), (2, 32, 8), (2, 8, 8)
    """

    def __init__(
        self,
        num_vertices,
        filters,
        temperature=1.0,
        epsilon=1e-6,
        anchor_initializer=None,
        kernel_initializer="glorot_uniform",
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_vertices = check_int("num_vertices", num_vertices, 1)
        self.filters = check_int("filters", filters, 1)
        self.temperature = check_float("temperature", temperature, minimum=0.0, inclusive=False)
        self.epsilon = check_float("epsilon", epsilon, minimum=0.0)
        if anchor_initializer is None:
            anchor_initializer = keras.initializers.RandomNormal(stddev=0.01)
        self.anchor_initializer = keras.initializers.get(anchor_initializer)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.data_format = standardize_data_format(data_format)

    def build(self, input_shape):
        channels = input_channels(self, input_shape)
        dtype = graph_dtype(self)
        # autocast=False: the unit computes in float32 even under mixed precision.
        self.anchors = self.add_weight(
            name="anchors",
            shape=(channels, self.num_vertices),
            initializer=fresh_initializer(self.anchor_initializer),
            dtype=dtype,
            autocast=False,
        )
        self.log_sigma = self.add_weight(
            name="log_sigma",
            shape=(channels, self.num_vertices),
            initializer="zeros",
            dtype=dtype,
            autocast=False,
        )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(channels, self.filters),
            initializer=fresh_initializer(self.kernel_initializer),
            dtype=dtype,
            autocast=False,
        )

    def _sigma(self):
        return ops.maximum(ops.exp(self.log_sigma), _MIN_SIGMA)

    def _graph(self, x):
        """`Q` `(B, H, W, V)`, `Z` as rows `(B, V, d)` and `A` `(B, V, V)` for channels_last `x`."""
        dtype = self.anchors.dtype
        x = ops.cast(x, dtype)
        anchors = ops.convert_to_tensor(self.anchors)
        sigma = self._sigma()
        precision = 1.0 / ops.square(sigma)  # P, (d, V)
        sq_dist = (
            ops.matmul(ops.square(x), precision)
            - 2.0 * ops.matmul(x, anchors * precision)
            + ops.sum(ops.square(anchors) * precision, axis=0)
        )
        logits = -0.5 * sq_dist / self.temperature
        q = ops.softmax(logits, axis=-1)  # subtracts the row maximum
        mass = ops.sum(q, axis=(1, 2))  # n, (B, V)
        moments = ops.einsum("bhwv,bhwd->bvd", q, x)  # M = Q^T X
        means = moments / (mass[:, :, None] + self.epsilon)
        z = (means - ops.transpose(anchors)[None]) / ops.transpose(sigma)[None]
        norm = ops.sqrt(ops.sum(ops.square(z), axis=-1, keepdims=True) + self.epsilon**2)
        z = z / norm  # (B, V, d), unit rows
        adjacency = ops.einsum("bvd,bud->bvu", z, z)
        return q, z, adjacency

    def call(self, inputs):
        x = to_channels_last(inputs, self.data_format)
        q, z, adjacency = self._graph(x)
        vertices = ops.relu(ops.matmul(ops.matmul(adjacency, z), self.kernel))  # (B, V, out)
        out = ops.einsum("bhwv,bvo->bhwo", q, vertices)  # X~ = Q Z~
        out = ops.cast(out, self.compute_dtype)
        return from_channels_last(out, self.data_format)

    def graph(self, inputs):
        """Returns the graph the unit builds for `inputs`.

        Args:
            inputs: a batch in the layer's data format.

        Returns:
            `(Q, Z, A)`: the soft assignment `Q` `(B, L, V)` with pixels
            flattened row-major over `(H, W)`, the unit-norm vertex features
            `Z` `(B, d, V)`, and the adjacency `A = Z^T Z` `(B, V, V)`, all
            in float32 (float64 for a float64 layer).
        """
        if not self.built:
            self.build(tuple(inputs.shape))
        x = to_channels_last(ops.convert_to_tensor(inputs), self.data_format)
        q, z, adjacency = self._graph(x)
        shape = ops.shape(q)
        q = ops.reshape(q, (shape[0], shape[1] * shape[2], shape[3]))
        return q, ops.transpose(z, (0, 2, 1)), adjacency

    def set_anchors(self, means, stds):
        """Sets the anchors `W` and the scales `sigma`, e.g. from a clustering.

        Args:
            means: array `(V, d)`, one anchor (cluster mean) per vertex.
            stds: array `(V, d)` of per-dimension standard deviations (not
                variances), clipped below at 1e-3.
        """
        if not self.built:
            raise ValueError(
                "Build the layer (call it once or call `build`) before `set_anchors`. "
                "Received: layer.built=False"
            )
        channels = int(self.anchors.shape[0])
        expected = (self.num_vertices, channels)
        means = np.asarray(means, dtype="float64")
        stds = np.asarray(stds, dtype="float64")
        for name, value in (("means", means), ("stds", stds)):
            if value.shape != expected:
                raise ValueError(
                    f"Expected `{name}` of shape (num_vertices, channels)={expected}. "
                    f"Received: {name}.shape={value.shape}"
                )
        self.anchors.assign(means.T.astype(self.anchors.dtype))
        log_sigma = np.log(np.maximum(stds, _MIN_SIGMA)).T
        self.log_sigma.assign(log_sigma.astype(self.log_sigma.dtype))

    def initialize_from_features(self, features, max_iterations=20, seed=0):
        """Initialises anchors and scales by k-means over feature vectors.

        The paper's initialisation: cluster pixel features of a pretrained
        backbone into `V` clusters, set each anchor to a cluster mean and each
        scale to the per-dimension within-cluster standard deviation (plus a
        small epsilon). Runs Lloyd's algorithm in NumPy, started from `V`
        distinct randomly chosen feature vectors; an empty cluster keeps its
        previous mean and gets unit scale.

        Args:
            features: array `(..., d)` of feature vectors in channels_last
                layout (e.g. `(B, H, W, d)` backbone maps); at least `V` of
                them.
            max_iterations: int, maximum number of Lloyd iterations.
                Default 20.
            seed: int, seed of the initial choice of centres. Default 0.

        Returns:
            `(means, stds)`, both `(V, d)` NumPy arrays, as set on the layer.
        """
        features = np.asarray(features, dtype="float64")
        channels = features.shape[-1]
        if not self.built:
            self.build((None, None, None, channels))
        points = features.reshape(-1, channels)
        if points.shape[0] < self.num_vertices:
            raise ValueError(
                f"Expected at least num_vertices={self.num_vertices} feature vectors. "
                f"Received: features.shape={features.shape}"
            )
        max_iterations = check_int("max_iterations", max_iterations, 1)
        rng = np.random.default_rng(seed)
        means = points[rng.choice(points.shape[0], self.num_vertices, replace=False)]
        labels = None
        for _ in range(max_iterations):
            dist = (
                np.sum(points**2, axis=1)[:, None]
                - 2.0 * points @ means.T
                + np.sum(means**2, axis=1)[None, :]
            )
            new_labels = np.argmin(dist, axis=1)
            if labels is not None and np.array_equal(new_labels, labels):
                break
            labels = new_labels
            for k in range(self.num_vertices):
                members = points[labels == k]
                if len(members):
                    means[k] = members.mean(axis=0)
        stds = np.ones_like(means)
        for k in range(self.num_vertices):
            members = points[labels == k]
            if len(members):
                stds[k] = np.sqrt(members.var(axis=0) + 1e-6)
        self.set_anchors(means, stds)
        return means, stds

    def compute_output_shape(self, input_shape):
        input_channels(self, input_shape)
        if self.data_format == "channels_first":
            return (input_shape[0], self.filters, input_shape[2], input_shape[3])
        return (input_shape[0], input_shape[1], input_shape[2], self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "num_vertices": self.num_vertices,
            "filters": self.filters,
            "temperature": self.temperature,
            "epsilon": self.epsilon,
            "anchor_initializer": keras.initializers.serialize(self.anchor_initializer),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "data_format": self.data_format,
        }
