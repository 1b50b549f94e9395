"""A functional segmentation model that carries the description of its dataset."""

import json
import numbers

import keras

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


@keras.saving.register_keras_serializable(package="kseg")
class SegmentationModel(keras.Model):
    """A functional segmentation model with the description of its dataset.

    It behaves like the `keras.Model(inputs, outputs)` it is built from, and
    adds `dataset`: the dataset's name, class names (in label order), palette
    (one colour per class) and ignore index. The description is part of the
    model's config, so it survives `model.save(...)` and
    `keras.saving.load_model(..., safe_mode=True)` on every backend, and the
    recipes read it instead of guessing the classes from their number.

    Build one with `kseg.models.with_dataset(model, dataset)`, which wraps a
    built model's inputs and outputs (sharing its layers and weights), or
    directly as `SegmentationModel(inputs, outputs, dataset=...)`.

    Args:
        inputs, outputs: as for `keras.Model`.
        dataset: None or a dict, see `normalize_dataset`; the number of
            class names must equal the channels of the logits (the `"main"`
            output of a dict-output model), or be 2 for a single-logit binary
            model.
        **kwargs: other `keras.Model` arguments, such as `name`.

    Example:

    >>> base = kseg.models.UNet(3, depth=2, base_filters=4)
    >>> model = kseg.models.with_dataset(
    ...     base, {"name": "toy", "class_names": ["bg", "a", "b"]})
    >>> model.dataset["class_names"]
    ['bg', 'a', 'b']
    """

    def __init__(self, *args, dataset=None, **kwargs):
        super().__init__(*args, **kwargs)
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

    @property
    def dataset(self):
        """The dataset description (a new dict), or None."""
        if self._dataset_json is None:
            return None
        return json.loads(self._dataset_json)

    def get_config(self):
        return {**super().get_config(), "dataset": self.dataset}


def with_dataset(model, dataset):
    """Returns `model` as a `SegmentationModel` that carries `dataset`.

    The new model wraps the inputs and outputs of `model`: it shares its
    layers and weights and gives the same outputs; only the saved config
    gains the description. Builders return plain functional models; the
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
    return SegmentationModel(inputs, outputs, dataset=dataset, name=model.name)
