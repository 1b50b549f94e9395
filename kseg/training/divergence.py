"""Stopping a run whose loss or weights stop being finite, before anything is saved from it."""

import math

import keras
import numpy as np


class DivergenceError(RuntimeError):
    """Training diverged: the loss or the model's weights are no longer finite numbers.

    Raised by `DivergenceCheck` at the first training step whose loss is not finite,
    and by the saving callbacks (`BackupAndRestore`, `BestCheckpoint`) instead of
    writing a state that holds NaN or infinite weights. Nothing is saved from such a
    state, so the last backup and the best checkpoint stay as they were.

    Attributes:
        step: the training step at which it was found (counted as the backups count them).
        last_finite_loss: the last finite training loss logged, or None.
        last_finite_step: the step at which it was logged, or None.
    """

    def __init__(self, message, step=None, last_finite_loss=None, last_finite_step=None):
        super().__init__(message)
        self.step = step
        self.last_finite_loss = last_finite_loss
        self.last_finite_step = last_finite_step


def count_nonfinite(variables):
    """How many values of `variables` (Keras variables or arrays) are NaN or infinite."""
    total = 0
    for variable in variables:
        value = getattr(variable, "value", variable)
        array = np.asarray(keras.ops.convert_to_numpy(value))
        if np.issubdtype(array.dtype, np.floating):
            total += int(array.size - np.count_nonzero(np.isfinite(array)))
    return total


def check_finite_state(model, what):
    """Raises `DivergenceError` when a weight of `model` is not finite; `what` names the save.

    Every weight is checked, the non-trainable ones too (BatchNorm's moving
    statistics become NaN with the rest). Called before each save of a
    checkpoint or a backup: a state is written only once it is known to be finite.
    """
    bad = count_nonfinite(model.weights)
    if bad:
        total = sum(int(np.prod(w.shape)) for w in model.weights)
        raise DivergenceError(
            f"Training diverged: {bad:,} of the model's {total:,} weight values are NaN or "
            f"infinite, so {what} was not written (the previous one is intact)."
        )


def _is_loss_scaling(optimizer):
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def _finite(value):
    try:
        return math.isfinite(float(np.asarray(value)))
    except (TypeError, ValueError):
        return True  # not a number: nothing to judge


class DivergenceCheck(keras.callbacks.Callback):
    """Stops training with `DivergenceError` at the first step whose loss is not finite.

    Keras' `fit` goes on after the loss becomes NaN: the weights turn NaN, and
    every later checkpoint and backup would hold them. This callback raises
    instead, out of `fit`, naming the step and the last finite loss; place it
    before the callbacks that save (`kseg.training.segmentation_callbacks` does),
    which also refuse to write a non-finite state themselves.

    Under mixed precision, a `keras.optimizers.LossScaleOptimizer` skips the steps
    whose gradients are not finite and lowers its scale: such a step is not
    divergence. When the optimizer scales the loss, a non-finite loss stops the run
    only once a weight is non-finite too (Keras logs the epoch's running mean of the
    loss, which stays non-finite after one such step, so the weights decide).

    Args:
        monitor: the logged training loss. Defaults to "loss".

    Attributes:
        last_finite_loss: the last finite value of `monitor`, and
        last_finite_step: the training step it was logged at (None before any).
        skipped_steps: steps with a non-finite loss that a loss-scaling optimizer
            skipped in this `fit`.
    """

    def __init__(self, monitor="loss"):
        super().__init__()
        self.monitor = monitor
        self.last_finite_loss = None
        self.last_finite_step = None
        self.skipped_steps = 0

    def on_train_begin(self, logs=None):
        self.skipped_steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        # One read of the step count per epoch; each batch's step follows from its index.
        self._epoch_start = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _step(self, batch):
        """The training step that batch `batch` of this epoch ended (counted from 1)."""
        return self._epoch_start + batch + 1

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            return
        value = logs[self.monitor]
        if _finite(value):
            self.last_finite_loss = float(np.asarray(value))
            self.last_finite_step = self._step(batch)
            return
        step = self._step(batch)
        if _is_loss_scaling(self.model.optimizer) and not count_nonfinite(self.model.weights):
            self.skipped_steps += 1  # the optimizer skipped it: the weights are unchanged
            return
        last = (
            "no finite loss was logged before it"
            if self.last_finite_loss is None
            else f"the last finite loss was {self.last_finite_loss:.6g} at step "
            f"{self.last_finite_step}"
        )
        raise DivergenceError(
            f"Training diverged: the training {self.monitor} is {float(np.asarray(value))} at "
            f"step {step} ({last}). Training stopped; nothing was saved from this state.",
            step=step,
            last_finite_loss=self.last_finite_loss,
            last_finite_step=self.last_finite_step,
        )
