"""Class-presence scores of GINet class nodes, the input of the semantic context loss."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kseg")
class ClassPresenceScore(keras.layers.Layer):
    """Class-presence logits from GINet class nodes, with a learnable semantic centroid.

    `score[b, k] = sum_d class_nodes[b, k, d] * centroid[k, d]`, where `centroid` is a
    trainable `(K, D)` weight initialised to ones (SPEC 3.3, from PaddleSeg's
    transient `sc_loss.py`). A Keras loss cannot own weights, so the centroid lives in
    the model as this layer; its output is trained with
    `kseg.losses.SemanticContextLoss` against
    the classes present in the label map. Add it as an extra named model output (for
    example `"presence"`) and give that output a loss and a loss weight (0.2 in the
    reference) at `compile` time. Computes in float32 by default (`dtype="float32"`),
    as the logits feed a loss.

    Reference: Wu et al., "GINet: Graph Interaction Network for Scene Parsing",
    ECCV 2020.

    Args:
        **kwargs: base layer arguments (`name`, `dtype`, ...); `dtype` defaults to
            `"float32"`.

    Input shape:
        `(B, K, D)` class nodes (the second output of `GraphInteractionUnit`).

    Output shape:
        `(B, K)` presence logits.

    Example:

    >>> nodes = keras.Input((21, 256))
    >>> kseg.layers.ClassPresenceScore(name="presence")(nodes).shape
    (None, 21)
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[1] is None or input_shape[2] is None:
            raise ValueError(
                "Expected class nodes of shape (B, K, D) with known K and D. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self.semantic_centroid = self.add_weight(
            shape=(input_shape[1], input_shape[2]),
            initializer="ones",
            trainable=True,
            name="semantic_centroid",
        )

    def call(self, class_nodes):
        class_nodes = ops.cast(class_nodes, self.compute_dtype)
        centroid = ops.cast(self.semantic_centroid, self.compute_dtype)
        return ops.sum(class_nodes * centroid, axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1])
