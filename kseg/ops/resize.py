"""Resize with PyTorch `F.interpolate` semantics."""

import math

import keras
import numpy as np
from keras import ops

from kseg._backend import has_native_bilinear_resize, int_range, prefers_matrix_resize
from kseg._common import check_choice, check_float, check_rank, standardize_data_format
from kseg.ops._utils import (
    SymbolicOp,
    any_symbolic,
    as_tensor,
    dtype_of,
    is_float,
    is_static,
    spatial_axes,
    static_or_dynamic_dims,
)

INTERPOLATIONS = ("bilinear", "nearest", "nearest-exact")


# ----------------------------------------------------------------------------- arguments


def normalize_resize_args(size, scale, interpolation, align_corners):
    """Validates the resize arguments and returns `(size, scale, interpolation, align_corners)`.

    `size` becomes a pair whose entries are Python ints or scalar integer tensors (for
    sizes read with `ops.shape`); `scale` becomes a pair of floats.
    """
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    if not isinstance(align_corners, (bool, np.bool_)):
        raise TypeError(
            f"Expected `align_corners` to be a bool. Received: align_corners={align_corners!r}"
        )
    align_corners = bool(align_corners)
    if align_corners and interpolation != "bilinear":
        # torch raises too: align_corners only applies to the interpolating modes.
        raise ValueError(
            "`align_corners=True` is only valid with interpolation='bilinear'. "
            f"Received: align_corners=True, interpolation={interpolation!r}"
        )
    if (size is None) == (scale is None):
        raise ValueError(
            "Expected exactly one of `size` and `scale` to be set. "
            f"Received: size={size!r}, scale={scale!r}"
        )
    if size is not None:
        pair = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        if len(pair) != 2:
            raise ValueError(
                "Expected `size` to be an integer or a pair (height, width). "
                f"Received: size={size!r}"
            )
        size = tuple(_check_size_entry(v, size) for v in pair)
    else:
        pair = tuple(scale) if isinstance(scale, (list, tuple)) else (scale, scale)
        if len(pair) != 2:
            raise ValueError(
                "Expected `scale` to be a number or a pair (height, width). "
                f"Received: scale={scale!r}"
            )
        scale = tuple(check_float("scale", v, minimum=0.0, inclusive=False) for v in pair)
    return size, scale, interpolation, align_corners


def _check_size_entry(value, size):
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (float, np.floating)):
        raise TypeError(f"Expected `size` to hold integers. Received: size={size!r}")
    if isinstance(value, (int, np.integer)):
        if value < 1:
            raise ValueError(f"Expected `size` to hold integers >= 1. Received: size={size!r}")
        return int(value)
    if value is None:
        raise ValueError(
            "Expected `size` to hold integers or integer scalar tensors. "
            f"Received: size={size!r}"
        )
    return value  # a scalar tensor, e.g. from `ops.shape(reference)`


def output_length(n_in, size, scale):
    """Output length of one axis: `size`, or `floor(n_in * scale)` as in torch."""
    if size is not None:
        return size
    if n_in is None:
        return None
    if is_static(n_in):
        n_out = int(math.floor(n_in * scale))  # torch computes this in double precision.
        if n_out < 1:
            raise ValueError(
                "Expected `scale` to give an output of at least one pixel. "
                f"Received: scale={scale} for an input of length {n_in}"
            )
        return n_out
    if float(scale).is_integer():
        return n_in * int(scale)
    return ops.cast(ops.floor(ops.cast(n_in, "float32") * scale), "int32")


# ----------------------------------------------------------------------------- coordinates
# Source coordinates follow torch's `area_pixel_compute_source_index` and
# `nearest_idx` / `nearest_neighbor_exact_compute_source_index`
# (aten/src/ATen/native/UpSample.h); SPEC section 4.9.


def _linear_coords_numpy(n_in, n_out, scale, align_corners):
    d = np.arange(n_out, dtype=np.float64)
    if align_corners:
        r = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        src = d * r
    else:
        r = 1.0 / scale if scale is not None else n_in / n_out
        src = np.maximum((d + 0.5) * r - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    return i0.astype("int32"), i1.astype("int32"), lam


def _nearest_index_numpy(n_in, n_out, scale, exact):
    # torch evaluates these in float32; reproduce the rounding so label maps match.
    s = np.float32(1.0 / scale) if scale is not None else np.float32(n_in) / np.float32(n_out)
    d = np.arange(n_out)
    if exact:
        src = np.floor(((d + 0.5) * np.float64(s)).astype(np.float32))
    else:
        if n_out == n_in:
            src = d
        elif n_out == 2 * n_in:
            src = d // 2
        else:
            src = np.floor(d.astype(np.float32) * s)
    return np.minimum(src.astype(np.int64), n_in - 1).astype("int32")


def _linear_coords_dynamic(n_in, n_out, scale, align_corners):
    d = ops.cast(int_range(n_out), "float32")
    fin = ops.cast(n_in, "float32")
    fout = ops.cast(n_out, "float32")
    if align_corners:
        r = ops.where(fout > 1, (fin - 1.0) / ops.maximum(fout - 1.0, 1.0), 0.0)
        src = d * r
    else:
        r = 1.0 / scale if scale is not None else fin / fout
        src = ops.maximum((d + 0.5) * r - 0.5, 0.0)
    i0 = ops.minimum(ops.cast(ops.floor(src), "int32"), ops.cast(n_in, "int32") - 1)
    i1 = ops.minimum(i0 + 1, ops.cast(n_in, "int32") - 1)
    lam = src - ops.cast(i0, "float32")
    return i0, i1, lam


def _nearest_index_dynamic(n_in, n_out, scale, exact):
    d = ops.cast(int_range(n_out), "float32")
    if scale is not None:
        s = float(np.float32(1.0 / scale))
    else:
        s = ops.cast(n_in, "float32") / ops.cast(n_out, "float32")
    src = ops.floor((d + 0.5) * s) if exact else ops.floor(d * s)
    return ops.minimum(ops.cast(src, "int32"), ops.cast(n_in, "int32") - 1)


# ----------------------------------------------------------------------------- kernels


def _broadcast_weights(lam, axis, dtype):
    # Unit axes inserted around `lam` (not a reshape to a shape holding -1, which
    # jax2onnx cannot resolve when the length of `lam` is symbolic).
    lam = ops.cast(lam, dtype)
    for a in range(4):
        if a != axis:
            lam = ops.expand_dims(lam, a)
    return lam


def _gather_axis(x, axis, n_in, n_out, scale, interpolation, align_corners):
    """Resizes one axis with `ops.take`: exact, and works for dynamic sizes."""
    static = is_static(n_in, n_out)
    if static and n_in == n_out and (scale is None or scale == 1.0):
        return x
    if interpolation == "bilinear":
        if static:
            i0, i1, lam = _linear_coords_numpy(n_in, n_out, scale, align_corners)
        else:
            i0, i1, lam = _linear_coords_dynamic(n_in, n_out, scale, align_corners)
        a = ops.take(x, i0, axis=axis)
        b = ops.take(x, i1, axis=axis)
        return a + (b - a) * _broadcast_weights(lam, axis, dtype_of(x))
    exact = interpolation == "nearest-exact"
    if static:
        idx = _nearest_index_numpy(n_in, n_out, scale, exact)
    else:
        idx = _nearest_index_dynamic(n_in, n_out, scale, exact)
    return ops.take(x, idx, axis=axis)


def _interpolation_matrix(n_in, n_out, scale, align_corners):
    """The (n_out, n_in) bilinear interpolation matrix of SPEC section 4.9."""
    i0, i1, lam = _linear_coords_numpy(n_in, n_out, scale, align_corners)
    m = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - lam)
    np.add.at(m, (rows, i1), lam)
    return m


def _resize_matrix(x, in_hw, out_hw, scale, align_corners, data_format):
    """Bilinear resize as two matrix products (static sizes only)."""
    dtype = dtype_of(x)
    scale = scale or (None, None)
    mh = ops.convert_to_tensor(_interpolation_matrix(in_hw[0], out_hw[0], scale[0], align_corners), dtype)
    mw = ops.convert_to_tensor(_interpolation_matrix(in_hw[1], out_hw[1], scale[1], align_corners), dtype)
    if data_format == "channels_last":
        h_eq, w_eq = "oh,bhwc->bowc", "pw,bhwc->bhpc"
    else:
        h_eq, w_eq = "oh,bchw->bcow", "pw,bchw->bchp"
    (h_in, w_in), (h_out, w_out) = in_hw, out_hw
    resize_h = h_in != h_out or scale[0] not in (None, 1.0)
    resize_w = w_in != w_out or scale[1] not in (None, 1.0)
    # Resize first along the axis that leaves less work for the second product.
    h_first = h_out * h_in * w_in + w_out * w_in * h_out <= w_out * w_in * h_in + h_out * h_in * w_out
    steps = [(resize_h, h_eq, mh), (resize_w, w_eq, mw)]
    for needed, eq, m in steps if h_first else steps[::-1]:
        if needed:
            x = ops.einsum(eq, m, x)
    return x


def _resize_gather(x, in_hw, out_hw, scale, interpolation, align_corners, data_format):
    h_axis, w_axis = spatial_axes(data_format)
    scale = scale or (None, None)
    x = _gather_axis(x, h_axis, in_hw[0], out_hw[0], scale[0], interpolation, align_corners)
    return _gather_axis(x, w_axis, in_hw[1], out_hw[1], scale[1], interpolation, align_corners)


def _use_keras_resize(in_hw, out_hw, scale, interpolation, align_corners, dtype):
    """Whether `keras.ops.image.resize` computes exactly the requested resize, fast.

    Keras' bilinear resize is torch's align_corners=False with `r = n_in / n_out`
    (SPEC 4.9). On TensorFlow and torch it calls the native kernels
    (`tf.image.resize`, `F.interpolate`); on JAX the generic gather path is faster.
    """
    if not has_native_bilinear_resize():
        return False
    if interpolation != "bilinear" or align_corners or not is_float(dtype):
        return False
    if not is_static(*out_hw):
        return False
    if scale is not None:
        # With `scale`, torch uses r = 1/s, equal to n_in/n_out only when n_in*s is whole.
        for n_in, n_out, s in zip(in_hw, out_hw, scale):
            if not is_static(n_in) or n_in * s != n_out:
                return False
    return True


def _resize_eager(x, size, scale, interpolation, align_corners, data_format):
    dtype = dtype_of(x)
    in_hw = static_or_dynamic_dims(x, spatial_axes(data_format))
    if size is not None:
        out_hw = size
    else:
        out_hw = tuple(output_length(n, None, s) for n, s in zip(in_hw, scale))
    if is_static(*in_hw, *out_hw) and tuple(in_hw) == tuple(out_hw) and (
        scale is None or scale == (1.0, 1.0)
    ):
        return x
    if _use_keras_resize(in_hw, out_hw, scale, interpolation, align_corners, dtype):
        y = ops.image.resize(
            x, tuple(out_hw), interpolation="bilinear", antialias=False, data_format=data_format
        )
        return ops.cast(y, dtype)
    if prefers_matrix_resize() and interpolation == "bilinear" and is_static(*in_hw, *out_hw):
        return _resize_matrix(x, in_hw, out_hw, scale, align_corners, data_format)
    return _resize_gather(x, in_hw, out_hw, scale, interpolation, align_corners, data_format)


def resize(
    x, size=None, scale=None, interpolation="bilinear", align_corners=False, data_format=None
):
    """Resizes a batch of images or feature maps exactly like PyTorch `F.interpolate`.

    Per axis, with input length `n_in`, output length `n_out` and output index `d`
    (SPEC section 4.9):

    - `"bilinear"`, `align_corners=True`: `src = d * (n_in - 1) / (n_out - 1)`
      (`0` when `n_out == 1`).
    - `"bilinear"`, `align_corners=False` (half-pixel): `src = max((d + 0.5) * r - 0.5, 0)`
      with `r = n_in / n_out` for `size=` and `r = 1 / scale` for `scale=`
      (torch's default `recompute_scale_factor=None`).
    - `"nearest"`: torch's `mode="nearest"`, `src = floor(d * r)` (what torch code uses
      for label maps; note that Keras' own `"nearest"` is torch's `"nearest-exact"`).
    - `"nearest-exact"`: `src = floor((d + 0.5) * r)`.

    With `scale=`, the output length is `floor(n_in * scale)`. Nearest modes keep the
    input dtype, so integer label maps stay integer; bilinear needs a float input and
    returns the input's dtype (float16 and bfloat16 included).

    Args:
        x: rank-4 tensor, `(batch, height, width, channels)` for `"channels_last"`.
        size: int or `(height, width)`; entries may be Python ints or integer scalar
            tensors (e.g. from `ops.shape(reference)`). Exactly one of `size`, `scale`.
        scale: number or `(scale_h, scale_w)`, each `> 0`.
        interpolation: `"bilinear"` (default), `"nearest"` or `"nearest-exact"`.
        align_corners: bool, default `False`; only valid with `"bilinear"`.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        The resized tensor, same dtype as `x`.

    Example:

    >>> x = np.random.rand(2, 7, 9, 3).astype("float32")
    >>> kseg.ops.resize(x, size=(17, 5), align_corners=True).shape
    (2, 17, 5, 3)
    """
    data_format = standardize_data_format(data_format)
    size, scale, interpolation, align_corners = normalize_resize_args(
        size, scale, interpolation, align_corners
    )
    x = as_tensor(x)
    check_rank("x", x.shape, 4)
    dtype = dtype_of(x)
    if interpolation == "bilinear" and not is_float(dtype):
        raise TypeError(
            "Bilinear resizing needs a floating-point input; use interpolation='nearest' "
            f"for label maps or cast first. Received: x.dtype={dtype}"
        )
    if any_symbolic(x):
        if size is not None and not is_static(*size):
            raise ValueError(
                "On symbolic inputs `size` must hold Python ints; use "
                "`kseg.layers.ResizeLike` to resize to another tensor's size. "
                f"Received: size={size!r}"
            )

        def spec(t):
            shape = list(t.shape)
            h_axis, w_axis = spatial_axes(data_format)
            for i, axis in enumerate((h_axis, w_axis)):
                shape[axis] = output_length(shape[axis], None if size is None else size[i], None if scale is None else scale[i])
            return keras.KerasTensor(tuple(shape), dtype=dtype)

        return SymbolicOp(
            lambda t: _resize_eager(t, size, scale, interpolation, align_corners, data_format),
            spec,
        )(x)
    return _resize_eager(x, size, scale, interpolation, align_corners, data_format)
