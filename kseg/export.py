"""Exporting a trained kseg model for inference outside Keras: SavedModel, ONNX, LiteRT.

`export_model(model, path, format=...)` writes the model's logits (its `"main"`
output) as a float32 graph whose input has a free height and width (or the
fixed `size` you give), through Keras' own `model.export`, and writes a small
JSON file beside it with what a deployment needs to know: the input layout
and range, the output, and the dataset's class names, palette and ignore
index when the model carries them (`kseg.models.with_dataset`).

What exports from which backend is tested in `tests/test_export.py` and
listed in the README (`recipes/export.py`): every format from the TensorFlow
backend, which loads a `.keras` file trained on any backend, and SavedModel
and ONNX from the JAX backend (jax2tf and jax2onnx trace the model with a
symbolic height and width).
"""

import json
import os

import keras

from kseg._common import check_choice

# kseg's format names and Keras' (`keras.Model.export(format=...)`).
FORMATS = {"saved_model": "tf_saved_model", "onnx": "onnx", "litert": "litert"}
# The formats each backend exports (tests/test_export.py checks them under their runtimes).
BACKEND_FORMATS = {"tensorflow": ("saved_model", "onnx", "litert"), "jax": ("saved_model", "onnx")}


def kseg_format(keras_format):
    """kseg's name of one of Keras' export formats when kseg exports it from this backend, else None."""
    name = {keras_name: name for name, keras_name in FORMATS.items()}.get(keras_format)
    return name if name in BACKEND_FORMATS.get(keras.backend.backend(), ()) else None


def _float32_config(config):
    """A copy of a (nested) layer config whose dtype policies are all float32.

    A model trained under `mixed_float16` or `mixed_bfloat16` keeps float32
    variables; only its layers' compute dtype changes, so the same weights
    load into the float32 rebuild. ONNX export asks for a float32 model, and a
    deployed float32 graph is what every runtime runs.
    """
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and isinstance(config.get("config"), dict):
            name = config["config"].get("name")
            if isinstance(name, str) and name.startswith("mixed_"):
                return {**config, "config": {**config["config"], "name": "float32"}}
        return {key: _float32_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_config(value) for value in config]
    return config


def _uses_16_bit(model):
    return any(layer.dtype_policy.compute_dtype != "float32" for layer in model._flatten_layers())


def float32_model(model):
    """Returns `model` itself when it computes in float32, else its float32 rebuild.

    The rebuild comes from the model's config with every mixed policy replaced
    by `"float32"`, and takes the model's weights (a mixed-precision model
    keeps float32 variables, so nothing is rounded).
    """
    if not _uses_16_bit(model):
        return model
    config = keras.saving.serialize_keras_object(model)
    rebuilt = keras.saving.deserialize_keras_object(_float32_config(config))
    rebuilt.set_weights(model.get_weights())
    if _uses_16_bit(rebuilt):
        raise ValueError(
            "Could not rebuild the model in float32 for export: some layer still computes in "
            "16 bits after its dtype policy was set to float32. Build the model under "
            "keras.config.set_dtype_policy('float32') and load the weights into it. "
            f"Received: model={model.name!r}"
        )
    return rebuilt


def _channels(model, data_format):
    shape = model.inputs[0].shape if model.inputs else None
    if shape is None or len(shape) != 4:
        raise ValueError(
            "Expected a model with one image input of rank 4 (batch, height, width, channels). "
            f"Received: model {model.name!r} with inputs "
            f"{[tuple(t.shape) for t in (model.inputs or [])]}"
        )
    return shape[-1] if data_format == "channels_last" else shape[1]


def _check_size(size):
    if size is None:
        return None
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError(
            f"Expected `size` to be None or (height, width), two positive ints. Received: size={size!r}"
        )
    return tuple(size)


def inference_model(model, size=None, output="main"):
    """The model as it is exported: float32, one image input, the logits as its only output.

    Args:
        model: a kseg model (a `keras.Model` with one image input), for example
            `best.keras` as the training recipe writes it.
        size: None (height and width free) or `(height, width)` fixed.
        output: the output to keep when the model returns a dict (`"main"`:
            the logits; the auxiliary heads are for training only).

    Returns:
        A `keras.Model` from an image of shape `(batch, height, width,
        channels)` (channels first for `"channels_first"`) to the chosen
        output, sharing the model's weights (or those of its float32 rebuild).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model. Received: model of type {type(model).__name__}")
    height, width = _check_size(size) or (None, None)
    data_format = keras.config.image_data_format()
    model = float32_model(model)
    channels = _channels(model, data_format)
    shape = (height, width, channels) if data_format == "channels_last" else (channels, height, width)
    inputs = keras.Input(shape=shape, batch_size=None, dtype="float32", name="image")
    outputs = model(inputs, training=False)
    if isinstance(outputs, dict):
        if output not in outputs:
            raise ValueError(
                f"Expected `output` to name one of the model's outputs {sorted(outputs)}. "
                f"Received: output={output!r}"
            )
        outputs = outputs[output]
    elif isinstance(outputs, (list, tuple)):
        outputs = outputs[0]
    return keras.Model(inputs, outputs, name=f"{model.name}_inference")


def description(model, exported, format, size=None):
    """The JSON-friendly description written beside an exported model."""
    data_format = keras.config.image_data_format()
    layout = "NHWC" if data_format == "channels_last" else "NCHW"
    shape = [None if d is None else int(d) for d in exported.inputs[0].shape]
    out_shape = [None if d is None else int(d) for d in exported.outputs[0].shape]
    classes = out_shape[-1] if data_format == "channels_last" else out_shape[1]
    dataset = getattr(model, "dataset", None)
    return {
        "format": format,
        "exported_from": keras.backend.backend(),
        "input": {
            "name": "image",
            "layout": layout,
            "shape": shape,
            "dtype": "float32",
            "pixels": "RGB values in [0, 255] (kseg's builders normalise inside the model)",
            "size": None if size is None else list(size),
        },
        "output": {
            "layout": layout,
            "shape": out_shape,
            "values": "logits at the input's resolution; argmax over the class axis gives the mask",
            "classes": classes,
        },
        "dataset": dataset,
    }


def description_path(path):
    """Where `export_model` writes the description: `<path>.json` (`model.onnx.json`)."""
    return os.fspath(path).rstrip("/\\") + ".json"


def export_model(model, path, format="saved_model", size=None, output="main", verbose=False):
    """Exports a kseg model's logits for inference: SavedModel, ONNX or LiteRT.

    Args:
        model: a `keras.Model` with one image input (dict outputs are fine:
            `output` picks one).
        path: where to write: a folder for `"saved_model"`, a file for
            `"onnx"` (`model.onnx`) and `"litert"` (`model.tflite`).
        format: `"saved_model"` (TensorFlow SavedModel, signature
            `serve`), `"onnx"` or `"litert"`.
        size: None (height and width free: the SavedModel and ONNX graphs take
            any size) or `(height, width)` fixed. LiteRT needs a fixed size.
        output: the dict output to export (default `"main"`, the logits).
        verbose: passed to `keras.Model.export`.

    Returns:
        The path of the description written beside the export (`<path>.json`):
        input layout, shape and range, output, and the dataset's class names,
        palette and ignore index when the model carries them.

    The exported graph computes in float32 whatever the model's dtype policy
    (a mixed-precision model is rebuilt in float32 with its own weights).
    Exports run on the TensorFlow backend (every format; ONNX needs `tf2onnx`)
    and on JAX (SavedModel through jax2tf, which needs TensorFlow installed,
    and ONNX through `jax2onnx`). LiteRT from JAX and every format from torch
    raise `NotImplementedError`: export those from `KERAS_BACKEND=tensorflow`,
    where a `.keras` file trained on any backend loads.

    Example:

    >>> model = kseg.models.UNet(2, depth=2, base_filters=4)
    >>> kseg.export.export_model(model, "unet.onnx", format="onnx")  # doctest: +SKIP
    'unet.onnx.json'
    """
    check_choice("format", format, tuple(FORMATS))
    size = _check_size(size)
    backend = keras.backend.backend()
    if format not in BACKEND_FORMATS.get(backend, ()):
        names = {"tensorflow": "TensorFlow", "jax": "JAX"}
        backends = [names[b] for b, formats in BACKEND_FORMATS.items() if format in formats]
        raise NotImplementedError(
            f"kseg exports {format!r} from the {' and '.join(backends)} "
            f"backend{'s' if len(backends) > 1 else ''} only: run under "
            "KERAS_BACKEND=tensorflow (a .keras file trained on any backend loads there, "
            f"with the same weights). Received: Keras backend {backend!r}"
        )
    if format == "litert" and size is None:
        raise ValueError(
            "LiteRT export needs a fixed input size: pass size=(height, width) "
            "(recipes/export.py: --size H W). Received: size=None"
        )
    exported = inference_model(model, size=size, output=output)
    write_graph(exported, path, format, size=size, verbose=verbose)
    target = description_path(path)
    with open(target, "w") as f:
        json.dump(description(model, exported, format, size), f, indent=2)
        f.write("\n")
    return target


def write_graph(exported, path, format, size=None, verbose=False):
    """Writes a float32 model with one image input as it is (every output) through Keras' exporters.

    `export_model`'s last step, with the options each backend's exporter needs
    (no gradient and the smallest input size for jax2tf; 2-D pooling nodes for
    jax2onnx). `exported` is usually `inference_model(model)`; the tests also
    export models with extra outputs through it.
    """
    backend = keras.backend.backend()
    spec = keras.InputSpec(shape=tuple(exported.inputs[0].shape), dtype="float32")
    options = {}
    if backend == "jax" and format == "saved_model":
        # jax2tf would also trace a gradient for the SavedModel, which fails on the
        # random-seed state of dropout layers and is of no use for inference.
        options["jax2tf_kwargs"] = {"with_gradient": False}
        if size is None and (smallest := smallest_input_size(exported)) > 1:
            # jax2tf traces with a symbolic height `a` and width `b` (Keras' names) and
            # must know they are large enough for every layer (SegNet's five 2x2
            # argmax pools need 32): the SavedModel then checks this when called.
            options["jax2tf_kwargs"]["polymorphic_constraints"] = (
                f"a >= {smallest}",
                f"b >= {smallest}",
            )
    exported.export(
        os.fspath(path), format=FORMATS[format], verbose=verbose, input_signature=[spec], **options
    )
    if backend == "jax" and format == "onnx":
        _pools_over_two_axes(os.fspath(path))


def smallest_input_size(model, limit=1024):
    """The smallest height and width (one number for both) the model builds at.

    Found from symbolic passes (`compute_output_spec`, no computation): doubling
    from 1, then bisecting. 1 for models that take any size (every kseg model but
    SegNet, whose five 2x2 "valid" pools need 32).
    """
    channels = model.inputs[0].shape[-1]

    def builds(n):
        try:
            model.compute_output_spec(keras.KerasTensor((1, n, n, channels)))
        except ValueError:
            return False
        return True

    high = 1
    while not builds(high):
        if high >= limit:
            raise ValueError(f"The model builds at no input size up to {limit}x{limit}")
        high *= 2
    low = high // 2  # fails (or 0)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if builds(mid) else (mid, high)
    return high


_POOLS = ("MaxPool", "AveragePool", "LpPool")


def _pools_over_two_axes(path):
    """Rewrites jax2onnx's 4-D pooling nodes of an ONNX file as 2-D ones; returns their count.

    jax2onnx writes a pooling of a `(batch, height, width, channels)` map
    (`lax.reduce_window`, as Keras' `MaxPooling2D` runs on JAX) as an ONNX
    pooling over all four axes of the map seen as `(1, 1, B, H, W, C)`, with a
    window of 1 on the batch and channel axes. ONNX Runtime pools over at most
    three axes ("Unsupported pooling size"). Each such node becomes the same
    pooling over height and width of the `(B, C, H, W)` map, between a squeeze
    and transposes that give the node's input and output their shapes: the
    same values.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(path)
    graph = proto.graph
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel = list(attrs.get("kernel_shape", ()))
        if node.op_type not in _POOLS or len(kernel) != 4 or len(node.output) != 1:
            nodes.append(node)
            continue
        strides = list(attrs.get("strides", [1] * 4))
        pads = list(attrs.get("pads", [0] * 8))
        dilations = list(attrs.get("dilations", [1] * 4))

        pooled = [
            (kernel[a], strides[a], dilations[a], pads[a], pads[a + 4]) != (1, 1, 1, 0, 0)
            for a in range(4)
        ]
        if pooled[0] or (pooled[1] and pooled[3]):
            raise ValueError(
                f"Cannot rewrite the ONNX {node.op_type} node {node.name!r} over four axes as "
                f"a pooling over two: kernel {kernel}, strides {strides}, pads {pads}"
            )
        spatial, channels_last = ((1, 2), True) if not pooled[3] else ((2, 3), False)
        name = f"{node.name or node.op_type}_2d"
        axes = f"{name}_axes"
        graph.initializer.append(numpy_helper.from_array(np.array([0, 1], np.int64), axes))
        x, y = f"{name}_in", f"{name}_out"
        new = [helper.make_node("Squeeze", [node.input[0], axes], [x], name=f"{name}_squeeze")]
        if channels_last:
            new.append(helper.make_node("Transpose", [x], [x + "_nchw"], perm=[0, 3, 1, 2]))
            x += "_nchw"
        pool = {k: v for k, v in attrs.items() if k not in ("kernel_shape", "strides", "pads", "dilations")}
        pool["kernel_shape"] = [kernel[a] for a in spatial]
        pool["strides"] = [strides[a] for a in spatial]
        pool["pads"] = [pads[a] for a in spatial] + [pads[a + 4] for a in spatial]
        if "dilations" in attrs:
            pool["dilations"] = [dilations[a] for a in spatial]
        new.append(helper.make_node(node.op_type, [x], [y], name=f"{name}_pool", **pool))
        if channels_last:
            new.append(helper.make_node("Transpose", [y], [y + "_nhwc"], perm=[0, 2, 3, 1]))
            y += "_nhwc"
        new.append(helper.make_node("Unsqueeze", [y, axes], [node.output[0]], name=f"{name}_unsqueeze"))
        nodes.extend(new)
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.save(proto, path)
    return rewritten
