"""Pooling and unpooling layers."""

import keras


class AdaptiveAveragePooling2D(keras.layers.Layer):
    pass


class MaxPoolingWithArgmax2D(keras.layers.Layer):
    pass


class MaxUnpooling2D(keras.layers.Layer):
    pass
