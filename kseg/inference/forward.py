"""One forward of a batch: the runner each backend takes, the data format, the logits."""

import numpy as np

from kseg import _backend
from kseg.inference._common import _select_output, _to_numpy
from kseg.inference._keras_graph import functional_graph
from kseg.inference.lean import lean_call


def _runs_lean(model):
    """Whether `_run_model` runs `model` with `lean_call`.

    Where `predict_on_batch` would hold every intermediate tensor (torch, see
    `kseg._backend.predict_keeps_intermediates`), a functional model that is
    not compiled (`jit_compile=True` runs `torch.compile` in
    `predict_on_batch`). On TensorFlow and JAX, `predict_on_batch` runs the
    compiled model.
    """
    return (
        _backend.predict_keeps_intermediates()
        and functional_graph(model) is not None
        and not getattr(model, "jit_compile", False)
    )


def _run_model(model, x, output_key, data_format):
    """Runs the model on a channels_last batch and returns channels_last float32 logits.

    The model runs with `lean_call` where `_runs_lean` says so, else with
    `model.predict_on_batch` (or a plain call for a model that has none).
    """
    if data_format == "channels_first":
        x = np.transpose(x, (0, 3, 1, 2))
    if _runs_lean(model):
        outputs = lean_call(model, x)
    elif hasattr(model, "predict_on_batch"):
        outputs = model.predict_on_batch(x)
    else:
        outputs = model(x)
    logits = _to_numpy(_select_output(outputs, output_key)).astype(np.float32)
    if logits.ndim != 4:
        raise ValueError(
            "Expected the model to return logits of rank 4 (B, H, W, K). "
            f"Received: output shape {logits.shape}"
        )
    if data_format == "channels_first":
        logits = np.transpose(logits, (0, 2, 3, 1))
    return logits
