"""Small helpers that kseg's inference modules share: arrays, arguments, probabilities, classes."""

import keras
import numpy as np
from keras import ops

from kseg._common import normalize_tuple
from kseg.layers.preprocessing import IMAGENET_MEAN_RGB  # the padding colour of RGB images

#: The padding value of images whose channel count is not 3 (`pad_value=None`).
DEFAULT_PAD_VALUE = 0.0


def _to_numpy(x):
    if keras.ops.is_tensor(x):
        return np.asarray(ops.convert_to_numpy(x))
    return np.asarray(x)


def _pair(name, value):
    return normalize_tuple(name, value, 2, minimum=1)


def _select_output(outputs, output_key):
    if isinstance(outputs, dict):
        if output_key not in outputs:
            raise ValueError(
                f"The model returns a dict without the key {output_key!r}. Pass `output_key` "
                f"(one of {sorted(outputs)}). Received: output_key={output_key!r}"
            )
        return outputs[output_key]
    if isinstance(outputs, (list, tuple)):
        return outputs[0]
    return outputs


def _resize(x, size):
    """Bilinear resize of a channels_last NumPy batch (no-op when the size already matches)."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    y = ops.image.resize(x, size, interpolation="bilinear", data_format="channels_last")
    return _to_numpy(y).astype(np.float32)


def _softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _probabilities(logits):
    """Softmax over the classes, or the sigmoid (float64, exact near 0.5) of one logit."""
    if logits.shape[-1] == 1:
        return 0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))
    return _softmax(logits)


def _classes(probs):
    """int32 class ids of `(B, H, W, K)` probabilities (threshold 0.5 for K = 1)."""
    if probs.shape[-1] == 1:
        return (probs[..., 0] > 0.5).astype(np.int32)
    return np.argmax(probs, axis=-1).astype(np.int32)


def _pad_values(pad_value, channels):
    """`pad_value` as a float32 vector of `channels` values."""
    if pad_value is None:
        pad_value = IMAGENET_MEAN_RGB if channels == 3 else DEFAULT_PAD_VALUE
    values = np.asarray(pad_value, np.float32).reshape(-1)
    if values.size == 1:
        values = np.repeat(values, channels)
    if values.size != channels:
        raise ValueError(
            f"Expected `pad_value` to be a scalar or one value per image channel ({channels}). "
            f"Received: pad_value={pad_value!r}"
        )
    return values


def _model_channels(model, data_format):
    """The channel count of the model's (first) input, or None when unknown."""
    try:
        shape = tuple(model.inputs[0].shape)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    if len(shape) != 4:
        return None
    channels = shape[1] if data_format == "channels_first" else shape[-1]
    return None if channels is None else int(channels)


def _check_images(images, model=None, data_format=None, shape=None):
    images = _to_numpy(images).astype(np.float32)
    shape = images.shape if shape is None else shape
    if images.ndim != 4 or images.shape[-1] < 1:
        raise ValueError(
            "Expected channels_last images of shape (B, H, W, C) (or (H, W, C) for one image). "
            f"Received: images.shape={shape}"
        )
    expected = None if model is None else _model_channels(model, data_format)
    if expected is not None and images.shape[-1] != expected:
        raise ValueError(
            f"Expected channels_last images with {expected} channels, the channel count of "
            f"the model's input. Received: images.shape={shape}"
        )
    return images
