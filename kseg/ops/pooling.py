"""Adaptive, argmax and padded pooling, and max-unpooling."""

import keras
import numpy as np
from keras import ops

from kseg._backend import divmod_nonnegative, int_range, is_symbolic_dim, set_at
from kseg._common import (
    check_choice,
    check_rank,
    normalize_tuple,
    standardize_data_format,
)
from kseg.ops._utils import (
    SymbolicOp,
    any_symbolic,
    as_tensor,
    dtype_of,
    is_float,
    is_static,
    lowest_value,
    spatial_axes,
    static_or_dynamic_dims,
)

# ----------------------------------------------------------------------------- adaptive pooling


def _adaptive_matrix_numpy(n, o):
    """(o, n) matrix averaging torch's adaptive bins [floor(i n / o), ceil((i + 1) n / o))."""
    i = np.arange(o)
    start = (i * n) // o
    end = -((-(i + 1) * n) // o)
    j = np.arange(n)
    mask = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return mask / (end - start)[:, None].astype(np.float64)


def _adaptive_matrix_dynamic(n, o, dtype):
    i = int_range(o)
    j = int_range(n)  # before the cast: a symbolic length on JAX stays one
    n = ops.cast(n, "int32")
    start = (i * n) // o
    end = ((i + 1) * n + (o - 1)) // o
    mask = ops.logical_and(j[None, :] >= start[:, None], j[None, :] < end[:, None])
    return ops.cast(mask, dtype) / ops.cast(end - start, dtype)[:, None]


def adaptive_average_pool(x, output_size, data_format=None):
    """Average pooling to a fixed output size, with PyTorch `adaptive_avg_pool2d` bins.

    Output cell `i` of `o` over an axis of length `n` averages the input cells
    `[floor(i * n / o), ceil((i + 1) * n / o))` (SPEC section 4.10), so bins overlap when
    `o` does not divide `n`, and the output may be larger than the input. Computed as
    `P_h @ x @ P_w^T` with two small pooling matrices: exact and the same on every backend.

    Args:
        x: rank-4 float tensor.
        output_size: int or `(height, width)`, each `>= 1`.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        Tensor with spatial size `output_size`, same dtype as `x`.

    Example:

    >>> x = np.random.rand(2, 33, 47, 8).astype("float32")
    >>> kseg.ops.adaptive_average_pool(x, (5, 7)).shape
    (2, 5, 7, 8)
    """
    data_format = standardize_data_format(data_format)
    output_size = normalize_tuple("output_size", output_size, 2, minimum=1)
    x = as_tensor(x)
    check_rank("x", x.shape, 4)
    dtype = dtype_of(x)
    if not is_float(dtype):
        raise TypeError(
            f"Expected `x` to be a floating-point tensor. Received: x.dtype={dtype}"
        )
    if any_symbolic(x):
        return SymbolicOp(
            lambda t: _adaptive_eager(t, output_size, data_format),
            lambda t: keras.KerasTensor(_set_hw(t.shape, output_size, data_format), dtype=dtype),
        )(x)
    return _adaptive_eager(x, output_size, data_format)


def _adaptive_eager(x, output_size, data_format):
    dtype = dtype_of(x)
    n_h, n_w = static_or_dynamic_dims(x, spatial_axes(data_format))
    mats = []
    for n, o in ((n_h, output_size[0]), (n_w, output_size[1])):
        if is_static(n):
            mats.append(ops.convert_to_tensor(_adaptive_matrix_numpy(n, o), dtype))
        else:
            mats.append(_adaptive_matrix_dynamic(n, o, dtype))
    if data_format == "channels_last":
        h_eq, w_eq = "ih,bhwc->biwc", "jw,bhwc->bhjc"
    else:
        h_eq, w_eq = "ih,bchw->bciw", "jw,bchw->bchj"
    steps = [(h_eq, mats[0], n_h, output_size[0]), (w_eq, mats[1], n_w, output_size[1])]
    if is_static(n_h, n_w):
        (o_h, o_w) = output_size
        # Multiply-adds per channel of each order; PPM pools large maps to tiny grids.
        if o_w * n_w * n_h + o_h * n_h * o_w < o_h * n_h * n_w + o_w * n_w * o_h:
            steps = steps[::-1]
    for eq, m, n, o in steps:
        if not (is_static(n) and n == o):
            x = ops.einsum(eq, m, x)
    return x


def _set_hw(shape, hw, data_format):
    shape = list(shape)
    h_axis, w_axis = spatial_axes(data_format)
    shape[h_axis], shape[w_axis] = hw
    return tuple(shape)


# ----------------------------------------------------------------------------- argmax pooling


def _same_padding(n, k, s):
    """Keras/TensorFlow "same": output ceil(n / s), the odd padding cell at the end."""
    if is_static(n):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        return out, total // 2, total - total // 2
    out = (n + s - 1) // s
    # With k >= s the padding is never negative: plain arithmetic, which keeps JAX's
    # symbolic sizes symbolic where `ops.maximum` would make them traced values.
    total = (out - 1) * s + k - n if k >= s else ops.maximum((out - 1) * s + k - n, 0)
    return out, total // 2, total - total // 2


def pooled_length(n, k, s, padding):
    """Output length of `max_pool_with_argmax` along one axis (None when unknown)."""
    if n is None:
        return None
    if padding == "valid":
        return (n - k) // s + 1
    return -(-n // s)


def max_pool_with_argmax(x, pool_size=2, strides=2, padding="valid", data_format=None):
    """Max pooling that also returns PyTorch-style argmax indices (for SegNet unpooling).

    `indices[b, i, j, c]` (channels_last) is the flat position `h * W + w` of the
    maximum inside the `(b, c)` plane of the *input* `x` (height `H`, width `W`), as
    returned by torch `F.max_pool2d(..., return_indices=True)`. Ties go to the first
    maximum in row-major window order, and a NaN wins as in torch.

    Padding:
    - `"valid"`: torch's floor mode; trailing rows/columns that do not fill a window are
      dropped (pass the input size as `output_size` when unpooling).
    - `"same"`: Keras/TensorFlow "same": output size `ceil(n / stride)`, with
      `max((out - 1) * stride + pool - n, 0)` padding cells split as `total // 2`
      before and the rest after. Padded cells hold -inf (the dtype minimum for
      integers), so they are never selected and indices always point inside `x`.

    Gradients flow through the pooled values to the selected input cells only.

    Args:
        x: rank-4 tensor.
        pool_size: int or pair, default 2.
        strides: int or pair, default 2.
        padding: `"valid"` (default) or `"same"`.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        `(pooled, indices)`: pooled values (dtype of `x`) and int32 indices, same shape.

    Example:

    >>> x = np.random.rand(1, 4, 4, 3).astype("float32")
    >>> pooled, indices = kseg.ops.max_pool_with_argmax(x)
    >>> pooled.shape, indices.shape
    ((1, 2, 2, 3), (1, 2, 2, 3))
    """
    data_format = standardize_data_format(data_format)
    pool_size = normalize_tuple("pool_size", pool_size, 2)
    strides = normalize_tuple("strides", strides, 2)
    padding = check_choice("padding", padding, ("valid", "same"))
    x = as_tensor(x)
    check_rank("x", x.shape, 4)
    _check_window_fits(x.shape, pool_size, padding, data_format)
    if any_symbolic(x):

        def spec(t):
            h_axis, w_axis = spatial_axes(data_format)
            hw = tuple(
                pooled_length(t.shape[a], k, s, padding)
                for a, k, s in zip((h_axis, w_axis), pool_size, strides)
            )
            shape = _set_hw(t.shape, hw, data_format)
            return (keras.KerasTensor(shape, dtype=t.dtype), keras.KerasTensor(shape, dtype="int32"))

        return SymbolicOp(
            lambda t: _argmax_pool_eager(t, pool_size, strides, padding, data_format),
            spec,
        )(x)
    return _argmax_pool_eager(x, pool_size, strides, padding, data_format)


def _check_window_fits(shape, pool_size, padding, data_format):
    if padding != "valid":
        return
    for axis, k in zip(spatial_axes(data_format), pool_size):
        n = shape[axis]
        if is_static(n) and n < k:
            raise ValueError(
                "Expected every spatial size of `x` to be at least `pool_size` with "
                f"padding='valid'. Received: x.shape={tuple(shape)}, pool_size={pool_size}"
            )


def _argmax_pool_eager(x, pool_size, strides, padding, data_format):
    dtype = dtype_of(x)
    x = _channels_last(x, data_format)
    n_h, n_w = static_or_dynamic_dims(x, (1, 2))
    (kh, kw), (sh, sw) = pool_size, strides
    if padding == "valid":
        out_h, out_w = (n_h - kh) // sh + 1, (n_w - kw) // sw + 1
        top = left = 0
        xp = x
    else:
        out_h, top, bottom = _same_padding(n_h, kh, sh)
        out_w, left, right = _same_padding(n_w, kw, sw)
        pads = [(0, 0), (top, bottom), (left, right), (0, 0)]
        if all(is_static(a, b) for a, b in pads):
            needs_pad = any(a or b for a, b in pads)
        else:
            needs_pad = True  # sizes known only at run time (TensorFlow graphs)
        xp = ops.pad(x, pads, constant_values=lowest_value(dtype)) if needs_pad else x
    best = None
    arg = None
    for slot, window in enumerate(_windows(xp, out_h, out_w, pool_size, strides)):
        if best is None:
            best, arg = window, ops.zeros_like(window, dtype="int32")
            continue
        take = window > best
        if is_float(dtype):
            take = ops.logical_or(take, ops.isnan(window))  # torch lets NaN win.
        best = ops.where(take, window, best)
        arg = ops.where(take, slot, arg)
    rows = ops.reshape(int_range(out_h) * sh, (1, -1, 1, 1)) - top
    cols = ops.reshape(int_range(out_w) * sw, (1, 1, -1, 1)) - left
    dy, dx = divmod_nonnegative(arg, kw)
    h = rows + dy
    w = cols + dx
    indices = ops.cast(h * ops.cast(n_w, "int32") + w, "int32")
    return _from_channels_last(best, data_format), _from_channels_last(indices, data_format)


def _windows(xp, out_h, out_w, pool_size, strides):
    """The `(out_h, out_w)` maps of each window cell, in row-major window order.

    Strided slices cut to `out`; where JAX's exporters (jax2tf, jax2onnx) trace
    a symbolic height and width, which cannot decide the comparisons of symbolic
    sizes those slices need, gathers of the rows and columns `dy + s * i`.
    """
    (kh, kw), (sh, sw) = pool_size, strides
    symbolic = is_symbolic_dim(out_h) or is_symbolic_dim(out_w)
    for dy in range(kh):
        if symbolic:
            rows = ops.take(xp, int_range(out_h) * sh + dy, axis=1)
        for dx in range(kw):
            if symbolic:
                yield ops.take(rows, int_range(out_w) * sw + dx, axis=2)
            else:
                yield xp[:, dy::sh, dx::sw, :][:, :out_h, :out_w, :]


def _channels_last(x, data_format):
    return ops.transpose(x, (0, 2, 3, 1)) if data_format == "channels_first" else x


def _from_channels_last(x, data_format):
    return ops.transpose(x, (0, 3, 1, 2)) if data_format == "channels_first" else x


# ----------------------------------------------------------------------------- unpooling


def max_unpool(x, indices, output_size, data_format=None):
    """Scatters pooled values back to their argmax positions (torch `F.max_unpool2d`).

    The output has spatial size `output_size` and is zero except at the positions named
    by `indices` (flat `h * W + w` inside each `(batch, channel)` plane, as produced by
    `max_pool_with_argmax`), which receive the matching values of `x`. When overlapping
    windows selected the same position twice, one of the values is kept (which one is
    unspecified, as in torch on GPU). Differentiable with respect to `x`.

    Args:
        x: rank-4 tensor of pooled values (or decoder features of that shape).
        indices: integer tensor of the same shape as `x`.
        output_size: `(height, width)` of the unpooled map (e.g. the pooling input's size);
            entries may be integer scalar tensors.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        Tensor of spatial size `output_size`, same dtype as `x`.

    Example:

    >>> x = np.random.rand(1, 5, 5, 3).astype("float32")
    >>> pooled, indices = kseg.ops.max_pool_with_argmax(x)
    >>> kseg.ops.max_unpool(pooled, indices, output_size=(5, 5)).shape
    (1, 5, 5, 3)
    """
    data_format = standardize_data_format(data_format)
    output_size = normalize_unpool_size(output_size)
    x = as_tensor(x)
    indices = as_tensor(indices)
    check_rank("x", x.shape, 4)
    check_rank("indices", indices.shape, 4)
    check_unpool_shapes(x.shape, indices.shape, output_size, data_format)
    if any_symbolic(x, indices):
        if not is_static(*output_size):
            raise ValueError(
                "On symbolic inputs `output_size` must hold Python ints; use "
                "`kseg.layers.MaxUnpooling2D` with a reference tensor instead. "
                f"Received: output_size={output_size!r}"
            )
        return SymbolicOp(
            lambda t, i: _unpool_eager(t, i, output_size, data_format),
            lambda t, i: keras.KerasTensor(_set_hw(t.shape, output_size, data_format), dtype=t.dtype),
        )(x, indices)
    return _unpool_eager(x, indices, output_size, data_format)


def normalize_unpool_size(output_size):
    if output_size is None:
        raise ValueError("Expected `output_size` to be set. Received: output_size=None")
    pair = tuple(output_size) if isinstance(output_size, (list, tuple)) else (output_size,) * 2
    if len(pair) != 2:
        raise ValueError(
            f"Expected `output_size` to be a pair (height, width). Received: output_size={output_size!r}"
        )
    out = []
    for v in pair:
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            if v < 1:
                raise ValueError(
                    f"Expected `output_size` to hold integers >= 1. Received: output_size={output_size!r}"
                )
            out.append(int(v))
        elif v is None or isinstance(v, (bool, float, np.floating)):
            raise TypeError(
                f"Expected `output_size` to hold integers. Received: output_size={output_size!r}"
            )
        else:
            out.append(v)
    return tuple(out)


def check_unpool_shapes(x_shape, indices_shape, output_size, data_format):
    """Static checks: same shapes for values and indices, and room for every index."""
    for a, b in zip(x_shape, indices_shape):
        if is_static(a, b) and a != b:
            raise ValueError(
                "Expected `x` and `indices` to have the same shape. "
                f"Received: x.shape={tuple(x_shape)}, indices.shape={tuple(indices_shape)}"
            )
    for axis, o in zip(spatial_axes(data_format), output_size):
        n = x_shape[axis]
        if is_static(n, o) and o < n:
            raise ValueError(
                "Expected `output_size` to be at least the pooled size, since pooling never "
                f"enlarges a map. Received: output_size={tuple(output_size)} for "
                f"x.shape={tuple(x_shape)}"
            )


def _unpool_eager(x, indices, output_size, data_format):
    x = _channels_last(x, data_format)
    indices = ops.cast(_channels_last(indices, data_format), "int32")
    shape = ops.shape(x)
    batch, channels = shape[0], shape[3]
    out_h, out_w = output_size
    b = ops.reshape(int_range(batch), (-1, 1, 1, 1))
    c = ops.reshape(int_range(channels), (1, 1, 1, -1))
    if any(is_symbolic_dim(n) for n in (batch, out_h, out_w)):
        # Exporting from JAX with a free height and width: the flat scatter below needs
        # the product of the sizes, which JAX cannot show is not negative once they
        # come out of several poolings (SegNet); index the 4-D map instead.
        zeros = ops.zeros((batch, out_h, out_w, channels), dtype=dtype_of(x))
        out = set_at(zeros, (b, *divmod_nonnegative(indices, out_w), c), x)
        return _from_channels_last(out, data_format)
    plane = out_h * out_w
    # Flat position in the (B, H*W, C) output of every pooled value.
    flat = (b * plane + indices) * channels + c
    flat = ops.reshape(flat, (-1, 1))
    zeros = ops.zeros((batch * plane * channels,), dtype=dtype_of(x))
    out = ops.scatter_update(zeros, flat, ops.reshape(x, (-1,)))
    out = ops.reshape(out, (batch, out_h, out_w, channels))
    return _from_channels_last(out, data_format)


# ----------------------------------------------------------------------------- padded pooling


def torch_pool_length(n, k, s, p, ceil_mode):
    """torch `F.max_pool2d` / `F.avg_pool2d` output length (`pooling_output_shape`).

    `(n + 2p - k) / s + 1`, rounded down or (ceil_mode) up; with ceil_mode the last
    window must start inside the input or the left padding, else it is dropped.
    """
    if n is None:
        return None
    if is_static(n):
        out = (n + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
        if ceil_mode and (out - 1) * s >= n + p:
            out -= 1
        return out
    out = (n + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode:
        out = ops.where((out - 1) * s >= n + p, out - 1, out)
    return out


def _window_counts(n, o, k, s, p, count_include_pad):
    """Per output cell the divisor torch's avg_pool2d uses along one axis."""
    if is_static(n, o):
        start = np.arange(o) * s - p
        end = np.minimum(start + k, n + p)
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, n)
        return (end - start).astype(np.float64)
    start = ops.arange(o, dtype="int32") * s - p
    end = ops.minimum(start + k, n + p)
    if not count_include_pad:
        start, end = ops.maximum(start, 0), ops.minimum(end, n)
    return ops.cast(end - start, "float32")


def pool(
    x,
    pool_size,
    strides=None,
    padding=0,
    pool_mode="max",
    ceil_mode=False,
    count_include_pad=True,
    data_format=None,
):
    """Max or average pooling with torch/Caffe padding and output-size rules.

    Equals torch `F.max_pool2d(x, pool_size, strides, padding, ceil_mode=ceil_mode)` and
    `F.avg_pool2d(x, pool_size, strides, padding, ceil_mode, count_include_pad)`
    (SPEC 4.5-4.7): `padding` cells are added symmetrically (-inf for max, 0 for
    average), the output length is `floor_or_ceil((n + 2p - k) / s) + 1`, and in ceil
    mode a last window that would start in the right padding is dropped. Average pooling
    divides by the window size clipped to the padded input (`count_include_pad=True`,
    torch's and Caffe's default) or by the number of real input cells.

    Args:
        x: rank-4 tensor (float for average pooling).
        pool_size: int or pair.
        strides: int or pair; defaults to `pool_size`.
        padding: int or pair `>= 0`, at most half the pool size (as torch requires).
        pool_mode: `"max"` (default) or `"average"`.
        ceil_mode: bool, default `False`.
        count_include_pad: bool, default `True`; average pooling only.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Returns:
        The pooled tensor, same dtype as `x`.

    Example:

    >>> x = np.random.rand(1, 321, 321, 4).astype("float32")
    >>> kseg.ops.pool(x, 3, 2, padding=1, ceil_mode=True).shape  # DeepLab v1 pool1
    (1, 161, 161, 4)
    """
    data_format = standardize_data_format(data_format)
    pool_size, strides, padding, pool_mode, ceil_mode, count_include_pad = normalize_pool_args(
        pool_size, strides, padding, pool_mode, ceil_mode, count_include_pad
    )
    x = as_tensor(x)
    check_rank("x", x.shape, 4)
    dtype = dtype_of(x)
    if pool_mode == "average" and not is_float(dtype):
        raise TypeError(
            f"Expected a floating-point `x` for average pooling. Received: x.dtype={dtype}"
        )
    args = (pool_size, strides, padding, pool_mode, ceil_mode, count_include_pad, data_format)
    h_axis, w_axis = spatial_axes(data_format)
    out_hw = tuple(
        torch_pool_length(x.shape[a] if is_static(x.shape[a]) else None, k, s, p, ceil_mode)
        for a, k, s, p in zip((h_axis, w_axis), pool_size, strides, padding)
    )
    for o in out_hw:
        if o is not None and o < 1:
            raise ValueError(
                "Expected the pooled output to have at least one cell; the input is smaller "
                f"than the window. Received: x.shape={tuple(x.shape)}, pool_size={pool_size}, "
                f"padding={padding}"
            )
    if any_symbolic(x):
        return SymbolicOp(
            lambda t: _pool_eager(t, *args),
            lambda t: keras.KerasTensor(_set_hw(t.shape, out_hw, data_format), dtype=t.dtype),
        )(x)
    return _pool_eager(x, *args)


def normalize_pool_args(pool_size, strides, padding, pool_mode, ceil_mode, count_include_pad):
    pool_size = normalize_tuple("pool_size", pool_size, 2)
    strides = pool_size if strides is None else normalize_tuple("strides", strides, 2)
    padding = normalize_tuple("padding", padding, 2, minimum=0)
    for p, k in zip(padding, pool_size):
        if 2 * p > k:
            raise ValueError(
                "Expected `padding` to be at most half of `pool_size` (as torch requires). "
                f"Received: padding={padding}, pool_size={pool_size}"
            )
    check_choice("pool_mode", pool_mode, ("max", "average"))
    for name, v in (("ceil_mode", ceil_mode), ("count_include_pad", count_include_pad)):
        if not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"Expected `{name}` to be a bool. Received: {name}={v!r}")
    return pool_size, strides, padding, pool_mode, bool(ceil_mode), bool(count_include_pad)


def _pool_eager(x, pool_size, strides, padding, pool_mode, ceil_mode, count_include_pad, data_format):
    dtype = dtype_of(x)
    x = _channels_last(x, data_format)
    n_h, n_w = static_or_dynamic_dims(x, (1, 2))
    out, pads = [], [(0, 0)]
    for n, k, s, p in zip((n_h, n_w), pool_size, strides, padding):
        o = torch_pool_length(n, k, s, p, ceil_mode)
        extra = (o - 1) * s + k - (n + 2 * p)
        extra = max(extra, 0) if is_static(extra) else ops.maximum(extra, 0)
        out.append(o)
        pads.append((p, p + extra))
    pads.append((0, 0))
    if all(is_static(a, b) for a, b in pads):
        needs_pad = any(a or b for a, b in pads)
    else:
        needs_pad = True  # sizes known only at run time (TensorFlow graphs)
    if pool_mode == "max":
        if needs_pad:
            x = ops.pad(x, pads, constant_values=lowest_value(dtype))
        y = ops.max_pool(x, pool_size, strides, padding="valid", data_format="channels_last")
        return _from_channels_last(y, data_format)
    if needs_pad:
        x = ops.pad(x, pads, constant_values=0)
    y = ops.average_pool(x, pool_size, strides, padding="valid", data_format="channels_last")
    ch = _window_counts(n_h, out[0], pool_size[0], strides[0], padding[0], count_include_pad)
    cw = _window_counts(n_w, out[1], pool_size[1], strides[1], padding[1], count_include_pad)
    window = float(pool_size[0] * pool_size[1])
    if isinstance(ch, np.ndarray) and isinstance(cw, np.ndarray):
        if np.all(ch[:, None] * cw[None, :] == window):
            return _from_channels_last(y, data_format)
        scale = ops.convert_to_tensor((window / (ch[:, None] * cw[None, :]))[None, :, :, None], dtype)
    else:
        scale = ops.cast(window / (ops.cast(ch, "float32")[:, None] * ops.cast(cw, "float32")[None, :]), dtype)
        scale = scale[None, :, :, None]
    return _from_channels_last(y * scale, data_format)
