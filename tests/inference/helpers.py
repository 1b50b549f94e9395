"""A pointwise model with its NumPy reference, and random images, for the inference tests."""

import keras
import numpy as np

#: Classes of the test models.
K = 4


def pointwise_model(seed=0, channels=3, num_outputs=K, dict_output=False):
    """A 1x1-conv model: every output pixel depends only on its input pixel.

    With `dict_output`, it returns `{"aux": ..., "main": logits}`.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, channels))
    x = keras.layers.Rescaling(1 / 64.0, offset=-2.0)(inputs)
    logits = keras.layers.Conv2D(num_outputs, 1, name="main_conv")(x)
    if dict_output:
        aux = keras.layers.Conv2D(num_outputs, 1, name="aux_conv")(x)
        return keras.Model(inputs, {"aux": aux, "main": logits})
    return keras.Model(inputs, logits)


def pointwise_numpy(model, images):
    """NumPy logits of `pointwise_model`."""
    conv = model.get_layer("main_conv")
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in conv.weights)
    x = images / 64.0 - 2.0
    return np.einsum("bhwc,ck->bhwk", x, kernel[0, 0]) + bias


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def random_images(shape, seed=0):
    """float32 images of `shape` with values uniform in [0, 255)."""
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)
