"""Atrous spatial pyramid pooling (DeepLab v2 and v3)."""

import keras


class ASPP(keras.layers.Layer):
    pass
