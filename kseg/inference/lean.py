"""The lean graph runner: a functional model run layer by layer, each tensor freed after its last use.

A Keras functional call (`Functional._run_through_graph`) keeps every
intermediate tensor in one dict until the call returns. Compiled TensorFlow
and JAX free them inside the compiled program, eager torch cannot: one
DeepLabV3+ forward held every activation of the network at once. The runner
here executes the same nodes in the same order and drops each tensor after
the last node that reads it, with the same outputs (figures:
benchmarks/README.md, "Inference memory"). The Keras internals it reads are
those of `kseg.inference._keras_graph`.
"""

import gc
import weakref

import keras
from keras import ops

from kseg._backend import no_gradients
from kseg.inference._keras_graph import functional_graph, graph_nodes, receives_training


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
    for node in graph_nodes(graph):
        if all(id(t) in available for t in node.inputs):
            order.append(node)
            available.update(id(t) for t in node.outputs)
    pinned = {id(graph.outputs[i]) for i in needed}

    # Liveness, from the needed outputs back to the inputs.
    read = set(pinned)
    live = []
    for node in reversed(order):
        used = [id(t) in read for t in node.outputs]
        if any(used):
            read.update(id(t) for t in node.inputs)
            live.append((node, used))
    live.reverse()

    # The reference count of a tensor is the number of live nodes that read
    # it; it drops to zero after the last of them. Outputs that no node reads
    # (and that are not needed) are never stored.
    last_reader = {}
    for index, (node, _) in enumerate(live):
        for t in node.inputs:
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
    args, kwargs = node.fill_in(values)
    for tensor_id in free:
        del values[tensor_id]
    if receives_training(operation):
        # What `model(x, training=False)` passes to every layer.
        kwargs["training"] = False
    graph = functional_graph(operation)
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
    graph = functional_graph(model)
    with no_gradients():
        if graph is None:
            return model(inputs, training=False)
        flat = _standardize_inputs(graph, inputs)
        outputs = _run_graph(graph, flat, range(len(graph.outputs)))
    structure = graph.output
    if isinstance(structure, (list, tuple)) and len(structure) == 1:
        structure = structure[0]
    return keras.tree.pack_sequence_as(structure, outputs)
