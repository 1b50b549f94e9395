"""Input normalisation inside the model, so saved models take raw [0, 255] images."""

import keras
import numpy as np
from keras import ops

from kseg._common import check_choice, standardize_data_format

#: The ImageNet mean colour on the [0, 255] scale (torchvision's mean times 255). The
#: models subtract it, so it is also the neutral colour for padding images
#: (`kseg.inference`, `kseg.data`).
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)

# Per-channel statistics, in RGB order, for images in [0, 255].
# "caffe": keras.applications' ResNet50/101 and VGG16 (`imagenet_utils.preprocess_input`,
#   mode "caffe": RGB -> BGR, then subtract the BGR means, no scaling).
# "torch": torchvision's ImageNet mean and std, scaled to [0, 255].
_MODES = {
    "caffe": {"mean": (123.68, 116.779, 103.939), "std": (1.0, 1.0, 1.0), "bgr": True},
    "torch": {
        "mean": IMAGENET_MEAN_RGB,
        "std": (58.395, 57.12, 57.375),
        "bgr": False,
    },
    "unit": {"mean": (0.0,), "std": (255.0,), "bgr": False},
    # "tf": keras.applications' `preprocess_input` mode "tf" (MobileNetV2, Xception,
    #   ResNetV2): x / 127.5 - 1, to [-1, 1].
    "tf": {"mean": (127.5,), "std": (127.5,), "bgr": False},
}
MODES = (*_MODES, "custom", None)


def preset_statistics(mode):
    """`(mean, std)` of an ImageNet preset in the order of the channels its weights read.

    `"caffe"` weights read BGR, so its statistics come in that order; `"torch"`
    in RGB order. In the units of images in [0, 255].
    """
    spec = _MODES[mode]
    mean, std = np.array(spec["mean"]), np.array(spec["std"])
    return (mean[::-1], std[::-1]) if spec["bgr"] else (mean, std)


def _as_stats(name, value, default):
    """`value` as a 1-D float32 array (one number or one per channel)."""
    if value is None:
        return np.array([default], "float32")
    try:
        array = np.asarray(value, dtype="float64").reshape(-1)
    except (TypeError, ValueError):
        array = None
    if array is None or array.size == 0 or not np.all(np.isfinite(array)):
        raise ValueError(
            f"Expected `{name}` to be a finite number or a non-empty list of one number per "
            f"channel. Received: {name}={value!r}"
        )
    if name == "std" and np.any(array <= 0):
        raise ValueError(f"Expected `std` to be positive. Received: std={value!r}")
    return array.astype("float32")


@keras.saving.register_keras_serializable(package="kseg")
class ImageNormalization(keras.layers.Layer):
    """Normalises images in [0, 255] the way a backbone's weights expect.

    Putting this inside the model means a saved or exported model needs no
    separate preprocessing: it takes the image as read from disk.

    The ImageNet presets hold RGB statistics. They apply to 3-channel RGB
    images and, as a grey equivalent, to 1-channel images: a grey image gets
    the average of the three channel means (and stds), i.e. mean 114.799 for
    `"caffe"` and mean 114.495, std 57.63 for `"torch"`. Any other channel
    count (e.g. 4 for RGB-NIR) has no preset statistics: use `"unit"`, which
    works for any number of channels, or give `mean` and `std` explicitly.

    Args:
        mode: `"caffe"` (keras.applications ResNet/VGG ImageNet weights: RGB to
            BGR, subtract the ImageNet mean, no scaling), `"torch"` (subtract the
            ImageNet mean and divide by its std), `"unit"` (divide by 255, any
            channel count), `"tf"` (`x / 127.5 - 1`, to [-1, 1], any channel
            count: keras.applications' MobileNetV2, Xception and ResNetV2), `"custom"` (subtract `mean`, divide by `std`), or
            `None` (identity). Defaults to `"caffe"`. Giving `mean` or `std`
            selects `"custom"` (a `mode` of `"torch"`, `"unit"` or `None` then
            raises an error).
        mean: for `"custom"`: one number, or one number per channel, in the
            input's [0, 255] units. Defaults to 0.
        std: for `"custom"`: one positive number, or one per channel.
            Defaults to 1.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.

    Input shape:
        `(batch, height, width, channels)` (or channels first), any float or
        int dtype. `"caffe"` and `"torch"` take 3 (RGB) or 1 (grey) channels,
        `"custom"` as many channels as `mean`/`std` have values (or any number
        when both are scalars), `"unit"`, `"tf"` and `None` any number.

    Output shape:
        Same as the input, in the layer's compute dtype.

    Example:

    >>> x = np.full((1, 4, 4, 3), 255.0, "float32")
    >>> kseg.layers.ImageNormalization("unit")(x)[0, 0, 0]  # -> [1., 1., 1.]
    >>> nir = np.full((1, 4, 4, 4), 255.0, "float32")  # RGB + near infrared
    >>> kseg.layers.ImageNormalization(mean=(124, 116, 104, 90), std=64)(nir)
    """

    def __init__(self, mode="caffe", mean=None, std=None, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if mean is not None or std is not None:
            if mode not in ("caffe", "custom"):
                raise ValueError(
                    "`mean` and `std` define their own normalisation; pass them with "
                    f"mode='custom' (or without `mode`). Received: mode={mode!r}"
                )
            mode = "custom"
        self.mode = check_choice("mode", mode, MODES)
        self.data_format = standardize_data_format(data_format)
        self._axis = -1 if self.data_format == "channels_last" else 1
        if self.mode == "custom":
            self.mean = [float(v) for v in _as_stats("mean", mean, 0.0)]
            self.std = [float(v) for v in _as_stats("std", std, 1.0)]
            if len(self.mean) > 1 and len(self.std) > 1 and len(self.mean) != len(self.std):
                raise ValueError(
                    "Expected `mean` and `std` to have the same number of values (one per "
                    f"channel) or one value. Received: mean={mean!r}, std={std!r}"
                )
        else:
            self.mean = self.std = None
        self._bgr = self.mode == "caffe"
        self._stats = None

    def _statistics(self, channels):
        """`(mean, std)` arrays for `channels` input channels, in the input's channel order."""
        if self.mode == "custom":
            mean, std = np.array(self.mean), np.array(self.std)
            sizes = {mean.size, std.size} - {1}
            if channels is not None and sizes and sizes != {channels}:
                raise ValueError(
                    f"ImageNormalization got {sizes.pop()} `mean`/`std` values for an input "
                    f"with {channels} channels; give one value per channel or one value. "
                    f"Received: input channels={channels}"
                )
            return mean, std
        spec = _MODES[self.mode]
        mean, std = np.array(spec["mean"]), np.array(spec["std"])
        if self.mode in ("unit", "tf"):
            return mean, std
        if channels == 1:
            return mean.mean(keepdims=True), std.mean(keepdims=True)
        if channels not in (None, 3):
            raise ValueError(
                f"ImageNormalization mode {self.mode!r} holds RGB statistics, so it takes 3 "
                "(RGB) or 1 (grey) channels. For other images pass mode='unit' (divide by "
                "255, any channel count) or `mean=` and `std=` with one value per channel "
                f"(mode='custom'). Received: input channels={channels}"
            )
        return mean, std

    def build(self, input_shape):
        if self.mode is not None:
            channels = input_shape[self._axis] if len(input_shape) > 1 else None
            mean, std = np.broadcast_arrays(*self._statistics(channels))
            # caffe: the flipped (BGR) image minus the BGR means.
            if self._bgr and mean.size == 3:
                mean, std = mean[::-1], std[::-1]
            shape = [1, 1, 1, 1]
            shape[self._axis] = mean.size
            self._stats = (
                mean.reshape(shape).astype("float32"),
                (1.0 / std).reshape(shape).astype("float32"),
            )
        self.built = True

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode is None:
            return x
        if self._bgr and x.shape[self._axis] != 1:
            x = ops.flip(x, axis=self._axis)
        mean = ops.cast(self._stats[0], self.compute_dtype)
        scale = ops.cast(self._stats[1], self.compute_dtype)
        return (x - mean) * scale

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "mode": self.mode,
            "mean": self.mean,
            "std": self.std,
            "data_format": self.data_format,
        }
