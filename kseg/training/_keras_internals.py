"""The Keras internals that kseg.training reads or writes, and nothing else: one place to update.

Keras 3.15 keeps these without documenting them:

- `Model._initial_epoch`: the epoch that `fit` starts at when a callback sets it
  in `on_train_begin` (`keras.callbacks.BackupAndRestore` does, from its
  metadata); kseg's `BackupAndRestore` sets it to the epoch of the saved step;
- `Optimizer._learning_rate`: the learning rate as given (a
  `LearningRateSchedule` stays the schedule object; `optimizer.learning_rate`
  evaluates it at `optimizer.iterations`, which the JAX trainer updates only at
  the end of an epoch);
- `keras.callbacks.BackupAndRestore._weights_path`, `_training_metadata_path`,
  `_prev_weights_path` and `_prev_training_metadata_path`: the files that its
  `on_train_begin` restores from (the `.bkp` copies when the latest is
  unreadable), so kseg's subclass writes exactly those;
- `Layer._flatten_layers(include_self=True, recursive=True)`: a layer and every
  layer it holds, however nested (`.layers` lists only a Model's own);
- `BatchNormalization._moments(inputs, mask)`: the batch mean and variance that
  `BatchNormalization.call` normalises with in training, which
  `kseg.training.synchronize_batch_norm` replaces on the torch backend with the
  moments of every process's batch;
- `Optimizer._apply_weight_decay(variables)`, the decoupled decay that `apply`
  runs before the updates with the base learning rate, which kseg's `SGD` and
  `AdamW` (training/optimizers.py) override to do nothing, as they decay in
  `update_step` with each variable's rate; and `Optimizer._use_weight_decay(variable)`,
  False for what `exclude_from_weight_decay` excludes, which they honour.

tests/training/test_keras_internals.py checks each of them on a small model and
fails naming the Keras version when one changes.
"""

import collections

#: The files of a `keras.callbacks.BackupAndRestore`: the latest weights and metadata,
#: and their previous copies (`double_checkpoint`).
BackupFiles = collections.namedtuple(
    "BackupFiles", ["weights", "metadata", "previous_weights", "previous_metadata"]
)


def set_initial_epoch(model, epoch):
    """Makes the `fit` now starting (in `on_train_begin`) start at `epoch`; None clears it."""
    model._initial_epoch = epoch


def learning_rate(optimizer):
    """The optimizer's learning rate as given: a schedule object, a variable or a callable."""
    rate = getattr(optimizer, "_learning_rate", None)
    return optimizer.learning_rate if rate is None else rate


def backup_files(callback):
    """The `BackupFiles` that a `keras.callbacks.BackupAndRestore` restores from."""
    return BackupFiles(
        callback._weights_path,
        callback._training_metadata_path,
        callback._prev_weights_path,
        callback._prev_training_metadata_path,
    )


def nested_layers(layer):
    """`layer` and every layer it holds, however nested."""
    return layer._flatten_layers(include_self=True, recursive=True)


def set_batch_norm_moments(layer, moments):
    """Makes `layer` (a `keras.layers.BatchNormalization`) train with `moments(inputs, mask)`
    -> `(mean, variance)` instead of its own batch moments."""
    layer._moments = moments
