"""Input normalisation inside the model, so saved models take raw [0, 255] RGB images."""

import keras
import numpy as np
from keras import ops

from kseg._common import check_choice, standardize_data_format

# Per-channel statistics, in RGB order, for images in [0, 255].
# "caffe": keras.applications' ResNet50/101 and VGG16 (`imagenet_utils.preprocess_input`,
#   mode "caffe": RGB -> BGR, then subtract the BGR means, no scaling).
# "torch": torchvision's ImageNet mean and std, scaled to [0, 255].
_MODES = {
    "caffe": {"mean": (123.68, 116.779, 103.939), "std": (1.0, 1.0, 1.0), "bgr": True},
    "torch": {
        "mean": (123.675, 116.28, 103.53),
        "std": (58.395, 57.12, 57.375),
        "bgr": False,
    },
    "unit": {"mean": (0.0, 0.0, 0.0), "std": (255.0, 255.0, 255.0), "bgr": False},
}


@keras.saving.register_keras_serializable(package="kseg")
class ImageNormalization(keras.layers.Layer):
    """Normalises RGB images in [0, 255] the way a backbone's weights expect.

    Putting this inside the model means a saved or exported model needs no
    separate preprocessing: it takes the image as read from disk.

    Args:
        mode: `"caffe"` (keras.applications ResNet/VGG ImageNet weights: RGB to
            BGR, subtract the ImageNet mean, no scaling), `"torch"` (subtract the
            ImageNet mean and divide by its std), `"unit"` (divide by 255), or
            `None` (identity). Defaults to `"caffe"`.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.

    Input shape:
        `(batch, height, width, 3)` (or channels first), any float or int dtype;
        mode `"unit"` takes any number of channels.

    Output shape:
        Same as the input, in the layer's compute dtype.

    Example:

    >>> x = np.full((1, 4, 4, 3), 255.0, "float32")
    >>> kseg.layers.ImageNormalization("unit")(x)[0, 0, 0]  # -> [1., 1., 1.]
    """

    def __init__(self, mode="caffe", data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.mode = check_choice("mode", mode, (*_MODES, None))
        self.data_format = standardize_data_format(data_format)
        if mode is not None:
            spec = _MODES[mode]
            mean, std = np.array(spec["mean"]), np.array(spec["std"])
            if spec["bgr"]:
                mean, std = mean[::-1], std[::-1]
            shape = (1, 1, 1, 3) if self.data_format == "channels_last" else (1, 3, 1, 1)
            self._mean = mean.reshape(shape).astype("float32")
            self._scale = (1.0 / std).reshape(shape).astype("float32")
            self._bgr = spec["bgr"]

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode is None:
            return x
        axis = -1 if self.data_format == "channels_last" else 1
        if self.mode != "unit" and x.shape[axis] not in (None, 3):
            raise ValueError(
                f"ImageNormalization expects 3 (RGB) channels. Received: inputs.shape={x.shape}"
            )
        if self._bgr:
            x = ops.flip(x, axis=axis)
        mean = ops.cast(self._mean, self.compute_dtype)
        scale = ops.cast(self._scale, self.compute_dtype)
        return (x - mean) * scale

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "data_format": self.data_format}
