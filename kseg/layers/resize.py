"""Resizing layers."""

import keras


class Resize2D(keras.layers.Layer):
    pass


class ResizeLike(keras.layers.Layer):
    pass
