"""DeepLab v3+ decoder."""

import keras


class DeepLabV3PlusDecoder(keras.layers.Layer):
    pass
