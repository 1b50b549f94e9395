"""`BackupAndRestore`: Keras' callback, resumed at the saved step and written atomically."""

import os
import shutil

import keras

from kseg.training import _keras_internals
from kseg.training.callbacks.saving import (
    read_json,
    remove_stale_temporaries,
    save_atomically,
    saved_size,
    write_json,
)
from kseg.training.divergence import DivergenceError, check_finite_state, count_nonfinite


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' `BackupAndRestore` that resumes in the middle of an epoch and writes atomically.

    Saves the model's weights and the optimizer's state (its step count, so a
    schedule such as `PolyDecay` continues where it was) to
    `<backup_dir>/latest.weights.h5`, and the run's position to
    `<backup_dir>/training_metadata.json` (`{"epoch": epochs done, "step":
    training steps done, "iterations": the optimizer's step count}`), every
    `save_freq` training steps (when the step count is a multiple of it) and at
    the end of every epoch; when `fit` is called again with the same folder, the
    state is restored and training continues at that step.

    Differences from `keras.callbacks.BackupAndRestore` (Keras 3.15):

    - A backup saved after step `s` of a run with `n` steps per epoch resumes
      in epoch `s // n` after `s % n` of its steps, and the run stops once it
      has done `epochs * n` steps in all. Keras' callback restarts the
      interrupted epoch from its first batch with the optimizer's step count
      already at `s`, so the run trains `s % n` steps too many. `fit` cannot
      start an epoch part-way, so after a mid-epoch resume each epoch ends
      `s % n` steps later than in an uninterrupted run (the validation, the
      epoch-end logs and checkpoints move with it) and the last epoch is cut
      short; the optimizer step, the schedule and the total are those of the
      uninterrupted run. The input pipeline starts again from its first batch.
    - Every file is written to a temporary name and moved into place
      (`save_atomically`): a kill during a save leaves the previous backup
      usable. The weights are replaced before the metadata; a kill between the
      two renames is detected from the optimizer step stored in both.
    - The end-of-epoch save is made after every other callback's `on_epoch_end`
      (at the next `on_epoch_begin`, or `on_train_end`), so a run resumed from
      it has already given its validation score to `BestCheckpoint`; with an
      integer `save_freq` the end of every epoch is saved too, so the final
      state of a run is always in the backup.

    Several hosts (`MultiWorkerMirroredStrategy`): every worker saves, on purpose.
    The variables are mirrored, so the workers write the same state; in a folder
    that the hosts share, each rename is atomic and the last one stands, and in a
    folder on each host's own disk every host keeps the copy it must restore from
    (every worker restores, and all must resume at the same step).

    torch.distributed (`kseg.training.DistributionPlan.prepare`): only process 0
    writes (`writes=True` there, False on the others); every process restores, from
    the files process 0 wrote, so the backup folder must be one that all can read
    (on several hosts, a shared folder).

    Step-level resuming needs `fit` to know the number of steps per epoch
    (`steps_per_epoch`, or a dataset of known length); `save_freq` as an
    integer without it is an error. A backup written by Keras' own callback (no
    "step" in its metadata) resumes as Keras does, at its epoch. Keep the same
    `compile` and `fit` arguments (`steps_per_epoch` above all) across a resume.

    Args:
        backup_dir: folder of the backup, used by nothing else.
        save_freq: "epoch" (at the end of every epoch) or a positive integer:
            also every `save_freq` training steps. Defaults to "epoch".
        double_checkpoint: also keep the previous backup (`*.bkp`), restored
            when the latest cannot be read. Defaults to False.
        delete_checkpoint: delete the backup when `fit` ends. Defaults to True
            (as Keras); False keeps it, so that a finished run can be extended.
        verbose: 1 prints a line at every save and restore. Defaults to 0.
        writes: False restores but never writes nor deletes anything (the processes
            of a torch.distributed run other than process 0). Defaults to True.

    Attributes:
        restored_step: the training step the last `fit` resumed after, or None
            when it found no backup of this class.

    Example:

    >>> backup = kseg.training.BackupAndRestore("runs/x/backup", save_freq=500)
    >>> model.fit(train_ds, epochs=10, steps_per_epoch=1000, callbacks=[backup])
    """

    def __init__(
        self,
        backup_dir,
        save_freq="epoch",
        double_checkpoint=False,
        delete_checkpoint=True,
        verbose=0,
        writes=True,
    ):
        if save_freq != "epoch" and (
            isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1
        ):
            raise ValueError(
                "Expected `save_freq` to be 'epoch' or a positive integer (training steps). "
                f"Received: save_freq={save_freq!r}"
            )
        if not backup_dir:
            raise ValueError(f"Expected a backup folder. Received: backup_dir={backup_dir!r}")
        super().__init__(
            os.fspath(backup_dir),
            save_freq=save_freq,
            double_checkpoint=double_checkpoint,
            delete_checkpoint=delete_checkpoint,
        )
        self.verbose = int(verbose)
        self.writes = bool(writes)
        self._files = _keras_internals.backup_files(self)
        self.restored_step = None
        self._step = None
        self._saved_step = None
        self._batch_begin = 0
        self._epochs_done = 0
        self._stop_at = None
        self._epoch_save_due = False

    def _steps_per_epoch(self):
        return (self.params or {}).get("steps") or None

    def _iterations(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_begin(self, logs=None):
        self.restored_step = None
        self._step = self._saved_step = self._stop_at = None
        self._epoch_save_due = False
        steps = self._steps_per_epoch()
        if self.save_freq != "epoch" and steps is None:
            raise ValueError(
                f"BackupAndRestore(save_freq={self.save_freq}) saves and resumes at training "
                "steps, which needs the number of steps per epoch: pass `steps_per_epoch` to "
                "`fit` (or a dataset of known length). Received: steps_per_epoch=None"
            )
        for path in (self._files.weights, self._files.metadata) if self.writes else ():
            if os.path.isdir(os.path.dirname(path)):
                remove_stale_temporaries(path)
        # Keras restores the weights (and the `.bkp` copies when the latest is unreadable)
        # and sets the initial epoch from the metadata.
        try:
            super().on_train_begin(logs)
        except OSError as error:  # h5py: "Unable to open file (truncated file ...)"
            raise ValueError(
                f"The backup {self._files.weights} is not a valid weights file (truncated or "
                f"corrupt: {error}). Delete the folder {self.backup_dir} to start again."
            ) from None
        if os.path.isfile(self._files.weights):
            # A backup written before kseg refused non-finite states may hold them.
            bad = count_nonfinite(self.model.weights)
            if bad:
                raise DivergenceError(
                    f"The backup {self._files.weights} holds {bad:,} NaN or infinite weight "
                    "values: a diverged run saved it. Start again in a new --logdir (or "
                    "delete that folder)."
                )
        if not (os.path.isfile(self._files.weights) and os.path.isfile(self._files.metadata)):
            return
        metadata = read_json(self._files.metadata)
        if "step" not in metadata or steps is None:
            return  # Keras' own backup, or no steps per epoch: Keras' epoch-level resume
        # The weights are replaced before the metadata: if the process died between the two
        # renames, the weights are ahead of the metadata by the difference of optimizer steps.
        iterations = self._iterations()
        step = int(metadata["step"]) + iterations - int(metadata.get("iterations", iterations))
        epoch, offset = divmod(step, steps)
        _keras_internals.set_initial_epoch(self.model, epoch)
        self.restored_step = self._step = self._saved_step = step
        total = self.params["epochs"] * steps
        if offset and step < total:
            self._stop_at = total
        if self.verbose:
            print(
                f"Resuming after training step {step} (epoch {epoch + 1}, step {offset} of "
                f"{steps}) from {self.backup_dir}; the run ends after step {total}.",
                flush=True,
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._save_due_epoch_end()
        if self._step is None:  # a fresh run (fit may start at `initial_epoch`)
            self._step = epoch * (self._steps_per_epoch() or 0)
        self._epochs_done = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_begin = batch

    def on_train_batch_end(self, batch, logs=None):
        before = self._step
        self._step += batch - self._batch_begin + 1  # several with `steps_per_execution`
        if self.save_freq != "epoch" and self._step // self.save_freq > before // self.save_freq:
            self._save_model()
        if self._stop_at is not None and self._step >= self._stop_at:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self._epochs_done = epoch + 1
        self._epoch_save_due = True

    def _save_due_epoch_end(self):
        if self._epoch_save_due and self._step != self._saved_step:
            self._save_model()
        self._epoch_save_due = False

    def on_train_end(self, logs=None):
        if not self.delete_checkpoint:
            self._save_due_epoch_end()
        self._epoch_save_due = False
        if self.model is not None:
            # Not to leak into a later `fit`.
            _keras_internals.set_initial_epoch(self.model, None)
        if self.writes:
            super().on_train_end(logs)  # deletes the backup when `delete_checkpoint`

    def _save_model(self):
        """Writes the weights, then the metadata, each atomically, once they are finite."""
        if not self.writes:
            self._saved_step = self._step
            return
        check_finite_state(self.model, f"the backup in {self.backup_dir}")
        os.makedirs(self.backup_dir, exist_ok=True)
        if self.double_checkpoint:
            for latest, previous in (
                (self._files.weights, self._files.previous_weights),
                (self._files.metadata, self._files.previous_metadata),
            ):
                if os.path.isfile(latest):
                    save_atomically(previous, lambda path, src=latest: shutil.copyfile(src, path))
        model = self.model
        steps = self._steps_per_epoch()
        metadata = {
            "epoch": self._step // steps if steps else self._epochs_done,
            "step": self._step,
            "iterations": self._iterations(),
        }
        save_atomically(
            self._files.weights,
            lambda path: model.save_weights(path, overwrite=True),
            saved_size(model),
        )
        save_atomically(self._files.metadata, lambda path: write_json(path, metadata))
        self._saved_step = self._step
        if self.verbose:
            print(f"\nSaved the training state after step {self._step} to {self.backup_dir}")
