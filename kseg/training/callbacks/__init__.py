"""Training callbacks: TensorBoard images, per-class IoU and learning-rate scalars, checkpoints,
resumable backups, label checks.

The scalars and images are written with `tf.summary` into the run folders of
`keras.callbacks.TensorBoard` (`<log_dir>/train` and `<log_dir>/validation`),
so one `tensorboard --logdir <log_dir>` shows them next to Keras' loss and
metric curves, on every backend.

Resuming after an interruption: `BackupAndRestore` is Keras' callback of that
name (it saves the model and optimizer state, so the step count of a schedule
such as `PolyDecay` too) with two changes. It resumes a backup saved in the
middle of an epoch at that step, so that the finished run has done exactly
`epochs * steps_per_epoch` optimizer steps (Keras 3.15's callback restarts the
interrupted epoch from its first batch, with the optimizer's step count already
advanced, and so trains that epoch's saved steps twice); and it writes every
file atomically (`save_atomically`), so that a kill during a save leaves the
previous backup usable. `BestCheckpoint` keeps the best model and its score the
same way, so that the best score so far survives a resume. kseg's tests check
both on the TensorFlow, JAX and PyTorch backends.
"""

import os

import keras

from kseg.training.callbacks.backup import BackupAndRestore
from kseg.training.callbacks.checkpoint import BestCheckpoint, best_checkpoint
from kseg.training.callbacks.label_check import LabelCheck
from kseg.training.callbacks.saving import (
    DiskFullError,
    remove_stale_temporaries,
    save_atomically,
    saved_size,
)
from kseg.training.callbacks.summaries import (
    LearningRateLogger,
    PerClassIoULogger,
    SegmentationImageLogger,
    take_samples,
)
from kseg.training.divergence import DivergenceCheck, DivergenceError

__all__ = [
    "BackupAndRestore",
    "BestCheckpoint",
    "DiskFullError",
    "DivergenceCheck",
    "DivergenceError",
    "LabelCheck",
    "LearningRateLogger",
    "PerClassIoULogger",
    "SegmentationImageLogger",
    "best_checkpoint",
    "remove_stale_temporaries",
    "save_atomically",
    "saved_size",
    "segmentation_callbacks",
    "take_samples",
]


def segmentation_callbacks(
    log_dir,
    *,
    samples=None,
    metric=None,
    class_names=None,
    checkpoint_path=None,
    backup_dir=None,
    monitor="val_mean_iou",
    lr_update_freq="epoch",
    label_check=True,
    backup_save_freq="epoch",
    delete_backup=True,
    state_path=None,
    verbose=0,
    writes=True,
):
    """The standard set of callbacks of the training recipe.

    Args:
        log_dir: TensorBoard log folder.
        samples: `(images, masks)` for `SegmentationImageLogger`, or None.
        metric: object with `per_class_iou()` for `PerClassIoULogger`, or None.
        class_names: class names for the per-class scalars.
        checkpoint_path: file for `best_checkpoint`, or None.
        backup_dir: folder for `BackupAndRestore` (resume after an
            interruption, saved at every epoch end), or None.
        monitor: the validation mIoU name for the checkpoint.
        lr_update_freq: `update_freq` of `LearningRateLogger`.
        label_check: add `LabelCheck()` (stop with an error when a metric of
            the model sees labels that are not classes). Defaults to True.
        backup_save_freq: `save_freq` of `BackupAndRestore`: "epoch" or a
            number of training steps. Defaults to "epoch".
        delete_backup: `delete_checkpoint` of `BackupAndRestore`: delete the
            backup when `fit` ends. Defaults to True; False keeps it, so that a
            finished run can be extended.
        state_path: JSON file in which the checkpoint keeps its best score
            across a resume (`BestCheckpoint`), or None.
        verbose: `verbose` of `BackupAndRestore` and the checkpoint (1 prints
            a line at every save). Defaults to 0.
        writes: False for a process that writes nothing (the processes of a
            torch.distributed run other than process 0,
            `kseg.training.DistributionPlan.is_chief`): only `DivergenceCheck`,
            `BackupAndRestore(writes=False)` (it restores the backup that process 0
            wrote) and `LabelCheck`, which every process runs alike. Defaults to True.

    Returns:
        A list: `DivergenceCheck` (a non-finite loss stops the run before
        anything is saved from it), `BackupAndRestore` (before the others, so
        that they see the restored state), `LabelCheck` (before anything logs a figure),
        `TensorBoard(log_dir)`, `LearningRateLogger`, and the optional
        per-class IoU, image and checkpoint callbacks.
    """
    # DivergenceCheck first: it stops the run at a non-finite loss before any callback saves.
    callbacks = [DivergenceCheck()]
    if backup_dir is not None:
        callbacks.append(
            BackupAndRestore(
                backup_dir,
                save_freq=backup_save_freq,
                delete_checkpoint=delete_backup,
                verbose=verbose,
                writes=writes,
            )
        )
    if label_check:
        callbacks.append(LabelCheck())
    if not writes:
        return callbacks
    callbacks.append(keras.callbacks.TensorBoard(os.fspath(log_dir)))
    callbacks.append(LearningRateLogger(log_dir, update_freq=lr_update_freq))
    if metric is not None:
        callbacks.append(PerClassIoULogger(metric, log_dir, class_names))
    if samples is not None:
        callbacks.append(SegmentationImageLogger(log_dir, *samples))
    if checkpoint_path is not None:
        callbacks.append(
            best_checkpoint(
                checkpoint_path, monitor=monitor, state_path=state_path, verbose=verbose
            )
        )
    return callbacks
