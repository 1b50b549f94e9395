"""Convolution, batch normalisation and activation in one block."""

import keras


class ConvBNAct(keras.layers.Layer):
    pass
