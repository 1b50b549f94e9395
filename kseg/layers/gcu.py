"""Graph convolutional unit (GCU, 'Beyond Grids')."""

import keras


class GraphConvolutionalUnit(keras.layers.Layer):
    pass
