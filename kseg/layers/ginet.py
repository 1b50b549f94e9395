"""Graph interaction unit (GINet)."""

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
from kseg.layers._graph import NodeStateGCN, fresh_initializer, graph_dtype, input_channels

_DEFAULT_EMBEDDING_DIM = 300


@keras.saving.register_keras_serializable(package="kseg")
class GraphInteractionUnit(keras.layers.Layer):
    """Graph interaction (GI) unit: a visual graph and a class graph that reason together.

    Reference: Wu et al., "GINet: Graph Interaction Network for Scene
    Parsing", ECCV 2020. The dataflow follows PaddleSeg's port
    (`paddleseg/models/ginet.py`, `GlobalReasonUnit` with its word branch), in
    channels_last form, for `X` `(B, H, W, C)`, `L = H*W`, `K` classes, `N`
    visual nodes and `D` states:

    1. Word branch, once per call (it does not depend on the batch): the
       class embeddings `(K, E)` go through `Dense + BN + ReLU` stages
       (`embedding_mlp`, BN statistics over the K class rows) to `Wd`
       `(K, D)`, then `Wd' = GCN_word(Wd)` broadcast to `(B, K, D)`.
    2. `Bp = conv_theta(X)` (1x1, C -> N, bias), `Xr = conv_phi(X)` (1x1,
       C -> D, bias), `Vn = Bp^T Xr / L` `(B, N, D)`, `Vn' = GCN_vis(Vn)`.
       Both GCNs are the GloRe form `W_s · ReLU((I + A) X + a)`.
    3. Graph transfer (1x1 convs with bias): `E = (Wd' Wq)(Vn' Wk)^T`
       `(B, K, N)` without scaling; `att_vis = softmax over N`,
       `att_word = softmax over K`;
       `cls_msg = att_vis (Vn' Wvv)`, `vis_msg = att_word^T (Wd' Wvw)`.
    4. Gated residuals with per-node gates initialised to zero:
       `class_node = gamma_word[k] Wd' + cls_msg`,
       `Vnew = gamma_vis[n] vis_msg + Vn'`.
    5. `out = X + BN(extend(Bp Vnew))` with `extend` 1x1, D -> C, no bias.

    Everything up to the reprojection `Bp Vnew` computes in float32 under
    mixed precision; `extend` and the output BN follow the layer's policy.
    Kernels default to He-normal (Paddle's convolution default,
    `Normal(0, sqrt(2 / fan_in))`), biases to zero, the word MLP kernels to
    xavier-uniform (Paddle's `Linear` default).

    Args:
        num_classes: int, number of classes `K` (nodes of the class graph).
        class_embeddings: the class-name embeddings fed to the word branch.
            `None` (default) reproduces PaddleSeg, which never loads word
            vectors: a non-trainable zero table `(K, embedding_dim)`, so the
            class nodes differ only through the GCN's per-node bias and the
            visual messages. A `(K, E)` array (e.g. 300-d GloVe vectors of the
            class names) is stored as a non-trainable weight, and its values
            also in the config. `"learned"` gives a trainable table drawn
            from N(0, 0.02^2), a deviation from the reference for when no
            embeddings are at hand.
        embedding_dim: int or None, width `E` of the table for `None` and
            `"learned"`. Default None: 300, or the array's width.
        num_state: int >= 2, number of states `D`. Default 256.
        num_node: int, number of visual nodes `N`. Default 84.
        embedding_mlp: tuple of ints, widths of the word-branch stages; the
            last must equal `num_state`. Default `(128, 256)`.
        bn_epsilon: float, epsilon of every BN. Default 1e-5 (Paddle).
        bn_momentum: float, Keras momentum of every BN. Default 0.9 (Paddle
            0.9).
        kernel_initializer: initializer of the 1x1 conv and GCN kernels.
            Default `"he_normal"`.
        bias_initializer: initializer of their biases. Default `"zeros"`.
        data_format: `"channels_last"` or `"channels_first"`. Default
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        4D tensor `(batch, height, width, channels)` for channels_last,
        `(batch, channels, height, width)` for channels_first.

    Output shape:
        A tuple `(out, class_node)`: `out` has the input's shape;
        `class_node` is `(batch, num_classes, num_state)` in float32 for
        either data format (the reference's `(B, D, K)` transposed).

    Example:

    >>> x = np.random.rand(2, 16, 16, 64).astype("float32")
    >>> unit = kseg.layers.GraphInteractionUnit(
    ...     num_classes=21, num_state=32, num_node=12, embedding_mlp=(16, 32))
    >>> out, class_node = unit(x)
    >>> out.shape, class_node.shape
    ((2, 16, 16, 64), (2, 21, 32))
    """

    def __init__(
        self,
        num_classes,
        class_embeddings=None,
        embedding_dim=None,
        num_state=256,
        num_node=84,
        embedding_mlp=(128, 256),
        bn_epsilon=1e-5,
        bn_momentum=0.9,
        kernel_initializer="he_normal",
        bias_initializer="zeros",
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.num_state = check_int("num_state", num_state, 2)
        self.num_node = check_int("num_node", num_node, 1)
        if embedding_dim is not None:
            embedding_dim = check_int("embedding_dim", embedding_dim, 1)
        self._embedding_values = None
        if class_embeddings is None:
            self.embedding_mode = "zeros"
        elif isinstance(class_embeddings, str):
            if class_embeddings != "learned":
                raise ValueError(
                    "Expected `class_embeddings` to be None, a (num_classes, embedding_dim) "
                    f"array or 'learned'. Received: class_embeddings={class_embeddings!r}"
                )
            self.embedding_mode = "learned"
        else:
            values = np.asarray(class_embeddings, dtype="float32")
            if values.ndim != 2 or values.shape[0] != self.num_classes:
                raise ValueError(
                    "Expected `class_embeddings` of shape (num_classes, embedding_dim) with "
                    f"num_classes={self.num_classes}. "
                    f"Received: class_embeddings.shape={values.shape}"
                )
            if embedding_dim is not None and embedding_dim != values.shape[1]:
                raise ValueError(
                    "Expected `embedding_dim` to equal the width of `class_embeddings` "
                    f"({values.shape[1]}). Received: embedding_dim={embedding_dim}"
                )
            if not np.all(np.isfinite(values)):
                raise ValueError(
                    "Expected `class_embeddings` to hold finite values. "
                    "Received: class_embeddings with NaN or inf"
                )
            self.embedding_mode = "fixed"
            self._embedding_values = values
            embedding_dim = values.shape[1]
        self.embedding_dim = _DEFAULT_EMBEDDING_DIM if embedding_dim is None else embedding_dim
        if isinstance(embedding_mlp, int):
            embedding_mlp = (embedding_mlp,)
        if not isinstance(embedding_mlp, (list, tuple)) or not embedding_mlp:
            raise ValueError(
                "Expected `embedding_mlp` to be a non-empty tuple of widths. "
                f"Received: embedding_mlp={embedding_mlp!r}"
            )
        self.embedding_mlp = tuple(check_int("embedding_mlp", w, 1) for w in embedding_mlp)
        if self.embedding_mlp[-1] != self.num_state:
            raise ValueError(
                "Expected the last width of `embedding_mlp` to equal "
                f"num_state={self.num_state}. Received: embedding_mlp={self.embedding_mlp}"
            )
        self.bn_epsilon = check_float("bn_epsilon", bn_epsilon, minimum=0.0, inclusive=False)
        self.bn_momentum = check_float("bn_momentum", bn_momentum, minimum=0.0, maximum=1.0)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.data_format = standardize_data_format(data_format)

        proj = graph_dtype(self)
        self.word_dense = []
        self.word_bn = []
        for i, width in enumerate(self.embedding_mlp):
            self.word_dense.append(keras.layers.Dense(width, dtype=proj, name=f"word_dense_{i}"))
            self.word_bn.append(
                keras.layers.BatchNormalization(
                    axis=-1,
                    momentum=self.bn_momentum,
                    epsilon=self.bn_epsilon,
                    dtype=proj,
                    name=f"word_bn_{i}",
                )
            )
        self.conv_theta = self._pointwise(self.num_node, "conv_theta")
        self.conv_phi = self._pointwise(self.num_state, "conv_phi")
        self.gcn_word = self._gcn("gcn_word")
        self.gcn_vis = self._gcn("gcn_vis")
        self.query = self._pointwise(self.num_state // 2, "query")
        self.key = self._pointwise(self.num_state // 2, "key")
        self.value_vis = self._pointwise(self.num_state, "value_vis")
        self.value_word = self._pointwise(self.num_state, "value_word")
        self.bn = keras.layers.BatchNormalization(
            axis=-1,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            dtype=self.dtype_policy,
            name="bn",
        )

    def _pointwise(self, units, name):
        return keras.layers.Dense(
            units,
            kernel_initializer=fresh_initializer(self.kernel_initializer),
            bias_initializer=fresh_initializer(self.bias_initializer),
            dtype=graph_dtype(self),
            name=name,
        )

    def _gcn(self, name):
        return NodeStateGCN(
            relu_position="before_state_conv",
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            dtype=graph_dtype(self),
            name=name,
        )

    def build(self, input_shape):
        channels = input_channels(self, input_shape)
        proj = graph_dtype(self)
        k, n, d = self.num_classes, self.num_node, self.num_state
        if self.embedding_mode == "learned":
            initializer = keras.initializers.RandomNormal(stddev=0.02)
        else:
            initializer = "zeros"
        self.embeddings = self.add_weight(
            name="class_embeddings",
            shape=(k, self.embedding_dim),
            initializer=initializer,
            trainable=self.embedding_mode == "learned",
            dtype=proj,
            autocast=False,
        )
        if self._embedding_values is not None:
            self.embeddings.assign(self._embedding_values.astype(proj))
        self.gamma_word = self.add_weight(
            name="gamma_word", shape=(k,), initializer="zeros", dtype=proj, autocast=False
        )
        self.gamma_vis = self.add_weight(
            name="gamma_vis", shape=(n,), initializer="zeros", dtype=proj, autocast=False
        )
        width = self.embedding_dim
        for dense, bn in zip(self.word_dense, self.word_bn):
            dense.build((k, width))
            width = dense.units
            bn.build((k, width))
        self.conv_theta.build((None, None, None, channels))
        self.conv_phi.build((None, None, None, channels))
        self.gcn_word.build((None, k, d))
        self.gcn_vis.build((None, n, d))
        for layer in (self.query, self.key, self.value_vis, self.value_word):
            layer.build((None, None, d))
        self.extend = keras.layers.Dense(
            channels,
            use_bias=False,
            kernel_initializer=fresh_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="extend",
        )
        self.extend.build((None, None, None, d))
        self.bn.build((None, None, None, channels))

    def _forward(self, x, training):
        """All intermediate values for a channels_last input `x`."""
        proj = self.conv_theta.compute_dtype
        shape = ops.shape(x)
        xf = ops.cast(x, proj)

        # Word branch: once per call, BN over the K class rows.
        word = ops.convert_to_tensor(self.embeddings)
        for dense, bn in zip(self.word_dense, self.word_bn):
            word = ops.relu(bn(dense(word), training=training))
        word_gcn = self.gcn_word(word[None])  # (1, K, D)
        word_gcn = ops.broadcast_to(word_gcn, (shape[0], self.num_classes, self.num_state))

        # Visual graph.
        bp = self.conv_theta(xf)  # (B, H, W, N)
        xr = self.conv_phi(xf)  # (B, H, W, D)
        num_pixels = ops.cast(shape[1] * shape[2], proj)
        vis = ops.einsum("bhwn,bhwd->bnd", bp, xr) / num_pixels  # Vn = Bp^T Xr / L
        vis_gcn = self.gcn_vis(vis)

        # Graph transfer; E is (B, K, N).
        energy = ops.einsum("bkc,bnc->bkn", self.query(word_gcn), self.key(vis_gcn))
        att_vis = ops.softmax(energy, axis=-1)  # over visual nodes, per class
        att_word = ops.softmax(energy, axis=-2)  # over classes, per visual node
        cls_msg = ops.einsum("bkn,bnd->bkd", att_vis, self.value_vis(vis_gcn))
        vis_msg = ops.einsum("bkn,bkd->bnd", att_word, self.value_word(word_gcn))

        # Gated residuals; the gates act per node, so broadcast them on axis 1.
        class_node = ops.reshape(self.gamma_word, (1, -1, 1)) * word_gcn + cls_msg
        vis_new = ops.reshape(self.gamma_vis, (1, -1, 1)) * vis_msg + vis_gcn

        y = ops.einsum("bhwn,bnd->bhwd", bp, vis_new)  # Y = Bp Vnew
        y = self.bn(self.extend(ops.cast(y, self.compute_dtype)), training=training)
        out = ops.cast(x, self.compute_dtype) + y
        return {
            "word_nodes": word,
            "word_nodes_gcn": word_gcn,
            "projection": bp,
            "visual_nodes": vis,
            "visual_nodes_gcn": vis_gcn,
            "energy": energy,
            "visual_nodes_new": vis_new,
            "class_node": class_node,
            "output": out,
        }

    def call(self, inputs, training=None):
        x = to_channels_last(inputs, self.data_format)
        values = self._forward(x, training)
        return from_channels_last(values["output"], self.data_format), values["class_node"]

    def intermediates(self, inputs, training=False):
        """Returns the unit's intermediate values, for inspection and tests.

        Args:
            inputs: a batch in the layer's data format.
            training: bool, BN mode. Default False.

        Returns:
            A dict of tensors, all channels_last: `"word_nodes"` `(K, D)`
            (word-branch output `Wd`), `"word_nodes_gcn"` `(B, K, D)`
            (`Wd'`), `"projection"` `(B, H, W, N)` (`Bp`), `"visual_nodes"`
            `(B, N, D)` (`Vn`), `"visual_nodes_gcn"` (`Vn'`), `"energy"`
            `(B, K, N)`, `"visual_nodes_new"` (`Vnew`), `"class_node"`
            `(B, K, D)` and `"output"` `(B, H, W, C)`.
        """
        inputs = ops.convert_to_tensor(inputs)
        if not self.built:
            self.build(tuple(inputs.shape))
        return self._forward(to_channels_last(inputs, self.data_format), training)

    def compute_output_shape(self, input_shape):
        input_channels(self, input_shape)
        return tuple(input_shape), (input_shape[0], self.num_classes, self.num_state)

    def compute_output_spec(self, inputs, training=None):
        out_shape, class_shape = self.compute_output_shape(inputs.shape)
        # The class nodes stay float32 under mixed precision.
        return (
            keras.KerasTensor(out_shape, dtype=self.compute_dtype),
            keras.KerasTensor(class_shape, dtype=graph_dtype(self)),
        )

    def get_config(self):
        if self.embedding_mode == "zeros":
            class_embeddings = None
        elif self.embedding_mode == "learned":
            class_embeddings = "learned"
        else:
            class_embeddings = self._embedding_values.tolist()
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "class_embeddings": class_embeddings,
            "embedding_dim": self.embedding_dim,
            "num_state": self.num_state,
            "num_node": self.num_node,
            "embedding_mlp": self.embedding_mlp,
            "bn_epsilon": self.bn_epsilon,
            "bn_momentum": self.bn_momentum,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "data_format": self.data_format,
        }
