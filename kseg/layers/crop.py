"""Cropping a feature map to the spatial size of another (FCN and U-Net skips)."""

import keras
from keras import ops

from kseg._common import check_int, standardize_data_format


@keras.saving.register_keras_serializable(package="kseg")
class CropLike(keras.layers.Layer):
    """Crops `x` to the height and width of `reference`.

    FCN crops its upsampled score maps at fixed offsets (5, 9 and 31 in the
    official voc-fcn8s, which pads the input by 100), and U-Net centre-crops the
    encoder maps before concatenating them with the decoder's (valid
    convolutions shrink the decoder path). Sizes are read at run time, so any
    input size works.

    Args:
        offset: int, the top/left offset of the crop in both axes, or `None`
            (default) for a centre crop, `(size_x - size_ref) // 2` per axis.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.

    Input shape:
        A list `[x, reference]` of rank-4 tensors; `x` must be at least as large
        as `reference` (plus `offset`) in both spatial axes.

    Output shape:
        `x`'s shape with the spatial sizes of `reference`.

    Example:

    >>> x, ref = np.zeros((1, 10, 12, 4)), np.zeros((1, 6, 6, 2))
    >>> kseg.layers.CropLike()([x, ref]).shape  # (1, 6, 6, 4)
    """

    def __init__(self, offset=None, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.offset = None if offset is None else check_int("offset", offset, minimum=0)
        self.data_format = standardize_data_format(data_format)

    def _spatial(self, shape):
        return (shape[1], shape[2]) if self.data_format == "channels_last" else (shape[2], shape[3])

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(
                "CropLike expects a list [x, reference]. "
                f"Received: inputs of type {type(inputs).__name__}"
            )
        x, ref = inputs
        (h, w), (rh, rw) = self._spatial(ops.shape(x)), self._spatial(ops.shape(ref))
        static = [isinstance(v, int) for v in (h, w, rh, rw)]
        if all(static):
            top, left = (self.offset, self.offset) if self.offset is not None else (
                (h - rh) // 2,
                (w - rw) // 2,
            )
            if top + rh > h or left + rw > w:
                raise ValueError(
                    f"CropLike cannot crop a {h}x{w} map at offset ({top}, {left}) to "
                    f"{rh}x{rw}. Received: x.shape={tuple(x.shape)}, "
                    f"reference.shape={tuple(ref.shape)}"
                )
        elif self.offset is not None:
            top = left = self.offset
        else:
            top, left = (h - rh) // 2, (w - rw) // 2
        if self.data_format == "channels_last":
            return ops.slice(x, (0, top, left, 0), (ops.shape(x)[0], rh, rw, ops.shape(x)[3]))
        return ops.slice(x, (0, 0, top, left), (ops.shape(x)[0], ops.shape(x)[1], rh, rw))

    def compute_output_shape(self, input_shape):
        x_shape, ref_shape = input_shape
        if self.data_format == "channels_last":
            return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])
        return (x_shape[0], x_shape[1], ref_shape[2], ref_shape[3])

    def get_config(self):
        return {**super().get_config(), "offset": self.offset, "data_format": self.data_format}
