"""Training utilities: the poly learning-rate schedule, the papers' SGD and AdamW, TensorBoard /
checkpoint / resumable-backup / label-check callbacks, atomic saves, and multi-device
set-up (`plan_distribution`, `synchronize_batch_norm`; on torch `distribute_torch_steps`).

Uses TensorFlow's `tf.summary` (imported here, whatever the Keras backend) to
write images and scalars next to `keras.callbacks.TensorBoard`'s logs.
"""

from kseg.training.callbacks import (
    BackupAndRestore,
    BestCheckpoint,
    DiskFullError,
    LabelCheck,
    LearningRateLogger,
    PerClassIoULogger,
    SegmentationImageLogger,
    best_checkpoint,
    remove_stale_temporaries,
    save_atomically,
    segmentation_callbacks,
    take_samples,
)
from kseg.training.distribute import (
    DistributionPlan,
    distribute_torch_steps,
    plan_distribution,
    synchronize_batch_norm,
)
from kseg.training.divergence import DivergenceCheck, DivergenceError
from kseg.training.optimizers import SGD, AdamW, variable_groups
from kseg.training.schedules import PolyDecay, PolyLearningRateSchedule

__all__ = [
    "SGD",
    "AdamW",
    "variable_groups",
    "PolyDecay",
    "PolyLearningRateSchedule",
    "SegmentationImageLogger",
    "PerClassIoULogger",
    "LearningRateLogger",
    "LabelCheck",
    "DivergenceCheck",
    "DivergenceError",
    "DiskFullError",
    "BackupAndRestore",
    "BestCheckpoint",
    "best_checkpoint",
    "save_atomically",
    "remove_stale_temporaries",
    "segmentation_callbacks",
    "take_samples",
    "DistributionPlan",
    "plan_distribution",
    "distribute_torch_steps",
    "synchronize_batch_norm",
]
