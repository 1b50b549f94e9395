"""The Keras internals that kseg's lean runner reads (kseg/inference/_keras_graph.py).

Keras does not document them, so an upgrade may rename or reshape them. Each
check here reads one of them on a small functional model and fails naming
the attribute and the installed Keras version, so that such an upgrade stops
here, in one place, instead of in the middle of `kseg.inference.lean_call`.
"""

import keras
import numpy as np
import pytest

from kseg.inference import _keras_graph

MODULE = "kseg/inference/_keras_graph.py"


def _fail(attribute, problem):
    pytest.fail(
        f"kseg's lean runner reads Keras private attribute {attribute}, {problem} in Keras "
        f"{keras.__version__}: update {MODULE} (and this test) to the new Keras."
    )


def _private(obj, name, kind=None, owner=None):
    """`obj.<name>`, failing with the Keras version when it is absent or not a `kind`."""
    attribute = f"{owner or type(obj).__name__}.{name}"
    if not hasattr(obj, name):
        _fail(attribute, "absent")
    value = getattr(obj, name)
    if kind is not None and not isinstance(value, kind):
        _fail(attribute, f"a {type(value).__name__} where kseg expects {kind}")
    return value


def _model():
    """Input -> stem -> (conv, dropout) -> add -> a nested Sequential head."""
    inputs = keras.Input((6, 6, 3), name="image")
    x = keras.layers.Conv2D(4, 1, name="stem")(inputs)
    a = keras.layers.Conv2D(4, 1, name="conv")(x)
    b = keras.layers.Dropout(0.5, name="dropout")(x)
    y = keras.layers.Add(name="add")([a, b])
    head = keras.Sequential([keras.Input((6, 6, 4)), keras.layers.Conv2D(2, 1)], name="head")
    return keras.Model(inputs, head(y), name="small")


def _nodes_by_depth(graph):
    nodes = _private(graph, "_nodes_by_depth", dict, owner="Functional")
    for depth, at_depth in nodes.items():
        if not isinstance(depth, int) or not isinstance(at_depth, list):
            _fail("Functional._nodes_by_depth", "not a dict {int depth: [Node, ...]}")
    return nodes


def test_functional_models_have_the_class_functional():
    for model in (_model(), _private(_model().get_layer("head"), "_functional")):
        classes = [
            cls
            for cls in type(model).__mro__
            if cls.__name__ == "Functional" and cls.__module__.startswith("keras.")
        ]
        if not classes:
            _fail("Functional (the class of functional models)", "absent")
        if type(model).call is not classes[0].call:
            _fail("Functional.call", "not the call that functional models run")


def test_nodes_by_depth_lists_the_layer_calls_deepest_first():
    model = _model()
    nodes = _nodes_by_depth(model)
    by_depth = {
        depth: [_private(node, "operation", owner="Node") for node in at_depth]
        for depth, at_depth in nodes.items()
    }
    names = {
        depth: {getattr(operation, "name", None) for operation in operations}
        for depth, operations in by_depth.items()
    }
    # Keras runs the graph by decreasing depth: the input first, the output last.
    deepest, last = max(names), min(names)
    if names[deepest] != {"image"} or names[last] != {"head"}:
        _fail("Functional._nodes_by_depth", f"not ordered input-deepest ({names})")
    assert {"stem", "conv", "dropout", "add"} <= set().union(*names.values())


def test_node_attributes():
    model = _model()
    nodes = [node for at_depth in _nodes_by_depth(model).values() for node in at_depth]
    for node in nodes:
        _private(node, "operation", owner="Node")
        is_input = _private(node, "is_input", bool, owner="Node")
        inputs = _private(node, "input_tensors", list, owner="Node")
        outputs = _private(node, "outputs", list, owner="Node")
        arguments = _private(node, "arguments", owner="Node")
        if not callable(_private(arguments, "fill_in", owner="Node.arguments")):
            _fail("Node.arguments.fill_in", "not callable")
        for tensor in inputs + outputs:
            if not isinstance(tensor, keras.KerasTensor):
                _fail("Node.input_tensors / Node.outputs", "not lists of KerasTensors")
        if is_input != (not inputs):
            _fail("Node.is_input", "not the node that has no input tensors")

    # `fill_in` puts values, found by the `id` of each Keras tensor, into the call's arguments.
    (add,) = [node for node in nodes if node.operation.name == "add"]
    left, right = add.input_tensors
    filled = add.arguments.fill_in({id(left): "left", id(right): "right"})
    if filled != ((["left", "right"],), {}):
        _fail("Node.arguments.fill_in", f"not (args, kwargs) with the values in ({filled!r})")
    (stem,) = [node for node in nodes if node.operation.name == "stem"]
    (image,) = stem.input_tensors
    if stem.arguments.fill_in({id(image): 7}) != ((7,), {}):
        _fail("Node.arguments.fill_in", "not (args, kwargs) for a one-tensor call")


def test_sequential_keeps_its_functional_model():
    head = _model().get_layer("head")
    functional = _private(head, "_functional", keras.Model, owner="Sequential")
    _nodes_by_depth(functional)
    assert functional.outputs[0].shape == head.outputs[0].shape


def test_layers_name_the_call_context_arguments():
    for layer in (keras.layers.Conv2D(2, 1), keras.layers.Dropout(0.5)):
        context = _private(layer, "_call_context_args", owner="Layer")
        if "training" not in context:
            _fail("Layer._call_context_args", f"without 'training' ({context!r})")


# The module's own functions on those internals.


class _Subclassed(keras.Model):
    def call(self, x):
        return x


def test_functional_graph():
    model = _model()
    head = model.get_layer("head")
    assert _keras_graph.functional_graph(model) is model
    assert _keras_graph.functional_graph(head) is head._functional
    assert _keras_graph.functional_graph(keras.Sequential([keras.layers.Dense(2)])) is None
    assert _keras_graph.functional_graph(_Subclassed()) is None
    assert _keras_graph.functional_graph(keras.layers.Dense(2)) is None


def test_graph_nodes_in_execution_order():
    model = _model()
    nodes = _keras_graph.graph_nodes(model)
    assert [node.operation.name for node in nodes[:1] + nodes[-2:]] == ["stem", "add", "head"]
    assert {node.operation.name for node in nodes[1:3]} == {"conv", "dropout"}
    add = nodes[-2]
    assert [t.name for t in add.inputs] == [t.name for t in (nodes[1].outputs + nodes[2].outputs)]
    args, kwargs = add.fill_in({id(t): i for i, t in enumerate(add.inputs)})
    assert args == ([0, 1],) and kwargs == {}
    # Run by hand, node after node, the graph gives the model's output.
    x = np.random.default_rng(0).uniform(size=(1, 6, 6, 3)).astype("float32")
    values = {id(model.inputs[0]): keras.ops.convert_to_tensor(x)}
    for node in nodes:
        args, kwargs = node.fill_in(values)
        if _keras_graph.receives_training(node.operation):
            kwargs["training"] = False
        (values[id(node.outputs[0])],) = keras.tree.flatten(node.operation(*args, **kwargs))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(values[id(model.outputs[0])]),
        keras.ops.convert_to_numpy(model(x, training=False)),
        rtol=1e-6,
    )
    assert not _keras_graph.receives_training(object())
