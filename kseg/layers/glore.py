"""Global reasoning unit (GloRe)."""

import keras


class GloReUnit(keras.layers.Layer):
    pass
