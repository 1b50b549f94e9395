"""Graph interaction unit (GINet)."""

import keras


class GraphInteractionUnit(keras.layers.Layer):
    pass
