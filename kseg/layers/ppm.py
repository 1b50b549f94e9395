"""PSPNet pyramid pooling module."""

import keras


class PyramidPoolingModule(keras.layers.Layer):
    pass
