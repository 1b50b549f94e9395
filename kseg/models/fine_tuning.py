"""A trained model for another class count: every weight kept but those the classes shape."""

from kseg.backbones._info import Backbone
from kseg.models.segmentation_model import SegmentationModel


def _builder_of(model):
    """The `kseg.models` builder that made `model` (a `SegmentationModel` that records it)."""
    from kseg import models

    name = getattr(model, "builder", None)
    if not isinstance(model, SegmentationModel) or name is None or model.arguments is None:
        raise ValueError(
            "Expected a model built by a `kseg.models` builder, which records its builder and "
            "arguments (a model saved by kseg 0.1.0 does not: rebuild it with the same "
            "arguments and load its weights). "
            f"Received: model={getattr(model, 'name', model)!r}"
        )
    build = getattr(models, name, None)
    if build is None or name not in models.__all__:
        raise ValueError(
            f"Expected a model of a `kseg.models` builder. Received: the builder {name!r}"
        )
    return build


def _backbone_argument(model, described):
    """The backbone model inside `model` that the builder was given as `described`.

    A backbone passed as a model is recorded as `"<keras.Model 'name'>"`; the
    model holds it as a layer of that name, whose config rebuilds it.
    """
    name = described[len("<keras.Model '") : -len("'>")]
    try:
        layer = model.get_layer(name)
    except ValueError:
        layer = None
    if not isinstance(layer, Backbone):
        raise ValueError(
            f"The model was built on a backbone model {name!r} that it does not hold as a "
            "layer; pass `backbone=` (a backbone built by `kseg.backbones`) to rebuild it. "
            f"Received: arguments['backbone']={described!r}"
        )
    return Backbone.from_config(layer.get_config())


def with_num_classes(model, num_classes, dataset=None, **arguments):
    """`model` rebuilt for `num_classes` classes, with every weight that does not depend on them.

    The fine-tuning step of a converted or trained model on data with other
    classes: the model's builder (recorded by `kseg.models.SegmentationModel`)
    is called again with the same arguments but `num_classes` (and no
    pretrained backbone download: the weights come from `model`), and each
    layer takes the weights of the layer at the same place in `model` when
    they have the same shapes. The layers whose weights the class count shapes
    (the classifiers, auxiliary classifiers, GINet's class tables) keep the
    new model's initialisation. Layers are matched by their position in the
    model, which the same builder and arguments fix, and must be of the same
    class there.

    Args:
        model: a model made by a `kseg.models` builder (directly, by a
            converter such as `kseg.convert.from_huggingface`, or loaded from
            a `.keras` file written by kseg).
        num_classes: the new class count (>= 1).
        dataset: None, or the description of the new data (see
            `kseg.models.with_dataset`), which the new model then carries.
            The old description is dropped whenever the class count changes.
        **arguments: builder arguments to set for the new call; needed for
            an argument that was recorded only as a description (for example
            GINet's `class_embeddings`, an array: pass the new table or None).

    Returns:
        A `kseg.models.SegmentationModel`.

    Raises:
        ValueError: `model` was not made by a kseg builder, an argument of
            its builder cannot be restored from the record and was not given,
            or the rebuilt model's layers do not line up with `model`'s.

    Example:

    >>> ade = kseg.convert.from_huggingface("segformer-b0-finetuned-ade-512-512")
    >>> mine = kseg.models.with_num_classes(ade, 5)  # all but the classifier loaded
    """
    from kseg._common import check_int

    num_classes = check_int("num_classes", num_classes, 1)
    build = _builder_of(model)
    call = dict(model.arguments)
    call.update(num_classes=num_classes, **arguments)
    if "backbone_weights" in call and "backbone_weights" not in arguments:
        call["backbone_weights"] = None  # the backbone's weights come from `model`
    backbone = call.get("backbone")
    if isinstance(backbone, str) and backbone.startswith("<keras.Model '"):
        call["backbone"] = _backbone_argument(model, backbone)
    for key, value in call.items():
        if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
            raise ValueError(
                f"The builder {model.builder} was given `{key}` as an object that the model "
                f"records only as {value!r}: pass `{key}=` to rebuild it."
            )
    rebuilt = build(**call)
    old_layers, new_layers = model.layers, rebuilt.layers
    if len(old_layers) != len(new_layers):
        raise ValueError(
            f"Rebuilding {model.builder} gave {len(new_layers)} layers where the model has "
            f"{len(old_layers)}: the arguments {sorted(arguments)} change the architecture."
        )
    for old, new in zip(old_layers, new_layers):
        if type(old) is not type(new):
            raise ValueError(
                f"Rebuilding {model.builder} put a {type(new).__name__} where the model has "
                f"{type(old).__name__} ({old.name!r}): the layers do not line up."
            )
        old_weights = old.get_weights()
        new_shapes = [tuple(v.shape) for v in new.weights]
        if [tuple(w.shape) for w in old_weights] == new_shapes:
            new.set_weights(old_weights)
    if dataset is None and num_classes == _classes_of(model):
        dataset = getattr(model, "dataset", None)
    if dataset is None:
        return rebuilt
    from kseg.models.segmentation_model import with_dataset

    return with_dataset(rebuilt, dataset)


def _classes_of(model):
    arguments = getattr(model, "arguments", None) or {}
    return arguments.get("num_classes")


def replaced_layers(model, tuned):
    """Names of the layers of `tuned` (from `with_num_classes`) that did not take `model`'s weights."""
    names = []
    for old, new in zip(model.layers, tuned.layers):
        if not new.weights:
            continue
        same_shapes = [tuple(v.shape) for v in old.weights] == [tuple(v.shape) for v in new.weights]
        if not same_shapes:
            names.append(new.name)
    return names
