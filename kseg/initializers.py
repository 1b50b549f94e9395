"""Initializers: the bilinear-upsampling kernel for transposed convolutions (FCN)."""

import keras
import numpy as np


def bilinear_kernel_2d(kernel_size):
    """Returns the `(k, k)` bilinear interpolation filter of FCN as float64 NumPy.

    `f = floor((k + 1) / 2)`, centre `c = f - 1` for odd `k` and `f - 0.5` for
    even `k`, `w[i, j] = (1 - |i - c| / f) * (1 - |j - c| / f)`
    (FCN `surgery.upsample_filt`, shelhamer/fcn.berkeleyvision.org; SPEC 4.6).
    """
    k = int(kernel_size)
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    og = np.arange(k, dtype="float64")
    filt = 1.0 - np.abs(og - center) / factor
    return filt[:, None] * filt[None, :]


@keras.saving.register_keras_serializable(package="kseg")
class BilinearUpsampling(keras.initializers.Initializer):
    """Bilinear-interpolation kernel for a `Conv2DTranspose` (FCN upsampling).

    Produces the kernel FCN uses to initialise its transposed convolutions
    (Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic
    Segmentation", CVPR 2015; `surgery.py` of the official code and
    `get_upsampling_weight` of wkentaro/pytorch-fcn; SPEC 4.6). For kernel size
    `k`, factor `f = floor((k + 1) / 2)` and centre `c = f - 1` (odd `k`) or
    `f - 0.5` (even `k`), the tap `(i, j)` is
    `(1 - |i - c| / f) * (1 - |j - c| / f)`. The filter sits only on the diagonal
    (output channel == input channel); every cross-channel tap is 0, so each
    class map is upsampled on its own. With `k = 2s` and `strides = s` (for
    example `k = 16, s = 8`) a constant map stays constant away from the border.

    The kernel layout is Keras' `Conv2DTranspose` layout
    `(kernel_h, kernel_w, out_channels, in_channels)`; torch's
    `ConvTranspose2d` weight is `(in, out, kh, kw)`.

    Example:

    >>> up = keras.layers.Conv2DTranspose(
    ...     21, 16, strides=8, padding="same", use_bias=False,
    ...     kernel_initializer=kseg.initializers.BilinearUpsampling())
    """

    def __call__(self, shape, dtype=None):
        shape = tuple(shape)
        if len(shape) != 4:
            raise ValueError(
                "Expected a Conv2DTranspose kernel shape of rank 4 "
                "(kernel_h, kernel_w, out_channels, in_channels). "
                f"Received: shape={shape}"
            )
        kh, kw, out_channels, in_channels = (int(d) for d in shape)
        if kh != kw:
            raise ValueError(
                "Expected a square kernel (kernel_h == kernel_w) for bilinear "
                f"upsampling. Received: shape={shape}"
            )
        if out_channels != in_channels:
            raise ValueError(
                "Expected as many output as input channels (filters equal to the "
                "input channels of the Conv2DTranspose), since each channel is "
                f"upsampled on its own. Received: shape={shape}"
            )
        filt = bilinear_kernel_2d(kh)
        kernel = np.zeros(shape, dtype="float64")
        idx = np.arange(in_channels)
        kernel[:, :, idx, idx] = filt[:, :, None]
        dtype = keras.backend.standardize_dtype(dtype or keras.config.floatx())
        return keras.ops.cast(keras.ops.convert_to_tensor(kernel.astype("float32")), dtype)

    def get_config(self):
        return {}
