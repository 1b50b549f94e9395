"""Small internal helpers shared by the ops: tensor checks, dtypes and symbolic dispatch."""

import keras
import numpy as np
from keras import ops


def as_tensor(x):
    """Returns `x` unchanged if it is a backend or symbolic tensor, else converts it."""
    if isinstance(x, keras.KerasTensor) or ops.is_tensor(x):
        return x
    return ops.convert_to_tensor(x)


def dtype_of(x):
    return keras.backend.standardize_dtype(x.dtype)


def is_float(dtype):
    return "float" in dtype


def spatial_axes(data_format):
    """(height axis, width axis) of a rank-4 tensor in `data_format`."""
    return (2, 3) if data_format == "channels_first" else (1, 2)


def static_or_dynamic_dims(x, axes):
    """Sizes of `axes`: Python ints where known statically, scalar tensors otherwise."""
    static = tuple(x.shape)
    dynamic = None
    out = []
    for a in axes:
        if isinstance(static[a], (int, np.integer)):
            out.append(int(static[a]))
        else:
            if dynamic is None:
                dynamic = ops.shape(x)
            out.append(dynamic[a])
    return tuple(out)


def is_static(*values):
    return all(isinstance(v, (int, np.integer)) for v in values)


def lowest_value(dtype):
    """The value that never wins a max: -inf for floats, the minimum for integers."""
    if is_float(dtype):
        return float("-inf")
    return int(np.iinfo(dtype).min)


class SymbolicOp(keras.Operation):
    """Runs an eager kseg op on symbolic `keras.Input` tensors inside a functional graph.

    `fn(*tensors)` is the eager computation and `spec_fn(*tensors)` returns the
    `keras.KerasTensor` (or tuple of them) it produces. Graphs that contain such an op
    cannot be saved; use the matching `kseg.layers` layer for models that are saved.
    """

    def __init__(self, fn, spec_fn, name=None):
        super().__init__(name=name)
        self._fn = fn
        self._spec_fn = spec_fn

    def call(self, *args):
        return self._fn(*args)

    def compute_output_spec(self, *args):
        return self._spec_fn(*args)


def any_symbolic(*tensors):
    return any(isinstance(t, keras.KerasTensor) for t in tensors)
