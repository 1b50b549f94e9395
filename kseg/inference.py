"""Sliding-window, multi-scale and flip test-time inference, and evaluation with it.

Backend-neutral (keras.ops and NumPy). Images go in channels_last, as float
values like the training data (RGB in [0, 255] for the RGB models),
`(B, H, W, C)` with any number of channels C (1 for grayscale, 4 for RGB-NIR,
...); results come back as NumPy arrays at the input resolution, `(B, H, W, K)`
probabilities or `(B, H, W)` class ids. A model whose input and output are
channels_first is used by passing `data_format="channels_first"`.

A model with one output channel (`num_classes=1`) is binary: its logit is
the foreground's, the probabilities are its sigmoid `(B, H, W, 1)` (averaged
over scales and flips like the softmax of a multi-class model) and the class
is 1 where that probability is above 0.5 (one view: where the logit is
positive), else 0.

Procedure (as in mmsegmentation's `EncoderDecoder.slide_inference` and
`aug_test`, and the PSPNet evaluation code):
1. For each scale `s` in `scales`, resize the image bilinearly by `s`.
2. With a `crop_size`: pad the image (bottom and right, with `pad_value`) to
   at least the crop, slide a crop-sized window with `stride`, average the
   *logits* of the windows where they overlap and crop the padding off.
   Without a `crop_size`, run the model on the whole image.
3. Resize the logits bilinearly to the input size and take the softmax
   (the sigmoid for one channel).
4. With `flip=True`, do the same for the horizontally flipped image and flip
   the result back.
5. Average the *probabilities* of all scales and flips.

Size buckets (`size_buckets`): every batch reaches the model through one
function (`_run_bucketed`), which pads it bottom/right with `pad_value` to a
bucketed size and crops the output back, so that a compiled model (XLA on JAX,
a traced function on TensorFlow) sees a bounded number of input shapes
whatever the image sizes:

- Height and width (whole-image inference only) are rounded up with
  `bucket_length`: to a multiple of `min_step` (default 32, the largest output
  stride of the backbones) up to `2 * min_step * per_octave`, then to one of
  `per_octave` (default 4) evenly spaced lengths per octave, so a side grows
  by less than `1 / per_octave` (25 %) beyond that. With `min_step` and
  `per_octave` powers of two, sides up to `L >= 2 * min_step * per_octave`
  take at most `2 * per_octave + per_octave * ceil(log2(L / (2 * min_step *
  per_octave)))` lengths: 8 up to 256 px, 12 up to 512, 16 up to 1024 and 20
  up to 2048 by default, so at most 144 (H, W) shapes up to 512 px and 400 up
  to 2048 px. Multi-scale inference goes through the same ladder, so `scales`
  add no shapes beyond those of the largest scaled size.
- The batch is padded to the next power of two (capped at `batch_size` for the
  sliding window, where a batch that is not the only one is padded to
  `batch_size` as before), the extra rows are dropped: at most
  `floor(log2(B)) + 1` batch sizes for batches up to B.
- Sliding-window windows already have the crop size, so the sliding window
  only pads the batch. The result is exactly that of the unbucketed call (the
  rows of a batch do not interact at inference), hence bucketing is always on
  there by default.
- Whole-image inference gives exactly the unbucketed result only for a model
  whose every output pixel depends on its own input pixel alone (1x1
  convolutions, pointwise activations, normalisation with stored statistics),
  or for an image whose sides already are bucket lengths (nothing is padded).
  A convolution with a spatial kernel sees the padding at the bottom/right
  border, a strided convolution with "same" padding samples another grid when
  an odd side is padded to an even one, and a global pooling (ASPP's image
  pooling) averages the padding too, so a zoo model's result changes
  everywhere, not only near the padding. Measured on a randomly initialised
  tiny DeepLabV3+ (ResNet of width 4, output stride 16) on 37 x 45 and
  50 x 61 images: the probabilities moved by up to 0.09-0.39 (0.007-0.037 on
  average) and the class changed at 4-20 % of the pixels, depending on the
  backend's initial weights. Whole-image bucketing is therefore off by
  default; pass `size_buckets=True` to trade that difference for a bounded
  number of compilations (worth it on JAX, where every new size compiles
  the model again).

Memory on torch: Keras' functional call keeps every intermediate tensor of
the model until it returns, which compiled TensorFlow and JAX avoid but eager
torch cannot. On the torch backend every batch therefore runs through
`lean_call`, which executes the model layer by layer and frees each tensor
after its last use, with the same outputs (figures: benchmarks/README.md,
"Inference memory"). TensorFlow and JAX keep `model.predict_on_batch`.
"""

import gc
import math
import weakref

import keras
import numpy as np
from keras import ops

from kseg._backend import no_gradients
from kseg._common import normalize_tuple, standardize_data_format
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


#: The default ladder of `bucket_length`: `(min_step, per_octave)`.
DEFAULT_SIZE_BUCKETS = (32, 4)


def bucket_length(length, min_step=32, per_octave=4):
    """The bucketed length of an image side: `length` rounded up on a ladder.

    Up to `2 * min_step * per_octave` the length is rounded up to a multiple
    of `min_step`; above, a length in `(2**m, 2**(m + 1)]` is rounded up to a
    multiple of `2**m / per_octave` (when that is larger than `min_step`), so
    each octave has `per_octave` evenly spaced bucket lengths and a side
    grows by less than `1 / per_octave`.

    Args:
        length: the side in pixels (a positive int).
        min_step: the smallest step (a positive int). Defaults to 32.
        per_octave: bucket lengths per octave (a power of two). Defaults to 4.

    Returns:
        The bucket length, an int `>= length`.

    Raises:
        ValueError: for a length, `min_step` or `per_octave` out of range.
    """
    min_step, per_octave = _check_ladder((min_step, per_octave), "(min_step, per_octave)")
    if isinstance(length, bool) or int(length) != length or length < 1:
        raise ValueError(f"Expected `length` to be a positive int. Received: length={length!r}")
    length = int(length)
    octave = 1 << max(length - 1, 1).bit_length() - 1  # 2**m with 2**m < length <= 2**(m+1)
    step = max(min_step, octave // per_octave)
    return -(-length // step) * step


def _check_ladder(ladder, name="size_buckets"):
    """`(min_step, per_octave)` as ints, checked; `name` is the argument named in the error."""
    try:
        min_step, per_octave = ladder
    except (TypeError, ValueError):
        min_step = per_octave = None
    ok = all(
        not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= 1
        for v in (min_step, per_octave)
    )
    if not ok or int(per_octave) & (int(per_octave) - 1):
        raise ValueError(
            f"Expected `{name}` to be None, True, False or a pair (min_step, per_octave) "
            "of positive ints, per_octave a power of two. "
            f"Received: {name}={ladder!r}"
        )
    return int(min_step), int(per_octave)


def _size_ladder(size_buckets, whole_image):
    """The `(min_step, per_octave)` ladder of `size_buckets`, or None for no bucketing."""
    if size_buckets is None:
        # Default: bucket where it is exact (the sliding window's batches).
        return DEFAULT_SIZE_BUCKETS if not whole_image else None
    if size_buckets is True:
        return DEFAULT_SIZE_BUCKETS
    if size_buckets is False:
        return None
    return _check_ladder(size_buckets)


def _next_power_of_two(n):
    return 1 << (int(n) - 1).bit_length()


def _run_bucketed(
    model, x, output_key, data_format, pad_values, *, ladder=None, batch_to=None, spatial=False
):
    """Runs the model on `x` padded to a bucketed shape; returns logits for `x` alone.

    The one place where batches reach the model. `x` is padded bottom/right
    with `pad_values`: with `spatial` and a `ladder`, height and width to
    `bucket_length`; the batch to `batch_to` rows (when given), else, with a
    `ladder`, to the next power of two. The extra rows are dropped; when the
    sides were padded the logits are resized (bilinearly, only if the model
    returns another size) to the padded size and cropped to `x`'s size.
    """
    n, height, width, channels = x.shape
    full_h, full_w = height, width
    if spatial and ladder is not None:
        full_h, full_w = bucket_length(height, *ladder), bucket_length(width, *ladder)
    rows = n
    if batch_to is not None:
        rows = max(batch_to, n)
    elif ladder is not None:
        rows = _next_power_of_two(n)
    if (rows, full_h, full_w) != (n, height, width):
        padded = np.empty((rows, full_h, full_w, channels), np.float32)
        padded[...] = pad_values
        padded[:n, :height, :width] = x
        x = padded
    logits = _run_model(model, x, output_key, data_format)[:n]
    if (full_h, full_w) != (height, width):
        logits = _resize(logits, (full_h, full_w))[:, :height, :width]
    return logits


# ---------------------------------------------------------------------------
# Lean layer-by-layer execution of functional models.
#
# A Keras functional call (`Functional._run_through_graph`) keeps every
# intermediate tensor in one dict until the call returns. Compiled TensorFlow
# and JAX free them inside the compiled program, eager torch cannot: one
# DeepLabV3+ forward held every activation of the network at once. The
# runner below executes the same nodes in the same order and drops each
# tensor after the last node that reads it.


def _functional_graph(model):
    """The functional graph that `model.call` executes, or None.

    A `keras.Model(inputs, outputs)`, a subclass of it that keeps Keras'
    functional `call` (such as `kseg.models.SegmentationModel`), and a built
    `keras.Sequential` have one; a subclass that defines its own `call` (or an
    unbuilt Sequential, or any other layer) has none.
    """
    if not isinstance(model, keras.Model):
        return None
    if isinstance(model, keras.Sequential):
        if type(model).call is not keras.Sequential.call:
            return None
        model = getattr(model, "_functional", None)
        if model is None:
            return None
    for cls in type(model).__mro__:
        if cls.__name__ == "Functional" and cls.__module__.startswith("keras."):
            if type(model).call is not cls.call or not hasattr(model, "_nodes_by_depth"):
                return None
            return model
    return None


def _graph_steps(graph, needed):
    """The nodes to run for the flat outputs `needed` of `graph`, and when to free.

    Returns `(steps, pinned)`: `steps` lists `(node, used, free)` in Keras'
    execution order (decreasing depth, then Keras' order within a depth),
    where `used` flags the node's flat outputs that a later node reads or
    that are needed, and `free` names (by `id`) the node's inputs that no
    later node reads, released as soon as the node has them; `pinned` holds
    the ids of the needed outputs, never released.
    Nodes whose inputs cannot be computed from the graph's inputs are skipped
    (as Keras does); nodes that no needed output depends on are not run.
    """
    available = {id(t) for t in graph.inputs}
    order = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            if all(id(t) in available for t in node.input_tensors):
                order.append(node)
                available.update(id(t) for t in node.outputs)
    pinned = {id(graph.outputs[i]) for i in needed}

    # Liveness, from the needed outputs back to the inputs.
    read = set(pinned)
    live = []
    for node in reversed(order):
        used = [id(t) in read for t in node.outputs]
        if any(used):
            read.update(id(t) for t in node.input_tensors)
            live.append((node, used))
    live.reverse()

    # The reference count of a tensor is the number of live nodes that read
    # it; it drops to zero after the last of them. Outputs that no node reads
    # (and that are not needed) are never stored.
    last_reader = {}
    for index, (node, _) in enumerate(live):
        for t in node.input_tensors:
            last_reader[id(t)] = index
    frees = [[] for _ in live]
    for tensor_id, index in last_reader.items():
        if tensor_id not in pinned:
            frees[index].append(tensor_id)
    return [(node, used, free) for (node, used), free in zip(live, frees)], pinned


def _standardize_inputs(graph, inputs):
    """`inputs` as the flat list of tensors that `graph`'s inputs receive.

    As Keras' functional call does: a lone tensor for a one-input model, a
    dict by the input names (or the keys of a dict of inputs), else the
    structure of the model's inputs; each value converted to the dtype of
    its input, a trailing axis of size 1 added or squeezed to match its rank.
    """
    expected = graph.inputs
    structure = graph.input
    if isinstance(inputs, dict) and not isinstance(structure, dict):
        names = [t.name for t in expected]
        missing = [name for name in names if name not in inputs]
        if missing:
            raise ValueError(
                f"Expected `inputs` to have the keys {names}, the model's input names. "
                f"Received: inputs with keys {sorted(inputs)}"
            )
        flat = [inputs[name] for name in names]
    elif len(expected) == 1 and not isinstance(inputs, (dict, list, tuple)):
        flat = [inputs]
    else:
        flat = keras.tree.flatten(inputs)
    if len(flat) != len(expected):
        raise ValueError(
            f"Expected `inputs` to hold {len(expected)} tensors, as the model's inputs "
            f"{[t.name for t in expected]}. Received: {len(flat)} tensors"
        )
    values = []
    for value, reference in zip(flat, expected):
        if value is not None:
            value = ops.convert_to_tensor(value, dtype=reference.dtype)
            value = _match_rank(value, reference)
        values.append(value)
    return values


def _match_rank(value, reference):
    rank, expected = len(value.shape), len(reference.shape)
    if rank == expected + 1 and value.shape[-1] == 1:
        return ops.squeeze(value, axis=-1)
    if rank == expected - 1 and reference.shape[-1] == 1:
        return ops.expand_dims(value, axis=-1)
    if rank != expected:
        raise ValueError(
            f"Expected an input of rank {expected} (shape {tuple(reference.shape)}) for the "
            f"model input {reference.name!r}. Received: shape {tuple(value.shape)}"
        )
    return value


def _inlined_inputs(args, kwargs):
    """The `inputs` of a call of a functional model, or None when the call passes more.

    A call with a mask or other keyword arguments (beyond `training`) runs as
    a plain layer call.
    """
    extra = {
        key: value
        for key, value in kwargs.items()
        if key != "training" and not (key == "mask" and value is None)
    }
    if len(args) == 1 and not extra:
        return args[0]
    if not args and list(extra) == ["inputs"]:
        return extra["inputs"]
    return None


def _run_graph(graph, inputs, needed):
    """Runs `graph` on the flat tensor list `inputs`; returns its flat outputs.

    Positions not in `needed` come back as None. `inputs` is emptied, so that
    the run holds the only reference to its inputs and drops each one after
    its last reader.
    """
    steps, pinned = _graph_steps(graph, needed)
    values = dict(zip([id(t) for t in graph.inputs], inputs))
    inputs.clear()
    for node, used, free in steps:
        freed = _weak_references(values[t] for t in free)
        outputs = _run_node(node, used, free, values)
        values.update(
            (id(tensor), value) for tensor, value, keep in zip(node.outputs, outputs, used) if keep
        )
        outputs.clear()
        if any(ref() is not None for ref in freed):
            # Kept alive by garbage reference cycles: on torch, `keras.tree`
            # (torch's pytree) leaves a cycle holding the structure it
            # flattened, and every layer call flattens its arguments. They are
            # young; collecting the two young generations is cheap (about
            # 0.1 ms; a full collection takes hundreds of ms in a process with
            # a large model).
            gc.collect(1)
    return [values[id(t)] if id(t) in pinned else None for t in graph.outputs]


def _weak_references(tensors):
    references = []
    for tensor in tensors:
        try:
            references.append(weakref.ref(tensor))
        except TypeError:  # None (an optional input), or no weak references
            pass
    return references


def _run_node(node, used, free, values):
    """Calls one node on the tensors in `values`; returns its flat outputs (a new list).

    The node's inputs named in `free` leave `values` before the call, so that
    they die as soon as the call lets go of them.
    """
    operation = node.operation
    args, kwargs = node.arguments.fill_in(values)
    for tensor_id in free:
        del values[tensor_id]
    if "training" in getattr(operation, "_call_context_args", ()):
        # What `model(x, training=False)` passes to every layer.
        kwargs["training"] = False
    graph = _functional_graph(operation)
    nested = None if graph is None else _inlined_inputs(args, kwargs)
    if nested is None:
        return _flat_outputs(operation(*args, **kwargs), len(node.outputs))
    # Inline the nested model and hand its inputs over to it, so that they
    # are freed there after their last reader.
    del args, kwargs
    flat = _standardize_inputs(graph, nested)
    del nested
    return _run_graph(graph, flat, [i for i, keep in enumerate(used) if keep])


def _flat_outputs(outputs, count):
    """A layer's outputs as a new flat list, as `keras.tree.flatten` orders them."""
    if count == 1 and ops.is_tensor(outputs):
        return [outputs]
    flat = list(keras.tree.flatten(outputs))
    # Free the reference cycle that flattening leaves on torch (see
    # `_run_graph`) now, while it is in the youngest generation.
    gc.collect(0)
    return flat


def lean_call(model, inputs):
    """Runs `model(inputs, training=False)`, freeing each intermediate tensor early.

    A Keras functional call keeps every intermediate tensor of the graph until
    it returns. Compiled TensorFlow and JAX free them inside the compiled
    program, but eager torch cannot, so a torch forward of a large model holds
    all its activations at once. `lean_call` executes the model's graph layer
    by layer in Keras' own order (the nodes of `model._nodes_by_depth`, each
    layer called with the arguments recorded when the model was built, and
    `training=False` as a functional call passes it) and drops each tensor
    right after the last layer that reads it. Functional models used as layers
    (a backbone inside a segmentation model, the model wrapped by
    `kseg.models.SegmentationModel`, a built `keras.Sequential`) are run the
    same way, inline; outputs of theirs that nothing reads are not computed.
    On torch it runs under `torch.no_grad()`. The outputs are those of
    `model(inputs, training=False)`, bit for bit on the same backend.

    A model that is not functional (a `keras.Model` subclass with its own
    `call`, any other Keras layer) is called as `model(inputs, training=False)`
    (under `torch.no_grad()` on torch): it gets no lean execution, but the
    same result. A nested model that is called with a mask or other keyword
    arguments runs as one plain call inside the lean run.

    kseg's inference (`predict`, `predict_probabilities`,
    `sliding_window_logits`, `evaluate`) uses it on the torch backend. On
    TensorFlow and JAX `model.predict_on_batch` runs the compiled model, which
    frees its intermediates already and is faster than this eager run.

    Args:
        model: a `keras.Model` (or `keras.layers.Layer`).
        inputs: what `model(...)` takes: a tensor or array for a one-input
            model, else the structure of its inputs (or a dict by input name).

    Returns:
        The outputs of `model(inputs, training=False)`, as backend tensors in
        the structure the model returns.

    Example:

    >>> model = kseg.models.UNet(3, base_filters=4, depth=2, padding="same")
    >>> logits = kseg.inference.lean_call(model, np.zeros((1, 32, 32, 3), "float32"))
    >>> tuple(logits.shape)
    (1, 32, 32, 3)
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"Expected `model` to be a keras.Model or Keras layer. Received: model={model!r} "
            f"of type {type(model).__name__}"
        )
    graph = _functional_graph(model)
    with no_gradients():
        if graph is None:
            return model(inputs, training=False)
        flat = _standardize_inputs(graph, inputs)
        outputs = _run_graph(graph, flat, range(len(graph.outputs)))
    structure = graph.output
    if isinstance(structure, (list, tuple)) and len(structure) == 1:
        structure = structure[0]
    return keras.tree.pack_sequence_as(structure, outputs)


def _runs_lean(model):
    """Whether `_run_model` runs `model` with `lean_call`.

    On torch, a functional model that is not compiled (`jit_compile=True`
    runs `torch.compile` in `predict_on_batch`). On TensorFlow and JAX,
    `predict_on_batch` runs the compiled model, which already frees its
    intermediate tensors, faster than the eager layer-by-layer run.
    """
    return (
        keras.backend.backend() == "torch"
        and _functional_graph(model) is not None
        and not getattr(model, "jit_compile", False)
    )


def _run_model(model, x, output_key, data_format):
    """Runs the model on a channels_last batch and returns channels_last float32 logits.

    The model runs with `lean_call` where `_runs_lean` says so, else with
    `model.predict_on_batch` (or a plain call for a model that has none).
    """
    if data_format == "channels_first":
        x = np.transpose(x, (0, 3, 1, 2))
    if _runs_lean(model):
        outputs = lean_call(model, x)
    elif hasattr(model, "predict_on_batch"):
        outputs = model.predict_on_batch(x)
    else:
        outputs = model(x)
    logits = _to_numpy(_select_output(outputs, output_key)).astype(np.float32)
    if logits.ndim != 4:
        raise ValueError(
            "Expected the model to return logits of rank 4 (B, H, W, K). "
            f"Received: output shape {logits.shape}"
        )
    if data_format == "channels_first":
        logits = np.transpose(logits, (0, 2, 3, 1))
    return logits


def _window_starts(length, crop, stride):
    """Window offsets covering [0, length) with windows of `crop` (length >= crop)."""
    count = max(math.ceil((length - crop) / stride), 0) + 1
    return sorted({min(i * stride, length - crop) for i in range(count)})


def sliding_window_logits(
    model,
    images,
    crop_size,
    *,
    stride=None,
    pad_value=None,
    batch_size=4,
    output_key="main",
    data_format=None,
    size_buckets=None,
):
    """Predicts logits for images of any size with a sliding window.

    The images are padded (bottom and right) with `pad_value` to at least
    `crop_size`, windows of `crop_size` slide with `stride` (the last window
    of a row or column is moved back to end at the border), the logits of
    overlapping windows are averaged and the padding is cropped off. Logits
    of a window are resized bilinearly to the window when the model returns
    another size.

    Args:
        model: a `keras.Model` (or a callable) taking `(B, h, w, C)` images
            and returning logits, or a dict of outputs holding `output_key`.
        images: `(B, H, W, C)` channels_last array (C channels, any count).
        crop_size: int or `(height, width)` of the windows (the training crop).
        stride: int or `(height, width)`. Defaults to two thirds of the crop
            (rounded up), a third of overlap as in PSPNet's evaluation.
        pad_value: padding value: a scalar or one value per channel. Defaults
            to None: the ImageNet mean colour for 3-channel images (zero after
            the RGB models' normalisation), `DEFAULT_PAD_VALUE` (0.0) for any
            other channel count.
        batch_size: windows per model call. Defaults to 4.
        output_key: key of the logits when the model returns a dict.
            Defaults to "main".
        data_format: layout of the model's input and output. Defaults to
            `keras.config.image_data_format()`.
        size_buckets: None or True (default: pad a short batch of windows to
            the next power of two, at most `batch_size`, so that the model
            sees at most `floor(log2(batch_size)) + 2` shapes; the result is
            the same), or False (a batch of fewer windows than `batch_size` is
            run as it is, a new shape per count). A `(min_step, per_octave)`
            pair acts like True here: the windows already have one size.
            See the module docstring.

    Returns:
        float32 NumPy logits `(B, H, W, K)`.

    Raises:
        ValueError: for bad `crop_size`, `stride`, `pad_value`, `size_buckets`
            or images.
    """
    data_format = standardize_data_format(data_format)
    crop_h, crop_w = _pair("crop_size", crop_size)
    if stride is None:
        stride = (math.ceil(2 * crop_h / 3), math.ceil(2 * crop_w / 3))
    stride_h, stride_w = _pair("stride", stride)
    ladder = _size_ladder(size_buckets, whole_image=False)
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(
            f"Expected `batch_size` to be a positive int. Received: batch_size={batch_size!r}"
        )
    batch_size = int(batch_size)
    images = _check_images(images, model, data_format)
    n, height, width, channels = images.shape
    pad_values = _pad_values(pad_value, channels)
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    if pad_h or pad_w:
        padded = np.empty((n, height + pad_h, width + pad_w, channels), np.float32)
        padded[...] = pad_values
        padded[:, :height, :width] = images
        images = padded
    full_h, full_w = images.shape[1:3]
    windows = [
        (b, top, left)
        for b in range(n)
        for top in _window_starts(full_h, crop_h, stride_h)
        for left in _window_starts(full_w, crop_w, stride_w)
    ]
    total = None
    count = np.zeros((n, full_h, full_w, 1), np.float32)
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        batch = np.stack([images[b, t : t + crop_h, x0 : x0 + crop_w] for b, t, x0 in chunk])
        if len(windows) > batch_size:
            # Keep one batch shape, so that a compiled model is not traced again.
            rows = batch_size
        elif ladder is not None:
            rows = min(_next_power_of_two(len(chunk)), batch_size)
        else:
            rows = len(chunk)
        logits = _run_bucketed(model, batch, output_key, data_format, pad_values, batch_to=rows)
        logits = _resize(logits, (crop_h, crop_w))
        if total is None:
            total = np.zeros((n, full_h, full_w, logits.shape[-1]), np.float32)
        for (b, t, x0), window_logits in zip(chunk, logits):
            total[b, t : t + crop_h, x0 : x0 + crop_w] += window_logits
            count[b, t : t + crop_h, x0 : x0 + crop_w] += 1.0
    return (total / count)[:, :height, :width]


def predict_probabilities(
    model,
    images,
    *,
    crop_size=None,
    stride=None,
    scales=(1.0,),
    flip=False,
    pad_value=None,
    batch_size=4,
    output_key="main",
    data_format=None,
    size_buckets=None,
):
    """Class probabilities with optional sliding window and test-time augmentation.

    See the module docstring for the procedure. With the defaults it is the
    softmax of one full-image prediction (the sigmoid for a model with one
    output channel).

    Args:
        model: a `keras.Model` (or a callable) returning logits, or a dict of
            outputs holding `output_key`.
        images: `(B, H, W, C)` or `(H, W, C)` channels_last array with the
            channel count C of the model's input (RGB in [0, 255] for the RGB
            models).
        crop_size: window size for sliding-window inference, or None for
            whole-image inference. Defaults to None.
        stride: window stride; see `sliding_window_logits`.
        scales: image scale factors whose probabilities are averaged, e.g.
            (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) as in DeepLab. Defaults to (1.0,).
        flip: also average the horizontally flipped prediction. Defaults to False.
        pad_value, batch_size, output_key, data_format: see
            `sliding_window_logits`; without a `crop_size`, `pad_value` pads
            the whole images to their size bucket.
        size_buckets: how the shapes that reach the model are bucketed (see
            the module docstring). None (default): the sliding window pads
            short batches of windows (exact, the same result); whole-image
            inference runs every image at its own size (a new compilation per
            size). True: also whole-image inference pads height and width
            bottom/right to `bucket_length` and the batch to a power of two,
            and crops the result back: at most 144 input shapes per batch
            size for sides up to 512 px, but the result of a model with
            spatial kernels changes (see the module docstring). A pair
            `(min_step, per_octave)`: True with that ladder. False: no
            bucketing at all.

    Returns:
        float32 NumPy probabilities `(B, H, W, K)` (or `(H, W, K)` for one
        image). For a binary model (K = 1) the one channel is the foreground
        probability (the sigmoid of the logit).
    """
    probs, single = _average_probabilities(
        model,
        images,
        crop_size=crop_size,
        stride=stride,
        scales=scales,
        flip=flip,
        pad_value=pad_value,
        batch_size=batch_size,
        output_key=output_key,
        data_format=data_format,
        size_buckets=size_buckets,
    )
    probs = probs.astype(np.float32)
    return probs[0] if single else probs


def predict(model, images, **kwargs):
    """Predicted class ids `(B, H, W)` (int32) (or `(H, W)` for one image).

    The argmax of `predict_probabilities`; for a binary model (one output
    channel), 1 where the foreground probability is above 0.5, else 0.
    Takes the same keyword arguments as `predict_probabilities`.
    """
    probs, single = _average_probabilities(model, images, **kwargs)
    classes = _classes(probs)
    return classes[0] if single else classes


def _classes(probs):
    """int32 class ids of `(B, H, W, K)` probabilities (threshold 0.5 for K = 1)."""
    if probs.shape[-1] == 1:
        return (probs[..., 0] > 0.5).astype(np.int32)
    return np.argmax(probs, axis=-1).astype(np.int32)


def _average_probabilities(
    model,
    images,
    *,
    crop_size=None,
    stride=None,
    scales=(1.0,),
    flip=False,
    pad_value=None,
    batch_size=4,
    output_key="main",
    data_format=None,
    size_buckets=None,
):
    """`predict_probabilities` before the float32 cast; also says if one image was given."""
    data_format = standardize_data_format(data_format)
    images = _to_numpy(images)
    single = images.ndim == 3
    images = _check_images(
        images[None] if single else images, model, data_format, shape=images.shape
    )
    scales = tuple(float(s) for s in (scales if isinstance(scales, (list, tuple)) else [scales]))
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"Expected `scales` to be positive numbers. Received: scales={scales!r}")
    whole_ladder = _size_ladder(size_buckets, whole_image=True) if crop_size is None else None
    pad_values = _pad_values(pad_value, images.shape[-1])
    height, width = images.shape[1:3]
    total = None
    views = 0
    for scale in scales:
        size = (max(int(round(height * scale)), 1), max(int(round(width * scale)), 1))
        scaled = _resize(images, size)
        for flipped in (False, True) if flip else (False,):
            x = scaled[:, :, ::-1] if flipped else scaled
            x = np.ascontiguousarray(x)
            if crop_size is None:
                logits = _run_bucketed(
                    model,
                    x,
                    output_key,
                    data_format,
                    pad_values,
                    ladder=whole_ladder,
                    spatial=True,
                )
            else:
                logits = sliding_window_logits(
                    model,
                    x,
                    crop_size,
                    stride=stride,
                    pad_value=pad_value,
                    batch_size=batch_size,
                    output_key=output_key,
                    data_format=data_format,
                    size_buckets=size_buckets,
                )
            probs = _probabilities(_resize(logits, (height, width)))
            if flipped:
                probs = probs[:, :, ::-1]
            total = probs if total is None else total + probs
            views += 1
    return total / views, single


def evaluate(model, dataset, metrics, *, steps=None, reset=True, verbose=0, **predict_kwargs):
    """Evaluates a model with `predict_probabilities` and returns the metric results.

    Runs `predict_probabilities(model, images, **predict_kwargs)` on every
    batch and calls `metric.update_state(masks, probabilities)` for each
    metric (kseg's metrics take `(B, H, W)` labels with 255 ignored and
    `(B, H, W, K)` scores; with `data_format="channels_first"` the scores are
    passed as `(B, K, H, W)`, the layout kseg's metrics then expect). Feed full-size images with
    `kseg.data.eval_pipeline(ds, batch_size=1)` and pass `crop_size` for
    sliding-window inference, so that no pixel is resized or dropped.

    A binary model (one output channel) is scored on its 0/1 class map: the
    metrics get `metric.update_state(masks, classes)` with the int32 `(B, H, W)`
    map of `predict`, so 2-class metrics that take label maps, such as
    `kseg.metrics.MeanIoU(2)`, score background and foreground.

    Args:
        model: see `predict_probabilities`.
        dataset: an iterable of `(images, masks)` batches (a `tf.data.Dataset`
            or a list of NumPy pairs); extra elements are ignored.
        metrics: a metric object or a list of them.
        steps: stop after this many batches. Defaults to the whole dataset.
        reset: reset the metrics first. Defaults to True.
        verbose: 1 shows a progress bar. Defaults to 0.
        **predict_kwargs: `crop_size`, `stride`, `scales`, `flip`,
            `size_buckets`, ... for `predict_probabilities`.

    Returns:
        A dict `{metric.name: result}`, results as floats (or NumPy arrays
        for vector-valued metrics). The metric objects keep their state, so
        e.g. `per_class_iou()` can be read afterwards.

    Raises:
        ValueError: from `metric.check_labels()` after a batch, when a kseg metric
            saw labels that are neither classes nor the ignore index.

    Example:

    >>> miou = kseg.metrics.MeanIoU(21)
    >>> kseg.inference.evaluate(model, val_ds, [miou], crop_size=513, flip=True)
    {'mean_iou': 0.78...}
    """
    if not isinstance(metrics, (list, tuple)):
        metrics = [metrics]
    channels_first = standardize_data_format(predict_kwargs.get("data_format")) == "channels_first"
    if reset:
        for metric in metrics:
            metric.reset_state()
    progbar = keras.utils.Progbar(steps) if verbose else None
    for step, batch in enumerate(dataset):
        if steps is not None and step >= steps:
            break
        images, masks = _to_numpy(batch[0]), _to_numpy(batch[1])
        if images.ndim != 4:
            raise ValueError(
                "Expected `dataset` to yield batches of images (B, H, W, C). "
                f"Received: images.shape={images.shape}"
            )
        probs, _ = _average_probabilities(model, images, **predict_kwargs)
        if probs.shape[-1] == 1:
            probs = _classes(probs)
        else:
            probs = probs.astype(np.float32)
            if channels_first:
                probs = np.transpose(probs, (0, 3, 1, 2))
        for metric in metrics:
            metric.update_state(masks, probs)
            if callable(getattr(metric, "check_labels", None)):
                metric.check_labels()  # labels that are not classes: ValueError
        if progbar is not None:
            progbar.update(step + 1)
    results = {}
    for metric in metrics:
        value = _to_numpy(metric.result())
        results[metric.name] = float(value) if value.ndim == 0 else value
    return results


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
