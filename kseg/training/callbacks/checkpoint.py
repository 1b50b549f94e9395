"""`BestCheckpoint`: the model with the best validation score and that score, saved atomically."""

import math
import os
import warnings

import keras
import numpy as np

from kseg.training.callbacks.saving import (
    read_json,
    remove_stale_temporaries,
    save_atomically,
    saved_size,
    write_json,
)
from kseg.training.divergence import check_finite_state


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the model with the best validation score, written atomically, and its score.

    At the end of every epoch whose logs hold `monitor`, the model is saved to
    `filepath` when the value improves on the best so far (`mode="max"`: is
    larger; NaN never improves). The file is written through a temporary name
    and moved into place (`save_atomically`), so a kill during the save leaves
    the previous best model whole.

    With `state_path`, the best value is also written there (JSON
    `{monitor: value}`, atomically, right after the model) and read back at the
    start of `fit` when both files exist, so that a resumed run replaces the
    checkpoint only with a better model than the one it holds. The two files
    are replaced one after the other, model first: only a kill in the
    microseconds between the two renames leaves the state one save behind.

    Args:
        filepath: ".keras" file (or ".weights.h5" with `save_weights_only`).
        monitor: the logged name of the score, "val_" + the metric's `name`.
            Defaults to "val_mean_iou".
        mode: "max" (IoU-like scores) or "min" (losses). Defaults to "max".
        save_weights_only: save only the weights. Defaults to False.
        state_path: JSON file for the best value (survives a resume), or None.
        verbose: 1 prints a line when the checkpoint is replaced (or not).

    Attributes:
        best: the best value so far (-inf / inf before any).
    """

    def __init__(
        self,
        filepath,
        *,
        monitor="val_mean_iou",
        mode="max",
        save_weights_only=False,
        state_path=None,
        verbose=0,
    ):
        super().__init__()
        filepath = os.fspath(filepath)
        endings = (".weights.h5",) if save_weights_only else (".keras",)
        if not filepath.endswith(endings):
            raise ValueError(
                f"Expected `filepath` to end with {endings[0]!r}"
                + (" with save_weights_only=True" if save_weights_only else "")
                + f". Received: filepath={filepath!r}"
            )
        if mode not in ("max", "min"):
            raise ValueError(f"Expected `mode` to be 'max' or 'min'. Received: mode={mode!r}")
        self.filepath = filepath
        self.monitor = monitor
        self.mode = mode
        self.save_weights_only = bool(save_weights_only)
        self.state_path = None if state_path is None else os.fspath(state_path)
        self.verbose = int(verbose)
        self.best = -math.inf if mode == "max" else math.inf

    def _improves(self, value):
        return value > self.best if self.mode == "max" else value < self.best

    def on_train_begin(self, logs=None):
        remove_stale_temporaries(self.filepath)
        if self.state_path is None:
            return
        remove_stale_temporaries(self.state_path)
        if not (os.path.isfile(self.state_path) and os.path.isfile(self.filepath)):
            return
        state = read_json(self.state_path)
        if not isinstance(state, dict) or self.monitor not in state:
            raise ValueError(
                f"Expected {self.state_path} to hold the best value of {self.monitor!r} "
                f"(monitor={self.monitor!r}). Received: {state!r}"
            )
        self.best = float(state[self.monitor])

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            warnings.warn(
                f"BestCheckpoint: no {self.monitor!r} in the logs of epoch {epoch + 1} "
                f"(monitor={self.monitor!r}; logged: {sorted(logs)}); nothing saved.",
                stacklevel=2,
            )
            return
        value = float(np.asarray(logs[self.monitor]))
        nonfinite = sorted(
            key
            for key, v in logs.items()
            if key.startswith("val_") and key.endswith("loss") and not np.all(np.isfinite(v))
        )
        if nonfinite:
            # A diverged model can still score (its argmax is some class): never the best.
            if self.verbose:
                print(
                    f"\nEpoch {epoch + 1}: {', '.join(nonfinite)} not finite; {self.monitor} "
                    f"{value:.5f} is not counted, {self.filepath} is kept"
                )
            return
        if not self._improves(value):
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
            return
        if self.verbose:
            print(
                f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                f"{value:.5f}, saving model to {self.filepath}"
            )
        model = self.model
        check_finite_state(model, self.filepath)
        folder = os.path.dirname(self.filepath)
        if folder:
            os.makedirs(folder, exist_ok=True)
        size = saved_size(model)
        if self.save_weights_only:
            save_atomically(
                self.filepath, lambda path: model.save_weights(path, overwrite=True), size
            )
        else:
            save_atomically(self.filepath, lambda path: model.save(path, overwrite=True), size)
        self.best = value
        if self.state_path is not None:
            save_atomically(self.state_path, lambda path: write_json(path, {self.monitor: value}))


def best_checkpoint(
    filepath,
    *,
    monitor="val_mean_iou",
    mode="max",
    save_weights_only=False,
    state_path=None,
    verbose=0,
):
    """The callback that keeps the model with the best validation mIoU (`BestCheckpoint`).

    Args:
        filepath: ".keras" file (or ".weights.h5" with `save_weights_only`).
        monitor: the logged name of the mIoU: "val_" + the metric's `name`.
            Defaults to "val_mean_iou".
        mode: "max" for IoU-like metrics. Defaults to "max".
        save_weights_only: save only the weights. Defaults to False.
        state_path: JSON file that keeps the best value across a resume, or None.
        verbose: 1 prints a line when the checkpoint is replaced.

    Returns:
        `BestCheckpoint(filepath, monitor=monitor, mode=mode, ...)`.
    """
    return BestCheckpoint(
        filepath,
        monitor=monitor,
        mode=mode,
        save_weights_only=save_weights_only,
        state_path=state_path,
        verbose=verbose,
    )
