"""The functional segmentation model every builder returns: it remembers what it is."""

import functools
import inspect
import json
import numbers

import keras
import numpy as np

from kseg import _backend

_KEYS = ("name", "class_names", "palette", "ignore_index")


def _dataset_error(message, received):
    return ValueError(f"{message} Received: {received}")


def normalize_dataset(dataset):
    """Checks a dataset description and returns it as a new JSON-friendly dict.

    Args:
        dataset: a dict with `"name"` (str) and `"class_names"` (a sequence of
            str, in label order), and optionally `"palette"` (None or one
            `[r, g, b]` colour per class, ints in [0, 255]) and
            `"ignore_index"` (None or an int; default 255).

    Returns:
        `{"name": str, "class_names": [str], "palette": [[r, g, b]] or None,
        "ignore_index": int or None}`.
    """
    if not isinstance(dataset, dict):
        raise TypeError(
            "Expected `dataset` to be a dict with 'name', 'class_names' and optionally "
            f"'palette' and 'ignore_index'. Received: dataset={dataset!r}"
        )
    unknown = sorted(set(dataset) - set(_KEYS))
    if unknown:
        raise _dataset_error(
            f"Expected `dataset` keys among {list(_KEYS)}.", f"unknown keys {unknown}"
        )
    for key in ("name", "class_names"):
        if key not in dataset:
            raise _dataset_error(
                f"Expected `dataset` to have a {key!r} entry.", f"dataset={dataset!r}"
            )
    name = dataset["name"]
    if not isinstance(name, str) or not name:
        raise _dataset_error("Expected dataset['name'] to be a non-empty string.", f"name={name!r}")
    names = dataset["class_names"]
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
        raise _dataset_error(
            "Expected dataset['class_names'] to be a non-empty list of strings.",
            f"class_names={names!r}",
        )
    if not all(isinstance(n, str) for n in names):
        raise _dataset_error(
            "Expected dataset['class_names'] to hold strings.", f"class_names={list(names)!r}"
        )
    palette = dataset.get("palette")
    if palette is not None:
        palette = [list(c) if isinstance(c, (list, tuple)) else c for c in palette]
        if len(palette) != len(names) or not all(
            isinstance(c, list)
            and len(c) == 3
            and all(isinstance(v, numbers.Integral) and 0 <= v <= 255 for v in c)
            for c in palette
        ):
            raise _dataset_error(
                f"Expected dataset['palette'] to be None or one [r, g, b] colour (ints in "
                f"[0, 255]) per class, {len(names)} colours.",
                f"palette={dataset['palette']!r}",
            )
        palette = [[int(v) for v in c] for c in palette]
    ignore_index = dataset.get("ignore_index", 255)
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
            raise _dataset_error(
                "Expected dataset['ignore_index'] to be None or an integer.",
                f"ignore_index={ignore_index!r}",
            )
        ignore_index = int(ignore_index)
    return {
        "name": name,
        "class_names": [str(n) for n in names],
        "palette": palette,
        "ignore_index": ignore_index,
    }


def _logit_channels(outputs):
    """Channels of the logits (`"main"` of a dict, else the first output), or None."""
    if isinstance(outputs, dict):
        outputs = outputs.get("main")
    elif isinstance(outputs, (list, tuple)):
        outputs = outputs[0] if outputs else None
    shape = getattr(outputs, "shape", None)
    if shape is None or len(shape) != 4:
        return None
    axis = 1 if keras.config.image_data_format() == "channels_first" else -1
    return shape[axis]


def describe_argument(value):
    """A builder argument as JSON: itself when it is plain data, else a short description.

    Numbers, strings, None, and lists, tuples and dicts of them are kept as they
    are (tuples as lists); a model passed as `backbone` becomes `"<keras.Model
    'name'>"`, an array `"<array shape (..)>"`, anything else its type name.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [describe_argument(v) for v in value]
    if isinstance(value, dict):
        return {str(k): describe_argument(v) for k, v in value.items()}
    if isinstance(value, keras.Model):
        return f"<keras.Model {value.name!r}>"
    if isinstance(value, np.ndarray):
        return f"<array shape {tuple(value.shape)}>"
    return f"<{type(value).__name__}>"


@keras.saving.register_keras_serializable(package="kseg")
class SegmentationModel(keras.Model):
    """The functional model every kseg builder returns: it remembers what it is.

    It behaves like the `keras.Model(inputs, outputs)` it is built from, and
    carries, in its config (so through `model.save(...)`,
    `keras.saving.load_model(..., safe_mode=True)` and `from_config`, on every
    backend):

    - `builder` and `arguments`: the builder that made it (`"DeepLabV3Plus"`)
      and every argument of that call, defaults included (`num_classes`,
      `backbone`, `output_stride`, widths, ...; a backbone passed as a model
      is recorded by name). The architecture itself is restored from the
      functional config, layer by layer, never by calling the builder again.
    - `dataset`: the dataset's name, class names (in label order), palette
      (one colour per class) and ignore index, which the recipes read instead
      of guessing the classes from their number (`kseg.models.with_dataset`).

    `model.export(path, format=...)` with Keras' formats `"tf_saved_model"`,
    `"onnx"` and `"litert"` goes through `kseg.export.export_model` where kseg
    exports from the backend (TensorFlow, JAX): the logits (`"main"` output)
    in float32 with a free height and width (LiteRT: the model's own fixed
    size), and a description file beside. Other formats and backends go to
    Keras' `Model.export` as they are.

    Args:
        inputs, outputs: as for `keras.Model`.
        dataset: None or a dict, see `normalize_dataset`; the number of
            class names must equal the channels of the logits (the `"main"`
            output of a dict-output model), or be 2 for a single-logit binary
            model.
        builder: None or the name of the builder that made the model.
        arguments: None or the builder's arguments (a JSON-friendly dict).
        **kwargs: other `keras.Model` arguments, such as `name`.

    Example:

    >>> base = kseg.models.UNet(3, depth=2, base_filters=4)
    >>> model = kseg.models.with_dataset(
    ...     base, {"name": "toy", "class_names": ["bg", "a", "b"]})
    >>> model.dataset["class_names"]
    ['bg', 'a', 'b']
    """

    def __init__(self, *args, dataset=None, builder=None, arguments=None, **kwargs):
        super().__init__(*args, **kwargs)
        if builder is not None and not isinstance(builder, str):
            raise TypeError(f"Expected `builder` to be None or a name. Received: builder={builder!r}")
        if arguments is not None and not isinstance(arguments, dict):
            raise TypeError(
                f"Expected `arguments` to be None or a dict. Received: arguments={arguments!r}"
            )
        self._builder = builder
        # JSON strings, so that Keras does not track them as state.
        self._arguments_json = None if arguments is None else json.dumps(describe_argument(arguments))
        description = None if dataset is None else normalize_dataset(dataset)
        if description is not None:
            channels = _logit_channels(self.output)
            count = len(description["class_names"])
            if channels is not None and count != channels and not (channels == 1 and count == 2):
                raise ValueError(
                    f"Expected one class name per output channel ({channels}"
                    f"{' or 2 for a binary model' if channels == 1 else ''}). "
                    f"Received: {count} class names for dataset {description['name']!r}"
                )
        # Kept as a JSON string so that Keras does not track it as state.
        self._dataset_json = None if description is None else json.dumps(description)
        # On torch every BatchNormalization (the backbone's included) runs torch's fused
        # kernel and every NHWC convolution skips Keras' layout copies: built, loaded and
        # re-wrapped models alike (see `_backend`).
        _backend.use_fused_batch_norm(self)
        _backend.use_direct_conv(self)

    @property
    def dataset(self):
        """The dataset description (a new dict), or None."""
        if self._dataset_json is None:
            return None
        return json.loads(self._dataset_json)

    @property
    def builder(self):
        """The name of the builder that made the model (e.g. `"DeepLabV3Plus"`), or None."""
        return self._builder

    @property
    def arguments(self):
        """The builder's arguments, defaults included (a new dict), or None."""
        return None if self._arguments_json is None else json.loads(self._arguments_json)

    def get_config(self):
        return {
            **super().get_config(),
            "dataset": self.dataset,
            "builder": self.builder,
            "arguments": self.arguments,
        }

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs):
        """Keras' `Model.export`; kseg's own exporter for the formats it handles.

        See the class docstring. With `input_signature` or exporter options, or a
        format or backend kseg does not export, this is Keras' own `export`.
        """
        from kseg import export as kexport

        kseg_format = kexport.kseg_format(format)
        if kseg_format is None or input_signature is not None or kwargs:
            return super().export(
                filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs
            )
        size = None
        if kseg_format == "litert":
            shape = self.inputs[0].shape
            axes = (2, 3) if keras.config.image_data_format() == "channels_first" else (1, 2)
            hw = tuple(shape[a] for a in axes)
            size = hw if all(isinstance(n, int) for n in hw) else None
        kexport.export_model(self, filepath, format=kseg_format, size=size, verbose=bool(verbose))


def builder(function, name=None):
    """Makes a builder function return a `SegmentationModel` that records the call.

    The decorated function builds a functional model as usual; its result is
    wrapped (same layers and weights) with `builder=name` and every argument of
    the call, defaults included.
    """
    name = name or function.__name__
    signature = inspect.signature(function)

    @functools.wraps(function)
    def build(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        for parameter in signature.parameters.values():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(arguments.pop(parameter.name, {}))
        model = function(*args, **kwargs)
        return SegmentationModel(
            model.input,
            model.output,
            name=model.name,
            builder=name,
            arguments=arguments,
            dataset=getattr(model, "dataset", None),
        )

    return build


def with_dataset(model, dataset):
    """Returns `model` as a `SegmentationModel` that carries `dataset`.

    The new model wraps the inputs and outputs of `model`: it shares its
    layers and weights and gives the same outputs; only the saved config
    gains the description (the builder and its arguments are kept). The
    recipes attach the description of the data they train on.

    Args:
        model: a functional `keras.Model` (a kseg builder's result, or a
            `SegmentationModel`, whose description is replaced).
        dataset: a dict, see `normalize_dataset` (for example
            `kseg.data.palette.dataset_description("voc")`), or None.

    Returns:
        A `SegmentationModel` with `model`'s name.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a keras.Model. Received: model={model!r}")
    try:
        inputs, outputs = model.input, model.output
    except (AttributeError, ValueError):
        raise TypeError(
            "Expected a functional keras.Model (with symbolic inputs and outputs), such as "
            f"the result of a kseg.models builder. Received: model={model.name!r}"
        ) from None
    return SegmentationModel(
        inputs,
        outputs,
        dataset=dataset,
        name=model.name,
        builder=getattr(model, "builder", None),
        arguments=getattr(model, "arguments", None),
    )
