"""The Keras internals that the lean runner reads, and nothing else: one place to update.

`kseg.inference.lean_call` walks a functional model's graph as Keras' own
functional call does (`Functional._run_through_graph`, keras 3.15), which
needs what Keras keeps but does not document:

- `Functional`: the Keras class of functional models (found by its name in the
  model's class hierarchy, so that `keras.src` is not imported);
- `Functional._nodes_by_depth`: `{depth: [Node, ...]}`, the graph's layer calls;
- `Sequential._functional`: the functional model that a built Sequential runs;
- `Node.operation`, `Node.is_input`, `Node.input_tensors`, `Node.outputs` and
  `Node.arguments.fill_in(values)`: one call of a layer, its Keras tensors and
  its recorded arguments;
- `Layer._call_context_args`: the call-context arguments (`training`) that a
  functional call passes on to the layer.

tests/inference/test_keras_graph.py checks each of them on a small model and
fails naming the Keras version when one changes.
"""

import collections

import keras

#: One layer call of a functional graph: the layer (or Keras operation), its
#: input and output Keras tensors (flat lists), and `fill_in(values)`, which
#: returns the call's `(args, kwargs)` with every Keras tensor `t` replaced by
#: `values[id(t)]`.
GraphNode = collections.namedtuple("GraphNode", ["operation", "inputs", "outputs", "fill_in"])


def functional_graph(model):
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


def graph_nodes(graph):
    """The layer calls of a functional `graph` as `GraphNode`s, in Keras' execution order.

    Decreasing depth, then Keras' order within a depth; the input nodes are left out.
    """
    nodes = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            nodes.append(
                GraphNode(node.operation, node.input_tensors, node.outputs, node.arguments.fill_in)
            )
    return nodes


def receives_training(operation):
    """Whether a functional call passes `training` on to `operation` (every Keras layer does)."""
    return "training" in getattr(operation, "_call_context_args", ())
