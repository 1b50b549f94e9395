"""The Keras internals that kseg.training reads or writes (kseg/training/_keras_internals.py).

Keras does not document them, so an upgrade may rename them or change their
role. Each check here uses one of them on a small compiled model and fails
naming the attribute and the installed Keras version, so that such an upgrade
stops here, in one place, instead of in the middle of a resumed training run.
"""

import os

import keras
import numpy as np
import pytest

from kseg.training import PolyDecay, _keras_internals

MODULE = "kseg/training/_keras_internals.py"


def _fail(attribute, problem="absent"):
    pytest.fail(
        f"kseg's callbacks read Keras private attribute {attribute}, {problem} in Keras "
        f"{keras.__version__}: update {MODULE} (and this test) to the new Keras."
    )


def _model(optimizer="sgd"):
    inputs = keras.Input((4,))
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="inner")], name="sub")
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(inner(inputs)))
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")


def test_initial_epoch_set_in_on_train_begin_moves_the_start_of_fit():
    model = _model()
    if not hasattr(model, "_initial_epoch"):
        _fail("Model._initial_epoch")
    epochs = []

    class _Start(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            _keras_internals.set_initial_epoch(self.model, 2)

        def on_epoch_begin(self, epoch, logs=None):
            epochs.append(epoch)

    x, y = _data()
    model.fit(x, y, epochs=4, batch_size=4, callbacks=[_Start()], verbose=0)
    if epochs != [2, 3]:
        _fail("Model._initial_epoch", f"not the epoch fit starts at (epochs run: {epochs})")
    _keras_internals.set_initial_epoch(model, None)
    epochs.clear()
    model.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[_Record(epochs)])
    if epochs != [0, 1]:
        _fail("Model._initial_epoch", f"not cleared by None (epochs run: {epochs})")


class _Record(keras.callbacks.Callback):
    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_the_learning_rate_as_given_is_the_schedule_object():
    schedule = PolyDecay(0.1, decay_steps=10)
    optimizer = _model(keras.optimizers.SGD(schedule)).optimizer
    if not hasattr(optimizer, "_learning_rate"):
        _fail("Optimizer._learning_rate")
    if _keras_internals.learning_rate(optimizer) is not schedule:
        _fail("Optimizer._learning_rate", "not the schedule object passed to the optimizer")
    fixed = _model(keras.optimizers.SGD(0.05)).optimizer
    rate = float(keras.ops.convert_to_numpy(_keras_internals.learning_rate(fixed)))
    if not np.isclose(rate, 0.05):
        _fail("Optimizer._learning_rate", f"{rate} for an optimizer built with 0.05")


def test_backup_files_are_the_files_keras_restores_from(tmp_path):
    backup_dir = str(tmp_path / "backup")
    callback = keras.callbacks.BackupAndRestore(backup_dir)
    names = ("_weights_path", "_training_metadata_path")
    names += ("_prev_weights_path", "_prev_training_metadata_path")
    for name in names:
        if not isinstance(getattr(callback, name, None), str):
            _fail(f"BackupAndRestore.{name}")
    files = _keras_internals.backup_files(callback)
    expected = (
        os.path.join(backup_dir, "latest.weights.h5"),
        os.path.join(backup_dir, "training_metadata.json"),
    )
    if files[:2] != expected or files[2:] != tuple(f"{path}.bkp" for path in expected):
        _fail("BackupAndRestore._weights_path", f"files {files} where kseg expects {expected}")
    # Keras' own callback restores from those files: the weights and the epoch.
    x, y = _data()
    model = _model()
    model.fit(
        x,
        y,
        epochs=2,
        batch_size=4,
        verbose=0,
        callbacks=[callback.__class__(backup_dir, delete_checkpoint=False)],
    )
    if not (os.path.isfile(files.weights) and os.path.isfile(files.metadata)):
        _fail("BackupAndRestore._weights_path", "not where Keras writes its backup")
    restored, epochs = _model(), []
    restored.fit(
        x,
        y,
        epochs=3,
        batch_size=4,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(backup_dir), _Record(epochs)],
    )
    if epochs != [2]:
        _fail("BackupAndRestore._training_metadata_path", f"not restored (epochs run: {epochs})")


def test_nested_layers_reach_inside_nested_models():
    model = _model()
    if not callable(getattr(model, "_flatten_layers", None)):
        _fail("Layer._flatten_layers")
    names = {layer.name for layer in _keras_internals.nested_layers(model)}
    if not {model.name, "sub", "inner", "head"} <= names:
        _fail("Layer._flatten_layers", f"layers {sorted(names)} without the nested 'inner'")


def test_weight_decay_hooks_are_the_ones_apply_uses():
    for name in ("_apply_weight_decay", "_use_weight_decay"):
        if not callable(getattr(keras.optimizers.AdamW, name, None)):
            _fail(f"Optimizer.{name}")
    calls = []

    class _Probe(keras.optimizers.AdamW):
        def _apply_weight_decay(self, variables):
            calls.append(len(variables))

    variable = keras.Variable(np.ones(2, "float32"), name="kernel")
    zero = keras.ops.zeros((2,))
    _Probe(0.1, weight_decay=0.5).apply_gradients([(zero, variable)])
    if calls != [1]:
        _fail("Optimizer._apply_weight_decay", "not called by apply")
    # A zero gradient moves nothing in Adam: with the hook overridden, nothing decays either.
    if not np.allclose(keras.ops.convert_to_numpy(variable), 1.0):
        _fail("Optimizer._apply_weight_decay", "not the only place where Keras decays")
    optimizer = keras.optimizers.AdamW(0.1)
    optimizer.exclude_from_weight_decay(var_names=["kern"])
    if optimizer._use_weight_decay(variable):
        _fail("Optimizer._use_weight_decay", "True for a variable excluded by name")


def test_batch_norm_trains_with_the_moments_it_is_given():
    if not callable(getattr(keras.layers.BatchNormalization, "_moments", None)):
        _fail("BatchNormalization._moments")
    layer = keras.layers.BatchNormalization(momentum=0.5, epsilon=0.0, center=False, scale=False)
    x = np.arange(12, dtype="float32").reshape(3, 2, 2)
    layer.build(x.shape)
    given = (keras.ops.full((2,), 1.0), keras.ops.full((2,), 4.0))
    _keras_internals.set_batch_norm_moments(layer, lambda inputs, mask: given)
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    # Normalised with the given moments (mean 1, variance 4), not those of `x`.
    if not np.allclose(out, (x - 1.0) / 2.0, atol=1e-6):
        _fail("BatchNormalization._moments", "not what call normalises with in training")
    if not np.allclose(keras.ops.convert_to_numpy(layer.moving_mean), 0.5):
        _fail("BatchNormalization._moments", "not what the moving statistics follow")
