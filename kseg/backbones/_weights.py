"""Copies keras.applications weights into kseg backbones, layer by layer, by name."""

import os
import warnings

from kseg.backbones._channels import adapt_kernel

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_URL_HINT = "https://storage.googleapis.com/tensorflow/keras-applications/"


def existing_file(weights, expected):
    """`weights` as the path of an existing file; `expected` says what else it may be."""
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str):
        raise TypeError(
            f"Expected `weights` to be {expected}. "
            f"Received: weights={weights!r} of type {type(weights).__name__}"
        )
    if not os.path.isfile(weights):
        raise ValueError(
            f"Expected `weights` to be {expected}; no such file. Received: weights={weights!r}"
        )
    return weights


def check_weights(weights):
    """Validates `weights`: None, "imagenet" or the path of an existing file."""
    if weights is None or weights == "imagenet":
        return weights
    weights = existing_file(
        weights, "None, 'imagenet' or the path of a keras.applications weights file (.h5 or "
        ".weights.h5)"
    )
    with open(weights, "rb") as handle:
        signature = handle.read(8)
    if signature != _HDF5_SIGNATURE:
        raise ValueError(
            "Expected `weights` to be a keras.applications weights file in HDF5 "
            "format (.h5 or .weights.h5, as written by `model.save_weights`); this "
            f"file is not HDF5. Received: weights={weights!r}"
        )
    return weights


def _reference(app_fn, weights, file_stem, include_top=False):
    """Builds the keras.applications model `app_fn` holding `weights`.

    With `include_top=True` the classifier top is wanted: "imagenet" fetches
    the full file, and a local file is tried with the top first (a full file
    also loads into the model without top, silently dropping the top). Call
    `has_top` on the result to see which layout the file had.
    """
    if weights == "imagenet":
        suffix = "" if include_top else "_notop"
        try:
            return app_fn(include_top=include_top, weights="imagenet")
        except Exception as error:  # get_file raises a bare Exception offline.
            raise OSError(
                f"Could not obtain the ImageNet weights of keras.applications "
                f"({error}). Download `{file_stem}_weights_tf_dim_ordering_tf_kernels{suffix}.h5` "
                f"from {_URL_HINT} (or copy it from a machine where "
                "`~/.keras/models/` has it) and pass its path: `weights='/path/to/"
                f"{file_stem}_weights_tf_dim_ordering_tf_kernels{suffix}.h5'`."
            ) from error
    errors = []
    for top in (True, False) if include_top else (False, True):
        model = app_fn(include_top=top, weights=None)
        try:
            # Keras' warnings about a layout that does not fit are noise when the
            # attempt fails; they are passed on when it succeeds.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model.load_weights(weights)
        except Exception as error:  # the file does not fit this layout
            errors.append(f"include_top={top}: {error}")
            continue
        for item in caught:
            warnings.warn(item.message, item.category, stacklevel=2)
        return model
    raise ValueError(
        f"Could not load `weights` into keras.applications' {app_fn.__name__} "
        f"(tried without and with the classifier top: {'; '.join(errors)}). "
        f"Expected a weights file saved from that model. Received: weights={weights!r}"
    )


def has_top(reference):
    """Whether a keras.applications model from `_reference` has its classifier top."""
    return any(layer.name == "predictions" for layer in reference.layers)


def _reads_other_channels(expected, received):
    """Whether a layer is an RGB convolution built for images of another channel count."""
    return (
        len(expected[0]) == 4
        and received[0][2] == 3
        and expected[0][:2] + expected[0][3:] == received[0][:2] + received[0][3:]
        and expected[1:] == received[1:]
    )


def load_reference_weights(model, app_fn, weights, file_stem, skip=(), reference=None):
    """Copies weights from keras.applications' `app_fn` into `model` by layer name.

    Args:
        model: the kseg backbone.
        app_fn: e.g. `keras.applications.ResNet50`.
        weights: "imagenet" or an existing file path.
        file_stem: keras.applications' weights file stem, for the error message.
        skip: layer classes of `model` that the reference does not have and
            that keep their initial values (BatchNormalization for VGG16-BN).
        reference: an already built keras.applications model holding
            `weights` (from `_reference`), to avoid loading the file twice.

    A convolution of `model` that reads images of another channel count than
    the reference's 3 gets the RGB kernel adapted by
    `kseg.backbones.with_input_channels`' rule (`adapt_kernel`). Every
    weighted layer of `model` must receive weights, except those of a
    class in `skip`; anything else raises, so a name mismatch cannot pass
    silently.
    """
    if reference is None:
        reference = _reference(app_fn, weights, file_stem)
    by_name = {layer.name: layer for layer in reference.layers if layer.weights}
    missing = []
    for layer in model.layers:
        if not layer.weights:
            continue
        source = by_name.get(layer.name)
        if source is None:
            if not isinstance(layer, tuple(skip)):
                missing.append(layer.name)
            continue
        values = source.get_weights()
        expected = [tuple(w.shape) for w in layer.weights]
        received = [tuple(v.shape) for v in values]
        if _reads_other_channels(expected, received):
            # The RGB kernel of the first convolution, for images of another channel count.
            values[0] = adapt_kernel(values[0], expected[0][2])
            received[0] = expected[0]
        if expected != received:
            raise ValueError(
                f"Weight shapes of layer {layer.name!r} differ from keras.applications' "
                f"{app_fn.__name__}: expected {expected}, received {received}."
            )
        layer.set_weights(values)
    if missing:
        raise ValueError(
            f"keras.applications' {app_fn.__name__} has no weights for the layers "
            f"{missing} of {model.name!r}."
        )
    del reference
    return model
