"""Argument checks and layout helpers shared by kseg's ops and layers."""

import keras
import numpy as np
from keras import ops

_DATA_FORMATS = ("channels_last", "channels_first")


def standardize_data_format(data_format):
    """Returns `data_format`, or Keras' global image data format when it is None."""
    if data_format is None:
        return keras.config.image_data_format()
    if data_format not in _DATA_FORMATS:
        raise ValueError(
            "Expected `data_format` to be 'channels_last' or 'channels_first'. "
            f"Received: data_format={data_format!r}"
        )
    return data_format


def to_channels_last(x, data_format):
    """Moves the channel axis of a rank-4 tensor last (a no-op for channels_last)."""
    if data_format == "channels_first":
        return ops.transpose(x, (0, 2, 3, 1))
    return x


def from_channels_last(x, data_format):
    """Inverse of `to_channels_last`."""
    if data_format == "channels_first":
        return ops.transpose(x, (0, 3, 1, 2))
    return x


def check_choice(name, value, choices):
    """Raises `ValueError` unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(
            f"Expected `{name}` to be one of {tuple(choices)}. Received: {name}={value!r}"
        )
    return value


def check_bool(name, value):
    """Returns `value` (a bool, or a numpy bool as a bool), or raises `ValueError` naming it."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"Expected `{name}` to be True or False. Received: {name}={value!r}")


def check_int(name, value, minimum=1):
    """Returns `value` as an int, or raises when it is not an integer `>= minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        # numpy integers are fine; floats are not.
        try:
            import numpy as np

            if isinstance(value, np.integer):
                value = int(value)
            else:
                raise TypeError
        except TypeError:
            raise TypeError(
                f"Expected `{name}` to be an integer. Received: {name}={value!r} "
                f"of type {type(value).__name__}"
            ) from None
    if value < minimum:
        raise ValueError(
            f"Expected `{name}` to be an integer >= {minimum}. Received: {name}={value}"
        )
    return value


def check_float(name, value, minimum=None, maximum=None, inclusive=True):
    """Returns `value` as a float, or raises when it is not a number in range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"Expected `{name}` to be a number. Received: {name}={value!r}"
            ) from None
    value = float(value)
    low_bad = minimum is not None and (value < minimum if inclusive else value <= minimum)
    high_bad = maximum is not None and (value > maximum if inclusive else value >= maximum)
    if low_bad or high_bad:
        lo = "[" if inclusive else "("
        hi = "]" if inclusive else ")"
        raise ValueError(
            f"Expected `{name}` in {lo}{minimum}, {maximum}{hi}. Received: {name}={value}"
        )
    return value


def normalize_tuple(name, value, n=2, minimum=1):
    """Turns an int or a sequence into a tuple of `n` ints, each `>= minimum`."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(
                f"Expected `{name}` to be an integer or a tuple of {n} integers. "
                f"Received: {name}={value!r}"
            )
        return tuple(check_int(name, v, minimum) for v in value)
    v = check_int(name, value, minimum)
    return (v,) * n


def check_rank(name, shape, rank):
    """Raises `ValueError` unless a tensor of shape `shape` has rank `rank`."""
    if len(shape) != rank:
        raise ValueError(
            f"Expected `{name}` to have rank {rank}. Received: {name}.shape={tuple(shape)}"
        )


def label_channel_axis(shape, data_format):
    """Axis of the singleton channel of a label map's `shape`, or None for `(B, H, W)`.

    Raises `ValueError` unless `shape` is `(B, H, W)` or `(B, H, W, 1)` (`(B, 1, H, W)`
    in channels_first).
    """
    channel_axis = 1 if data_format == "channels_first" else 3
    if len(shape) == 4 and shape[channel_axis] == 1:
        return channel_axis
    if len(shape) != 3:
        raise ValueError(
            "Expected `y_true` to be a label map of shape (B, H, W) or (B, H, W, 1). "
            f"Received: y_true.shape={tuple(shape)}"
        )
    return None


def is_eager_value(x):
    """True when the values of `x` can be read now: a NumPy array or an eager tensor.

    False for symbolic tensors and for tensors being traced (`tf.function`, `jax.jit`,
    `torch.compile`), whose values exist only when the compiled function runs.
    """
    if isinstance(x, (np.ndarray, np.generic)):
        return True
    # Without importing any backend: TensorFlow's eager tensors, JAX's concrete arrays
    # and plain torch tensors (not the fake tensors of `torch.compile`).
    return type(x).__name__ in ("EagerTensor", "ArrayImpl", "Tensor", "Parameter")


def check_integer_valued(x, name="y_true"):
    """Raises `ValueError` when a float label map `x` holds a value that is not an integer.

    Checked only where the values can be seen (NumPy arrays and eager tensors; see
    `is_eager_value`); integer dtypes pass without a look. Inside a traced graph there
    is nothing to see and float labels are rounded half to even by `to_int32`.
    """
    if not is_eager_value(x) or "float" not in str(getattr(x, "dtype", "")):
        return
    values = np.asarray(x) if isinstance(x, (np.ndarray, np.generic)) else ops.convert_to_numpy(x)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    bad = ~(np.isfinite(values) & (np.rint(values) == values))
    if bad.any():
        raise ValueError(
            f"Expected `{name}` to hold integer class ids (a float label map must be "
            "integer-valued; resize masks with nearest neighbour only). "
            f"Received: {int(bad.sum())} non-integer values in {name}, e.g. "
            f"{name} value {float(values[np.argmax(bad)])!r}"
        )


def to_int32(x, name=None):
    """Integer values as int32; floats holding integers are rounded first (half to even).

    NumPy arrays stay NumPy arrays; anything else becomes a backend tensor. With a
    `name` (a label map's argument name, e.g. `"y_true"`), a float input whose values
    can be seen (NumPy, eager tensors) must be integer-valued, or `ValueError` is raised
    (`check_integer_valued`); traced inputs are rounded without a check.
    """
    if name is not None:
        check_integer_valued(x, name)
    if isinstance(x, np.ndarray):
        return (np.rint(x) if x.dtype.kind == "f" else x).astype(np.int32)
    x = ops.convert_to_tensor(x)
    if "float" in str(x.dtype):
        x = ops.round(x)
    return ops.cast(x, "int32")


def squeeze_labels(y_true, data_format):
    """Returns integer labels `(B, H, W)` from `(B, H, W)` or `(B, H, W, 1)` (`(B, 1, H, W)`).

    Float labels that are not integer-valued raise `ValueError` where their values can
    be seen (NumPy, eager tensors); inside a traced graph they are rounded.
    """
    check_integer_valued(y_true, "y_true")
    y_true = ops.convert_to_tensor(y_true)
    axis = label_channel_axis(tuple(y_true.shape), data_format)
    if axis is not None:
        y_true = ops.squeeze(y_true, axis=axis)
    return to_int32(y_true)


def valid_mask(labels, num_classes, ignore_index):
    """True where a label is a real class: in `[0, num_classes)` and not `ignore_index`."""
    valid = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        valid = valid & (labels != ignore_index)
    return valid
