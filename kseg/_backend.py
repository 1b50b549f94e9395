"""All of kseg's backend-specific code, kept in this one module outside the core.

The core (`kseg/ops`, `layers`, `backbones`, `models`, `losses`, `metrics`, and
`kseg/inference`) imports only Keras and NumPy (DESIGN.md) and reaches the
backends through this module; tests/test_layout.py checks it. Here:
- fast paths of kseg's ops: each has a generic `keras.ops` meaning that the tests
  compare it with, and the backend branches exist only for speed, chosen by
  measurement (benchmarks/README.md, "Metrics");
- what the backend can run (`channels_first_conv_supported`), how it compiles
  (`xla_function`), how it runs without recording gradients (`no_gradients`) and
  whether Keras' eager functional call holds every intermediate tensor
  (`predict_keeps_intermediates`, for `kseg.inference`'s lean runner);
- the forms JAX's export tracing (symbolic sizes; jax2tf, jax2onnx) needs:
  `int_range`, `divmod_nonnegative`, `set_at`, `is_symbolic_dim`;
- the cross-replica sums and gathers of losses and metrics under `tf.distribute`
  and `torch.distributed`, and BatchNorm moments over every torch process;
- the row sums of the dense CRF's lattice (`segment_sum_rows`);
- on torch, the `call` of every `BatchNormalization` (torch's fused kernel) and NHWC
  `Conv2D` / `DepthwiseConv2D` (no layout copies) of a kseg model
  (`use_fused_batch_norm`, `use_direct_conv`, applied by `SegmentationModel` and
  `Backbone`).
"""

import contextlib
import functools

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
# among 16..1024), and lanes of the pooling view of channel-first maps.
_TORCH_BLOCK = 64
_TORCH_POOL_LANES = 256


@functools.cache
def channels_first_conv_supported():
    """Whether the backend can run a `channels_first` (NCHW) convolution here.

    TensorFlow runs NCHW convolutions on a CPU only through oneDNN, which it turns
    on by default only on CPUs with AVX-512 (and never with
    `TF_ENABLE_ONEDNN_OPTS=0`); without it the convolution raises
    `UnimplementedError` when it runs. This tries one tiny NCHW convolution on
    TensorFlow's default device, outside any graph being traced, once per process.
    JAX and torch always can.
    """
    if keras.backend.backend() != "tensorflow":
        return True
    import tensorflow as tf

    with tf.init_scope():
        try:
            x = tf.zeros((1, 1, 2, 2))
            tf.nn.conv2d(x, tf.zeros((1, 1, 1, 1)), strides=1, padding="VALID", data_format="NCHW")
        except tf.errors.OpError:
            return False
    return True


def check_conv_data_format(data_format):
    """Raises `ValueError` when `data_format` asks for convolutions the backend cannot run.

    Layers and builders that create convolutions call this with their (standardised)
    `data_format`, so that a user gets this message at construction instead of a
    TensorFlow traceback on the first call.
    """
    if data_format == "channels_first" and not channels_first_conv_supported():
        raise ValueError(
            "The TensorFlow backend cannot run channels_first (NCHW) convolutions on this "
            "CPU: TensorFlow runs them on a CPU only through oneDNN, which is off in this "
            "process (TF_ENABLE_ONEDNN_OPTS=0, or a CPU without AVX-512, where TensorFlow "
            "leaves it off). Use data_format='channels_last' (the Keras default), set "
            "TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow is imported, or run on a GPU. "
            f"Received: data_format={data_format!r}"
        )
    return data_format


def no_gradients():
    """A context without torch's autograd tape, as Keras' `predict` runs; nothing elsewhere.

    TensorFlow and JAX record nothing outside a gradient tape or transformation.
    """
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def predict_keeps_intermediates():
    """Whether a functional model's `predict_on_batch` holds all its intermediate tensors at once.

    True on torch: Keras runs the functional call eagerly and keeps every
    intermediate tensor until it returns, so `kseg.inference` runs functional
    models there with `lean_call`, which frees each one after its last reader.
    TensorFlow and JAX run a compiled program whose compiler owns the buffers,
    and keep `predict_on_batch`. Measured (benchmarks/README.md, "Inference
    memory": DeepLabV3+ ResNet-50, 4 x 512x1024, CPU, peak RSS above the built
    model): torch 7572 MB through `predict_on_batch`, 889 MB through `lean_call`;
    TensorFlow 676 MB. (JAX's compiled program peaked at 7297 MB; that row was
    not investigated and `lean_call` was not measured on JAX.)
    """
    return keras.backend.backend() == "torch"


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


def int_range(n):
    """`ops.arange(n, dtype="int32")`, also for a symbolic length on JAX.

    Exporting from JAX traces with symbolic sizes (jax2tf, jax2onnx). There a
    length read from a shape is a symbolic dimension, and `lax.iota` keeps it as
    the length of the result; `jnp.arange` (which `ops.arange` calls) gives an
    array of unknown length under jax2onnx, which then no longer matches the
    other tensors of that size. The values are the same. (The start is given:
    jax2onnx's `jnp.arange` reads `arange(n, None)`, as Keras calls it, as a
    range to None.)
    """
    if is_symbolic_dim(n):
        import jax

        return jax.lax.iota("int32", n)
    return ops.arange(0, n, dtype="int32")


def divmod_nonnegative(x, d):
    """`(x // d, x % d)` of a non-negative integer tensor `x` and a positive divisor `d`.

    On JAX as a truncating division (`lax.div`, the same for non-negative values)
    and a product: `//` and `%` there are `jnp.floor_divide` and `jnp.remainder`,
    which correct the sign with `lax.rem`, and jax2onnx cannot lower that on a
    tensor of a symbolic size (an ONNX export with a free height and width).
    """
    if keras.backend.backend() == "jax":
        from jax import lax

        d = ops.cast(d, x.dtype)
        q = lax.div(x, d)
        return q, x - q * d
    return x // d, x % d


def set_at(x, indices, values):
    """`x` with `values` written where the index arrays `indices` (one per axis of `x`,
    broadcast together and with `values`) point: `x.at[indices].set(values)` on JAX.

    Used only where JAX's export tracing has symbolic sizes: `ops.scatter_update`
    takes a flat list of positions, and flattening needs the product of the sizes,
    which JAX cannot always show is not negative.
    """
    return x.at[tuple(indices)].set(values)


def is_symbolic_dim(n):
    """Whether `n` is a symbolic size of JAX's export tracing (`jax.export`, jax2tf, jax2onnx).

    There a tensor's shape holds expressions in the free input sizes instead of
    ints; elsewhere (eager, `jax.jit`, TensorFlow, torch) this is False.
    """
    if keras.backend.backend() != "jax" or isinstance(n, (int, np.integer)):
        return False
    from jax import export

    return export.is_symbolic_dim(n)


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
    # Called on the torch backend only: `ops.is_tensor` means a torch tensor there.
    return (
        ops.is_tensor(scores)
        and scores.device.type == "cpu"
        and keras.backend.standardize_dtype(scores.dtype) == "float32"
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
    the pooling window (`_torch_pool_argmax`). Channel-last inputs are transposed in
    blocks (torch's fast channels_last -> contiguous copy); channel-first inputs are
    planar already. Only tensor methods are used here, and `torch.nn.functional`
    once, in `_torch_pool_argmax`.
    """
    x = scores.detach()  # a metric needs no gradient
    channels = x.shape[axis]
    if axis == x.dim() - 1:
        flat = x.reshape(-1, channels)  # a view when contiguous, else one copy
        result = flat.new_empty(flat.shape[0]).int()
        step = max(_TORCH_BLOCK, _TORCH_CHUNK_ELEMENTS // channels // _TORCH_BLOCK * _TORCH_BLOCK)
        # One scratch buffer for every chunk's transpose: a fresh multi-MiB tensor per
        # chunk can cost more in page faults than the transpose itself.
        scratch = flat.new_empty(min(step, flat.shape[0]) * channels)
        for start in range(0, flat.shape[0], step):
            chunk = flat[start : start + step]
            _torch_pixels_argmax(chunk, result[start : start + chunk.shape[0]], scratch)
        return result.reshape(x.shape[:-1])
    pixels = int(np.prod(x.shape[axis + 1 :], dtype=np.int64))
    if pixels % _TORCH_POOL_LANES:
        # No pooling view fits this plane size: take the channel-last route.
        return _torch_channel_argmax(x.movedim(axis, -1), x.dim() - 1)
    # Channel axis in front of the pixels: (batch, K, pixels) is planar already.
    lead = int(np.prod(x.shape[:axis], dtype=np.int64))
    planar = x.reshape(lead, channels, pixels).contiguous()
    # View (B, K, S) as a channels_last (B, lanes, K, S / lanes) tensor: pixel
    # s = w * lanes + c sits at channel c, column w, and its K values run down the
    # height axis. Element strides: batch K*S, channel 1, height S, width lanes.
    lanes = _TORCH_POOL_LANES
    view = planar.as_strided(
        (lead, lanes, channels, pixels // lanes), (channels * pixels, 1, pixels, lanes)
    )
    classes = _torch_pool_argmax(view, planar.permute(0, 2, 1))
    return classes.reshape(x.shape[:axis] + x.shape[axis + 1 :])


def _torch_pixels_argmax(pixels, out, scratch):
    """Writes the argmax of each row of a contiguous `(P, K)` chunk into int32 `out`.

    `scratch` is a float tensor of at least `P * K` elements.
    """
    n, channels = pixels.shape
    lanes = _TORCH_BLOCK
    main = n - n % lanes
    if main:
        blocks = main // lanes
        # Blocked transpose: every run of `lanes` pixels becomes a (K, lanes) block,
        # (blocks, K, 1, lanes), copied from a channels_last 4-D view.
        nhwc = pixels[:main].reshape(blocks, 1, lanes, channels)
        blocked = scratch[: main * channels].view(blocks, channels, 1, lanes)
        blocked.copy_(nhwc.permute(0, 3, 1, 2))
        # The same memory as a channels_last (blocks, lanes, K, 1) tensor: the K values
        # of a pixel run down the pooled height axis, pixels across the channels.
        view = blocked.as_strided((blocks, lanes, channels, 1), (channels * lanes, 1, lanes, lanes))
        out[:main] = _torch_pool_argmax(view, pixels[:main])
    if main < n:
        out[main:] = pixels[main:].argmax(dim=1).int()


def _torch_pool_argmax(view, rows):
    """Argmax over the height axis of a channels_last `(N, C, K, W)` view, as int32.

    `F.max_pool2d(..., return_indices=True)` with a `(K, 1)` window keeps the first
    maximum of each window (a later value must be strictly greater): argmax's tie
    rule. Its outputs are channels_last `(N, C, 1, W)`, so their memory order is the
    pixel order `(N, W, C)`, and the pooled index within a plane is `k * W + w`.
    `rows` holds the same scores as `(..., K)` rows in pixel order, its leading
    shape is the result's: pixels with a NaN are redone with `argmax` on them (max
    pooling lets the last NaN win, argmax the first).
    """
    import torch.nn.functional as F

    width = view.shape[3]
    values, index = F.max_pool2d(view, (view.shape[2], 1), return_indices=True)
    shape = rows.shape[:-1]
    index = index.permute(0, 2, 3, 1).reshape(shape)
    classes = (index if width == 1 else index.div(width, rounding_mode="floor")).int()
    nan = values.permute(0, 2, 3, 1).reshape(shape).isnan()
    if bool(nan.any()):
        classes[nan] = rows[nan].argmax(dim=1).int()
    return classes


# ---------------------------------------------------------------------------
# Cross-replica sums and gathers for losses and metrics on several replicas.
#
# Backend-specific code (DESIGN.md). Two backends run one copy of a training step per
# replica, each on its slice of the global batch:
# - TensorFlow (`tf.distribute.MirroredStrategy`, `MultiWorkerMirroredStrategy`);
# - torch under `torch.distributed` (one process per device, launched by `torchrun`),
#   while `kseg.training`'s step runs inside `torch_replica_step` (and only then: a
#   collective outside the step, e.g. a loss called by one process alone, would wait
#   for the others forever).
# JAX's `keras.distribution.DataParallel` runs one SPMD program over the global batch,
# so there every function of this section is the identity.
#
# Keras' convention on TensorFlow (`keras/src/losses/loss.py`,
# `scale_loss_for_distribution`, and the trainer's `unscale_loss_for_distribution`):
# in a step on `N` replicas each replica returns its loss divided by `N`; the
# gradients are summed over the replicas, and the reported loss is multiplied back by
# `N` and averaged. kseg's losses compute the loss of the global batch on every
# replica from cross-replica sums (differentiable: the gradient of an all-reduce sum
# is an all-reduce sum, `tf.distribute.ReplicaContext.all_reduce`) and divide it by
# `num_replicas()`, so that the summed gradients and the reported value are those of
# one device on the whole batch.
#
# torch: kseg's step averages the processes' gradients (as DistributedDataParallel
# does) and the losses are not scaled (`num_replicas()` is 1 there): every process
# computes the loss of the global batch from cross-process sums; the backward of the
# all-reduce sums the processes' gradients of it, so each process holds `N` times its
# own pixels' share of the global gradient and the average is the global gradient.
# Keras' own losses (a mean over the process's images) and the regularisation losses
# (the same on every process) come out right under the average too.

# The process groups of the `torch.distributed` steps running now (innermost last).
_TORCH_STEP_GROUP = []


@contextlib.contextmanager
def torch_replica_step(group=None):
    """Inside it, the sums and gathers of this section run across the torch processes.

    `group` is the `torch.distributed` process group (None: the default group). Every
    process of the group must enter it for the same step (kseg.training's distributed
    train and test steps do).
    """
    _TORCH_STEP_GROUP.append(group)
    try:
        yield
    finally:
        _TORCH_STEP_GROUP.pop()


def torch_step_group():
    """`(group,)` inside a `torch_replica_step` of several processes, else None."""
    if not _TORCH_STEP_GROUP or keras.backend.backend() != "torch":
        return None
    import torch.distributed as dist

    group = _TORCH_STEP_GROUP[-1]
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return None
    return (group,)


@functools.cache
def _torch_all_reduce_function():
    """A `torch.autograd.Function`: the sum over the processes, whose gradient is the sum
    over the processes of the gradients (every process's loss depends on every input)."""
    import torch
    import torch.distributed as dist

    class AllReduceSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, tensor, group):
            ctx.group = group
            tensor = tensor.clone()
            dist.all_reduce(tensor, group=group)
            return tensor

        @staticmethod
        def backward(ctx, grad):
            grad = grad.contiguous().clone()
            dist.all_reduce(grad, group=ctx.group)
            return grad, None

    return AllReduceSum


def _torch_all_reduce_sum(values, group):
    """Differentiable sum over the processes of a list of tensors, in one all-reduce."""
    import torch

    shapes = [tuple(v.shape) for v in values]
    dtype = functools.reduce(torch.promote_types, [v.dtype for v in values])
    flat = torch.cat([v.reshape(-1).to(dtype) for v in values])
    flat = _torch_all_reduce_function().apply(flat, group)
    out, start = [], 0
    for value, shape in zip(values, shapes):
        size = int(np.prod(shape, dtype=np.int64))
        out.append(flat[start : start + size].reshape(shape).to(value.dtype))
        start += size
    return out


def replica_context():
    """The TensorFlow replica context of a step on several replicas, or None.

    None on JAX and torch, outside `strategy.run` (cross-replica context), and
    under the default (one-device) strategy.
    """
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def num_replicas():
    """The divisor of a reduced loss: the replicas of a `tf.distribute` step (else 1).

    1 on torch too, whose distributed step averages the gradients instead of summing
    them (see above)."""
    context = replica_context()
    return 1 if context is None else int(context.num_replicas_in_sync)


def sum_over_replicas(values):
    """`values` (a tensor or a list / tuple of tensors) summed over the replicas.

    Differentiable. Every replica must call it the same number of times in the
    same order (it is a collective operation).
    """
    torch_step = torch_step_group()
    if torch_step is not None:
        single = not isinstance(values, (list, tuple))
        tensors = [ops.convert_to_tensor(v) for v in ([values] if single else values)]
        summed = _torch_all_reduce_sum(tensors, torch_step[0])
        return summed[0] if single else summed
    context = replica_context()
    if context is None:
        return values
    import tensorflow as tf

    return context.all_reduce(tf.distribute.ReduceOp.SUM, values)


def gather_over_replicas(values):
    """The replicas' float tensors concatenated along axis 0, in replica order.

    `values` is a float tensor or a list of float tensors with the same leading size
    on this replica (replicas may hold different sizes, e.g. the last batch of an
    epoch). Differentiable: each replica's slice gets the sum of the gradients that
    all replicas give it. Built on an all-reduce sum of zero-padded copies, which
    costs `N` times a gather's traffic; `ReplicaContext.all_gather` aborted with a
    collective-type mismatch next to the loss's all-reduces (TensorFlow 2.21, CPU).
    """
    torch_step = torch_step_group()
    if torch_step is not None:
        return _torch_gather(values, torch_step[0])
    context = replica_context()
    if context is None:
        return values
    import tensorflow as tf

    single = not isinstance(values, (list, tuple))
    values = [values] if single else list(values)
    count = tf.shape(values[0])[0]
    replica = context.replica_id_in_sync_group
    one_hot = tf.one_hot(replica, context.num_replicas_in_sync, dtype=tf.float32)
    sizes = tf.cast(
        context.all_reduce(tf.distribute.ReduceOp.SUM, one_hot * tf.cast(count, "float32")), "int32"
    )
    start = tf.reduce_sum(sizes[:replica])
    after = tf.reduce_sum(sizes) - start - count
    padded = [tf.pad(v, [[start, after]] + [[0, 0]] * (len(v.shape) - 1)) for v in values]
    gathered = context.all_reduce(tf.distribute.ReduceOp.SUM, padded)
    return gathered[0] if single else list(gathered)


def _torch_gather(values, group):
    """`gather_over_replicas` on torch processes: a differentiable all-reduce of padded
    copies, as on TensorFlow (the sizes first, in a plain all-reduce)."""
    import torch
    import torch.distributed as dist

    single = not isinstance(values, (list, tuple))
    values = [ops.convert_to_tensor(v) for v in ([values] if single else values)]
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    count = int(values[0].shape[0])
    sizes = torch.zeros(world, dtype=torch.int64, device=values[0].device)
    sizes[rank] = count
    dist.all_reduce(sizes, group=group)
    start = int(sizes[:rank].sum())
    after = int(sizes.sum()) - start - count
    padded = [torch.nn.functional.pad(v, [0, 0] * (v.dim() - 1) + [start, after]) for v in values]
    gathered = _torch_all_reduce_sum(padded, group)
    return gathered[0] if single else gathered


def synchronized_moments(inputs, axes, mask=None):
    """Mean and variance of `inputs` over `axes` and over every torch process's batch.

    Inside a distributed torch step (`torch_replica_step`) the sums of `x`, `x**2` and
    the count are all-reduced, differentiably (the gradient flows through the global
    statistics, as in torch's `SyncBatchNorm`), and the variance is `E[x^2] - E[x]^2`,
    the formula of Keras' torch `moments`. Elsewhere: the local moments (Keras'
    `ops.moments`, or their masked form). `mask` (optional) has the shape of `inputs`
    less the last axis; masked-out positions do not count. Returns float32 tensors of
    the kept axis (float16 / bfloat16 inputs are summed in float32).
    """
    torch_step = torch_step_group()
    if torch_step is None and mask is None:
        return ops.moments(inputs, axes=axes)
    x = ops.convert_to_tensor(inputs)
    if x.dtype in ("float16", "bfloat16"):
        x = ops.cast(x, "float32")
    if mask is None:
        weight = None
        count = ops.convert_to_tensor(float(np.prod([int(x.shape[a]) for a in axes])), x.dtype)
    else:
        weight = ops.cast(ops.broadcast_to(ops.expand_dims(mask, -1), ops.shape(x)), x.dtype)
        count = ops.sum(weight, axis=axes)
    total = ops.sum(x if weight is None else x * weight, axis=axes)
    squares = ops.sum(x * x if weight is None else x * x * weight, axis=axes)
    if torch_step is not None:
        total, squares, count = _torch_all_reduce_sum([total, squares, count], torch_step[0])
    count = ops.maximum(count, 1e-12)
    mean = total / count
    return mean, ops.maximum(squares / count - mean * mean, 0.0)


# ----------------------------------------------------------------------------- kernel choices


def has_native_bilinear_resize():
    """Whether `keras.ops.image.resize` calls a native kernel that `kseg.ops.resize` may use.

    On TensorFlow and torch it is `tf.image.resize` / `F.interpolate` (exact for
    bilinear, align_corners=False, SPEC 4.9); on JAX `jax.image.resize` is another
    program of gathers, and kseg's own gather path is used there.
    """
    return keras.backend.backend() in ("tensorflow", "torch")


def prefers_matrix_resize():
    """Whether a static-size bilinear resize should be two matrix products (torch).

    torch's `index_select` and element-wise ops on large maps are slow on CPU: a
    4x64x64x256 map resized to 128x128 took 3406 ms through the gather path and
    451 ms as two matrix products (7.5x; align_corners=True: 4928 vs 730 ms), torch
    2.13 CPU, 2-core AMD EPYC without AVX-512. Both are exact (tests/ops/test_resize.py).
    """
    return keras.backend.backend() == "torch"


def count_bins(index, num_bins, weights=None):
    """Histogram of the int32 vector `index` (values in `[0, num_bins)`) as int32.

    `ops.segment_sum` with a static `num_segments` is a scatter-add that traces under
    `jax.jit` and XLA (`ops.bincount` on JAX needs the data-dependent length and does
    not trace). On torch `torch.bincount` (via `ops.bincount`) is the fastest kernel
    (0.2 ms, benchmarks/README.md "Metrics"), and it is exact with weights too (it sums
    weights in float64), while torch's `segment_sum` rounds int32 sums through float32.
    """
    if keras.backend.backend() == "torch":
        if weights is not None:
            weights = ops.cast(weights, "int32")
        return ops.cast(ops.bincount(index, weights=weights, minlength=num_bins), "int32")
    if weights is None:
        weights = ops.ones_like(index)
    return ops.segment_sum(ops.cast(weights, "int32"), index, num_segments=num_bins)


def segment_sum_rows(data, segment_ids, num_segments):
    """`ops.segment_sum(data, segment_ids, num_segments)` of a float `(R, C)` array.

    Keras' torch `segment_sum` copies the ids to the full shape of `data` as int64 and
    runs `scatter_reduce`; `index_add_` is the same sum without the copy (187,500 x 21
    float32 rows into 158,856, a splat of the dense CRF's lattice on a VOC image: 99 ms
    against 259 ms on a loaded 2-core CPU; benchmarks/README.md, "Dense CRF"). The other
    backends keep `ops.segment_sum`.
    """
    if keras.backend.backend() == "torch":
        import torch

        data = ops.convert_to_tensor(data)
        ids = ops.convert_to_tensor(segment_ids).long()
        out = torch.zeros((num_segments, data.shape[1]), dtype=data.dtype, device=data.device)
        return out.index_add_(0, ids, data)
    return ops.segment_sum(data, segment_ids, num_segments=num_segments)


def as_backend_input(x):
    """Backend tensors and NumPy arrays as they are, other inputs as NumPy arrays.

    On torch everything becomes a tensor: the fast argmax (`channel_argmax`) works on
    tensors, and the metrics' update runs eagerly there.
    """
    if keras.backend.backend() == "torch":
        return ops.convert_to_tensor(x)
    if isinstance(x, np.ndarray) or ops.is_tensor(x):
        return x
    return np.asarray(x)


# Numerical Recipes (Press et al., 3rd ed., section 6.2.2, `Erf::erfccheb`'s simpler
# predecessor `erfcc`): erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), z >= 0, with a
# fractional error below 1.2e-7, the precision of float32.
_ERFC_COEFFICIENTS = (
    -1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
    0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277,
)  # fmt: skip


def erf(x):
    """`erf(x)`, in a form every exporter of the backend can write.

    `ops.erf` everywhere but on JAX, whose `lax.erf` lowers to a `chlo` composite
    that TensorFlow's runtime cannot load from a SavedModel exported with jax2tf
    ("unregistered operation 'vhlo.composite_v2'"): there, the Chebyshev fit
    above, elementwise ops that XLA fuses (within 1.2e-7 of erf, relative to
    erfc; tested against `ops.erf`).
    """
    if keras.backend.backend() != "jax":
        return ops.erf(x)
    z = ops.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = _ERFC_COEFFICIENTS[-1]
    for c in reversed(_ERFC_COEFFICIENTS[:-1]):
        poly = c + t * poly
    erfc = t * ops.exp(-z * z + poly)
    return ops.sign(x) * (1.0 - erfc)


# --- BatchNorm on torch ---------------------------------------------------------------------
#
# Keras' torch `BatchNormalization` computes `ops.moments` and normalises with elementwise
# ops, each of which keeps an activation-sized tensor for the backward pass; torch's fused
# kernel (`torch.native_batch_norm`) keeps the input and two per-channel vectors. Measured in
# benchmarks/README.md ("Training step on the torch backend").

#: Set this attribute of a `BatchNormalization` to False to keep it on Keras' own `call`
#: (`use_fused_batch_norm` then leaves it alone). Layers with `synchronized=True`, renorm,
#: a mask, or a symbolic input always take Keras' path.
FUSED_BATCH_NORM_ATTRIBUTE = "kseg_fused_batch_norm"


def _fused_batch_norm_call(layer, inputs, training=None, mask=None):
    """`keras.layers.BatchNormalization.call` with torch's fused kernel; same results."""
    import torch

    keras_call = type(layer).call
    if (
        mask is not None
        or layer.renorm
        or layer.synchronized
        or not getattr(layer, FUSED_BATCH_NORM_ATTRIBUTE, True)
        or not isinstance(inputs, torch.Tensor)
        or inputs.device.type == "meta"
        or inputs.ndim < 2
    ):
        return keras_call(layer, inputs, training=training, mask=mask)
    compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
    x = ops.cast(inputs, compute_dtype)
    axis = layer.axis % x.ndim
    if axis != 1:
        # A view, no copy: NHWC memory seen as NCHW is torch's channels_last format,
        # which its CPU and CUDA batch-norm kernels read in place.
        x = torch.movedim(x, axis, 1)
    gamma = ops.cast(layer.gamma, compute_dtype) if layer.scale else None
    beta = ops.cast(layer.beta, compute_dtype) if layer.center else None
    moving_mean = ops.cast(layer.moving_mean, compute_dtype)
    moving_variance = ops.cast(layer.moving_variance, compute_dtype)
    if training and layer.trainable:
        outputs, mean, invstd = torch.native_batch_norm(
            x, gamma, beta, None, None, True, 0.0, layer.epsilon
        )
        with torch.no_grad():
            # Keras' moving statistics use the biased batch variance (torch's running_var
            # takes the unbiased one), so they are updated here from the kernel's saved
            # mean and 1 / sqrt(var + epsilon), the variance recovered in float64.
            variance = ops.cast(invstd.double().pow(-2) - layer.epsilon, compute_dtype)
            mean = ops.cast(mean, compute_dtype)
            momentum = layer.momentum
            layer.moving_mean.assign(moving_mean * momentum + mean * (1.0 - momentum))
            layer.moving_variance.assign(moving_variance * momentum + variance * (1.0 - momentum))
    else:
        outputs, _, _ = torch.native_batch_norm(
            x, gamma, beta, moving_mean, moving_variance, False, 0.0, layer.epsilon
        )
    if axis != 1:
        outputs = torch.movedim(outputs, 1, axis)
    return ops.cast(outputs, layer.compute_dtype)


def use_fused_batch_norm(model):
    """Makes every `BatchNormalization` in `model` run torch's fused kernel on torch.

    Every nested layer counts (a backbone inside the model, the BatchNorm inside a
    kseg layer, a keras.applications encoder). Only the layer's `call` changes, per
    instance: its class, config, weights and saved files stay Keras' own, so `.keras`
    files load on every backend, with or without kseg. Outputs, gradients and moving
    statistics equal Keras' `call` (tests/test_backend.py). A layer whose attribute
    `FUSED_BATCH_NORM_ATTRIBUTE` is False, or with `synchronized=True`, keeps Keras'
    computation at call time (synchronisation across processes wins). Nothing changes
    on TensorFlow and JAX, which compile Keras' ops into fused programs.

    Returns:
        The number of layers that take the fused path on this backend (0 off torch).
    """
    return _replace_torch_calls(
        model,
        lambda layer: isinstance(layer, keras.layers.BatchNormalization),
        _fused_batch_norm_call,
    )


def _replace_torch_calls(model, applies, call):
    """On torch, gives every nested layer of `model` for which `applies(layer)` holds the
    instance `call` `call(layer, ...)`, unless the instance already has its own (a
    synchronised BatchNorm's, say). Returns the number of layers that apply."""
    if keras.backend.backend() != "torch":
        return 0
    from kseg.training import _keras_internals

    count = 0
    seen = set()
    for layer in _keras_internals.nested_layers(model):
        if id(layer) in seen or not applies(layer):
            continue
        seen.add(id(layer))
        if "call" not in vars(layer):
            layer.call = functools.partial(call, layer)
        count += 1
    return count


# --- Convolutions on torch ------------------------------------------------------------------
#
# Keras' torch `conv` turns an NHWC input into a contiguous NCHW copy and then into a
# channels_last copy again before `conv2d`; each copy costs a pass over the activation, and
# the second one is what autograd keeps for the backward pass. An NHWC tensor seen through
# `permute(0, 3, 1, 2)` already is an NCHW tensor in torch's channels_last memory format,
# which its convolutions take as it is. Measured in benchmarks/README.md ("Training step on
# the torch backend").

#: Set this attribute of a `Conv2D` or `DepthwiseConv2D` to False to keep it on Keras' `call`.
DIRECT_CONV_ATTRIBUTE = "kseg_direct_conv"


def _torch_conv_padding(size, kernel, stride, dilation, padding):
    """torch's symmetric `padding` for one spatial axis, or None when it cannot express it."""
    if padding == "valid":
        return 0
    effective = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + effective - size, 0)
    return None if total % 2 else total // 2


def _direct_conv_call(layer, inputs):
    """`Conv2D.call` / `DepthwiseConv2D.call` on a channels_last view; same results."""
    import torch

    keras_call = type(layer).call
    depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
    if (
        not getattr(layer, DIRECT_CONV_ATTRIBUTE, True)
        or layer.data_format != "channels_last"
        or getattr(layer, "quantization_mode", None) is not None
        or not isinstance(inputs, torch.Tensor)
        or inputs.device.type == "meta"
        or inputs.ndim != 4
    ):
        return keras_call(layer, inputs)
    kernel = ops.convert_to_tensor(layer.kernel)
    padding = [
        _torch_conv_padding(inputs.shape[1 + i], kernel.shape[i], s, d, layer.padding)
        for i, (s, d) in enumerate(zip(layer.strides, layer.dilation_rate))
    ]
    if None in padding:
        return keras_call(layer, inputs)
    channels = inputs.shape[-1]
    if depthwise:
        # (kh, kw, in, multiplier) -> (in * multiplier, 1, kh, kw), one group per channel.
        weight = kernel.reshape(kernel.shape[0], kernel.shape[1], 1, -1).permute(3, 2, 0, 1)
        groups = channels
    else:
        weight = kernel.permute(3, 2, 0, 1)  # (kh, kw, in / groups, out) -> (out, in, kh, kw)
        groups = channels // kernel.shape[2]
    weight = weight.contiguous(memory_format=torch.channels_last)
    bias = ops.convert_to_tensor(layer.bias) if layer.use_bias else None
    x = ops.cast(inputs, kernel.dtype).permute(0, 3, 1, 2)
    outputs = torch.nn.functional.conv2d(
        x, weight, bias, layer.strides, padding, layer.dilation_rate, groups
    ).permute(0, 2, 3, 1)
    if layer.activation is not None:
        return layer.activation(outputs)
    return outputs


def use_direct_conv(model):
    """Makes every NHWC `Conv2D` and `DepthwiseConv2D` in `model` skip Keras' copies on torch.

    As `use_fused_batch_norm`: per instance, nested layers included, only `call`
    changes (classes, configs and saved files stay Keras'); outputs and gradients
    equal Keras' `call` (tests/test_backend.py). Padding that torch cannot express
    symmetrically (`"same"` with an even total, such as a stride-2 3x3 on an even
    size) keeps Keras' path at call time.

    Returns:
        The number of layers changed (0 off torch).
    """
    return _replace_torch_calls(
        model,
        lambda layer: type(layer) in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D),
        _direct_conv_call,
    )
