"""Backend-specific fast paths of kseg's ops, kept in this one module (DESIGN.md).

Each function here has a generic `keras.ops` meaning that the tests compare it with;
the backend branches exist only for speed and were chosen by measurement
(benchmarks/README.md, "Metrics").
"""

import keras
import numpy as np
from keras import ops

# Inputs with fewer elements than this take the plain `argmax` on torch: the fast
# path's fixed cost (a dozen small dispatches) only pays off on large maps.
_TORCH_FAST_ARGMAX_MIN_SIZE = 1 << 16
# Scores per transposed chunk on torch (8 MiB of float32): a chunk's temporaries stay
# within the allocator's reuse range (no fresh pages on every call) and in the cache.
_TORCH_CHUNK_ELEMENTS = 1 << 21
# Pixels per transposed block on torch (`_torch_pixels_argmax`; 64 measured fastest
# among 16..1024), and lanes of the pooling view of planar maps (`_torch_planar_argmax`).
_TORCH_BLOCK = 64
_TORCH_POOL_LANES = 256


def _is_jax_tracer(x):
    return type(x).__name__.endswith("Tracer")  # without importing jax


def xla_function(fn):
    """`fn` compiled with XLA on JAX and TensorFlow; `fn` itself on torch.

    The result can be called eagerly or from code that is being traced (Keras'
    `train_step` under `jax.jit`, `tf.function` with or without `jit_compile`): a
    nested compiled function is inlined into an enclosing XLA computation, and on
    TensorFlow it becomes an XLA cluster inside a plain graph. Positional arguments
    only; non-tensor arguments must be bound beforehand (e.g. with a closure).
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, autograph=False)
    return fn


def channel_argmax(scores, axis=-1):
    """Index of the largest entry along `axis` as int32, with `numpy.argmax` semantics.

    Ties go to the first maximum, and a NaN counts as larger than any number (the
    first NaN wins), as in NumPy, PyTorch and JAX.

    Backend paths (equal results, tested against NumPy):
    - JAX while tracing and TensorFlow: a running compare-and-select over the
      channels, which XLA fuses into one vectorised loop; XLA's own `argmax` over a
      short minor axis runs as a slow scalar loop on CPU, and TensorFlow's XLA
      `ArgMax` gets NaN wrong.
    - torch on the CPU, float32, large inputs: max pooling over the channel axis
      (see `_torch_channel_argmax`): 3 ms instead of `torch.argmax`'s 10.5 ms for
      an 8x256x256x21 batch on a 2-core CPU.
    - otherwise `ops.argmax`.
    """
    rank = len(scores.shape)
    axis = axis % rank
    channels = scores.shape[axis]
    backend = keras.backend.backend()
    if backend == "torch":
        fast = _torch_fast_argmax_applies(scores, axis)
        return _torch_channel_argmax(scores, axis) if fast else _argmax(scores, axis)
    compare_select = backend == "tensorflow" or (backend == "jax" and _is_jax_tracer(scores))
    if compare_select and channels is not None and channels <= 64:
        return compare_select_argmax(scores, axis)
    return _argmax(scores, axis)


def _argmax(scores, axis):
    return ops.cast(ops.argmax(scores, axis=axis), "int32")


def compare_select_argmax(scores, axis):
    """`argmax` over a static, short `axis` by a running compare-and-select."""
    channels = scores.shape[axis]
    planes = ops.unstack(scores, num=channels, axis=axis)
    best_value = planes[0]
    best_index = ops.zeros(ops.shape(best_value), dtype="int32")
    floating = "float" in keras.backend.standardize_dtype(scores.dtype)
    best_is_nan = ops.isnan(best_value) if floating else None
    for k in range(1, channels):
        # A later channel wins only when strictly greater, or when it is the first NaN.
        take = planes[k] > best_value
        if floating:
            is_nan = ops.isnan(planes[k])
            take = ops.logical_or(take, ops.logical_and(is_nan, ops.logical_not(best_is_nan)))
            best_is_nan = ops.logical_or(best_is_nan, is_nan)
        best_value = ops.where(take, planes[k], best_value)
        best_index = ops.where(take, k, best_index)
    return best_index


# ----------------------------------------------------------------------------- torch


def _torch_fast_argmax_applies(scores, axis):
    import torch

    return (
        isinstance(scores, torch.Tensor)
        and scores.device.type == "cpu"
        and scores.dtype == torch.float32
        and scores.dim() >= 2
        and scores.numel() >= _TORCH_FAST_ARGMAX_MIN_SIZE
        and 2 <= scores.shape[axis] <= 2**15
    )


def _torch_channel_argmax(scores, axis):
    """torch CPU argmax over `axis` through max pooling (int32, NumPy semantics).

    `torch.argmax` over a short contiguous axis (the channels of an NHWC map) runs
    a scalar loop per pixel. Max pooling over a *strided* axis is vectorised across
    the channels of a channels_last tensor instead, so the scores are brought into
    planar order (channel-major, pixels contiguous) and the channel axis becomes
    the pooling window: `F.max_pool2d(..., return_indices=True)` keeps the first
    maximum of each window (a later value must be strictly greater), which is
    argmax's tie rule. Channel-last inputs are transposed chunk by chunk (a
    channels_last -> contiguous conversion, torch's fast transpose kernel);
    channel-first inputs are planar already. Rows with a NaN are redone with
    `torch.argmax` (max pooling lets the last NaN win, argmax the first).
    """
    import torch

    x = scores.detach()
    channels = x.shape[axis]
    with torch.no_grad():
        if axis == x.dim() - 1:
            out_shape = x.shape[:-1]
            flat = x.reshape(-1, channels)  # a view when contiguous, else one copy
            result = torch.empty(flat.shape[0], dtype=torch.int32)
            step = _TORCH_CHUNK_ELEMENTS // channels // _TORCH_BLOCK * _TORCH_BLOCK
            step = max(_TORCH_BLOCK, step)
            # One scratch buffer for every chunk's transpose: a fresh multi-MiB tensor per
            # chunk can cost more in page faults than the transpose itself.
            scratch = torch.empty(min(step, flat.shape[0]) * channels, dtype=flat.dtype)
            for start in range(0, flat.shape[0], step):
                chunk = flat[start : start + step]
                _torch_pixels_argmax(chunk, result[start : start + chunk.shape[0]], scratch)
            return result.reshape(out_shape)
        out_shape = x.shape[:axis] + x.shape[axis + 1 :]
        pixels = int(np.prod(x.shape[axis + 1 :], dtype=np.int64))
        if pixels % _TORCH_POOL_LANES:
            # No pooling view fits this plane size: take the channel-last route.
            return _torch_channel_argmax(x.movedim(axis, -1), x.dim() - 1)
        # Channel axis in front of the pixels: (batch, K, pixels) is planar already.
        lead = int(np.prod(x.shape[:axis], dtype=np.int64))
        planar = x.reshape(lead, channels, pixels).contiguous()
        return _torch_planar_argmax(planar).reshape(out_shape)


def _torch_pixels_argmax(pixels, out, scratch):
    """Writes the argmax of each row of a contiguous `(P, K)` chunk into int32 `out`.

    `scratch` is a float tensor of at least `P * K` elements.
    """
    import torch
    import torch.nn.functional as F

    n, channels = pixels.shape
    lanes = _TORCH_BLOCK
    main = n - n % lanes
    if main:
        blocks = main // lanes
        # Blocked transpose: every run of `lanes` pixels becomes a (K, lanes) block,
        # (blocks, K, 1, lanes), copied from a channels_last 4-D view (torch's fast
        # channels_last -> contiguous copy).
        nhwc = pixels[:main].reshape(blocks, 1, lanes, channels)
        blocked = scratch[: main * channels].view(blocks, channels, 1, lanes)
        blocked.copy_(nhwc.permute(0, 3, 1, 2))
        # The same memory as a channels_last (blocks, lanes, K, 1) tensor: the K values
        # of a pixel run down the pooled height axis, pixels across the channels.
        view = blocked.as_strided((blocks, lanes, channels, 1), (channels * lanes, 1, lanes, lanes))
        values, index = F.max_pool2d(view, (channels, 1), return_indices=True)
        # Outputs are channels_last (blocks, lanes, 1, 1): memory order is pixel order,
        # and with a window of width 1 the pooled index is the class itself.
        classes = index.permute(0, 2, 3, 1).reshape(main)
        nan = torch.isnan(values.permute(0, 2, 3, 1).reshape(main))
        out[:main] = classes
        if bool(nan.any()):  # max pooling lets the last NaN win, argmax the first
            out[:main][nan] = torch.argmax(pixels[:main][nan], dim=1).to(torch.int32)
    if main < n:
        out[main:] = torch.argmax(pixels[main:], dim=1).to(torch.int32)


def _torch_planar_argmax(planar):
    """Argmax over axis 1 of a contiguous `(B, K, S)` tensor, as int32 `(B, S)`.

    `S` must be a multiple of `_TORCH_POOL_LANES`.
    """
    import torch
    import torch.nn.functional as F

    batch, channels, size = planar.shape
    lanes = _TORCH_POOL_LANES  # `size` is a multiple of it
    width = size // lanes
    # View (B, K, S) as a channels_last (B, lanes, K, width) tensor: pixel s = w * lanes
    # + c sits at channel c, column w, and the K channel values of a pixel run down
    # the pooled height axis. Element strides: batch K*S, channel 1, height S, width lanes.
    view = planar.as_strided((batch, lanes, channels, width), (channels * size, 1, size, lanes))
    values, index = F.max_pool2d(view, (channels, 1), return_indices=True)
    # The outputs are channels_last (B, lanes, 1, width): memory order is pixel order.
    # The pooled index is k * width + w within each (batch, lane) plane.
    classes = torch.div(
        index.permute(0, 2, 3, 1).reshape(batch, size), width, rounding_mode="floor"
    )
    classes = classes.to(torch.int32)
    nan = torch.isnan(values.permute(0, 2, 3, 1).reshape(batch, size))
    if bool(nan.any()):
        rows = planar.permute(0, 2, 1)[nan]  # (n, K) pixels holding a NaN
        classes[nan] = torch.argmax(rows, dim=1).to(torch.int32)
    return classes
