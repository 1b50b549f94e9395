"""Faults a long run meets: a loss that turns NaN, a full disk, a damaged backup.

Nothing is ever saved from a state with NaN or infinite weights: the last finite
backup and the best checkpoint stay as they were, and `fit` ends with
`DivergenceError`; a save that finds the device full ends with `DiskFullError`,
which names the file and its folder, and leaves the previous file whole.
"""

import errno
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from kseg.training import (
    BackupAndRestore,
    BestCheckpoint,
    DiskFullError,
    DivergenceCheck,
    DivergenceError,
    save_atomically,
    segmentation_callbacks,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 8
BAD_STEP = 6  # the 6th training step's batch holds a NaN


def _data(bad_step=BAD_STEP):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS, 4)).astype("float32")
    y = rng.normal(size=(STEPS, 1)).astype("float32")
    if bad_step is not None:
        x[bad_step - 1, 0] = np.nan
    return x, y


def _model(optimizer=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.01), loss="mse", run_eagerly=True)
    return model


def _finite(model):
    return all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)


def _fit(model, callbacks, x, y, **kwargs):
    return model.fit(x, y, batch_size=1, epochs=1, shuffle=False, callbacks=callbacks, verbose=0,
                     **kwargs)


def _backup_step(backup_dir):
    with open(os.path.join(backup_dir, "training_metadata.json")) as f:
        return json.load(f)["step"]


def test_a_nan_loss_stops_the_run_and_keeps_the_last_finite_backup(tmp_path):
    model = _model()
    backup = BackupAndRestore(str(tmp_path / "backup"), save_freq=2, delete_checkpoint=False)
    check = DivergenceCheck()
    with pytest.raises(DivergenceError) as raised:
        _fit(model, [check, backup], *_data())
    message = str(raised.value)
    assert f"is nan at step {BAD_STEP}" in message, message
    assert f"the last finite loss was {check.last_finite_loss:.6g} at step {BAD_STEP - 1}" in message
    assert raised.value.step == BAD_STEP and raised.value.last_finite_step == BAD_STEP - 1
    # The step-4 backup stays: the run did not reach its next save (step 6) with NaN weights.
    assert _backup_step(tmp_path / "backup") == 4
    restored = _model()
    restored.load_weights(str(tmp_path / "backup" / "latest.weights.h5"))
    assert _finite(restored)


def test_the_saving_callbacks_refuse_a_nonfinite_state_in_any_order(tmp_path):
    # Without DivergenceCheck (or after it in the list), the backup itself refuses to save.
    model = _model()
    backup = BackupAndRestore(str(tmp_path / "backup"), save_freq=1, delete_checkpoint=False)
    with pytest.raises(DivergenceError, match="weight values are NaN or infinite, so the backup"):
        _fit(model, [backup], *_data())
    assert _backup_step(tmp_path / "backup") == BAD_STEP - 1
    restored = _model()
    restored.load_weights(str(tmp_path / "backup" / "latest.weights.h5"))
    assert _finite(restored)
    # ... and a backup that holds NaN (written by an older release) is not resumed.
    model.save_weights(str(tmp_path / "backup" / "latest.weights.h5"))  # NaN weights
    with pytest.raises(DivergenceError, match="holds .* NaN or infinite weight values"):
        _fit(_model(), [BackupAndRestore(str(tmp_path / "backup"), save_freq=1)], *_data(None))


def test_a_nonfinite_validation_loss_is_never_an_improvement(tmp_path):
    path = str(tmp_path / "best.keras")
    checkpoint = BestCheckpoint(path, monitor="val_score")
    checkpoint.set_model(_model())
    checkpoint.on_train_begin()
    checkpoint.on_epoch_end(0, {"val_score": 0.11, "val_loss": float("nan")})
    assert not os.path.exists(path) and checkpoint.best == -np.inf
    checkpoint.on_epoch_end(1, {"val_score": 0.5, "val_loss": 1.0})
    assert os.path.isfile(path) and checkpoint.best == 0.5
    # A model whose weights are not finite is never written, whatever its score.
    diverged = _model()
    diverged.layers[0].kernel.assign(np.full((4, 3), np.inf, "float32"))
    checkpoint.set_model(diverged)
    before = os.path.getmtime(path)
    with pytest.raises(DivergenceError, match="best.keras was not written"):
        checkpoint.on_epoch_end(2, {"val_score": 0.9, "val_loss": 0.5})
    assert os.path.getmtime(path) == before and checkpoint.best == 0.5


def test_skipped_loss_scale_steps_are_not_divergence():
    # A LossScaleOptimizer skips a step whose gradients are not finite (here: one input of
    # 1e30, inf in float16) and leaves the weights as they were: training goes on.
    keras.config.set_dtype_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1, dtype="float32")]
        )
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.01))
        model.compile(optimizer=optimizer, loss="mse", run_eagerly=True)
    finally:
        keras.config.set_dtype_policy("float32")
    x, y = _data(None)
    x[2, 1] = 1e30
    check = DivergenceCheck()
    _fit(model, [check], x, y)
    assert check.skipped_steps >= 1
    assert _finite(model)
    # The skipped steps (this one, and any whose scaled gradients overflowed) are not counted.
    assert 0 < int(keras.ops.convert_to_numpy(optimizer.iterations)) < STEPS


def test_segmentation_callbacks_check_divergence_first(tmp_path):
    callbacks = segmentation_callbacks(str(tmp_path), backup_dir=str(tmp_path / "backup"))
    assert isinstance(callbacks[0], DivergenceCheck)
    assert isinstance(callbacks[1], BackupAndRestore)


def test_a_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path):
    path = tmp_path / "backup" / "latest.weights.h5"
    path.parent.mkdir()
    path.write_bytes(b"previous")

    def full(temporary):
        with open(temporary, "wb") as f:
            f.write(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError) as raised:
        save_atomically(str(path), full)
    message = str(raised.value)
    assert raised.value.errno == errno.ENOSPC
    assert str(path) in message and str(path.parent) in message
    assert "No space left on device" in message and "previous latest.weights.h5 is intact" in message
    assert path.read_bytes() == b"previous"
    assert os.listdir(path.parent) == ["latest.weights.h5"]
    # h5py reports a full disk as an OSError whose errno it may drop.
    with pytest.raises(DiskFullError):
        save_atomically(str(path), lambda t: (_ for _ in ()).throw(OSError(
            "Can't synchronously write data (file write failed: errno = 28, error message = "
            "'No space left on device')")))
    with pytest.raises(PermissionError):  # other errors pass through unchanged
        save_atomically(str(path), lambda t: (_ for _ in ()).throw(PermissionError("denied")))


FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import sys

    import keras
    import numpy as np

    from kseg.training import BackupAndRestore, DiskFullError

    folder = sys.argv[1]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(4096), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((4, 64), "float32")
    y = np.zeros((4, 1), "float32")
    try:
        model.fit(x, y, batch_size=1, epochs=1, verbose=0,
                  callbacks=[BackupAndRestore(folder, save_freq=1)])
    except DiskFullError as e:
        print("error:", e)
        sys.exit(3)
    """
)


def test_a_full_tmpfs_ends_in_one_error_without_a_crash(tmp_path):
    # A real full device: a 1.2 MB tmpfs, where the first backup (1.1 MB of weights and as
    # much of optimizer state) cannot be written. Needs root and a kernel that lets it mount.
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
        result = subprocess.run(
            [sys.executable, "-c", FULL_DISK_SCRIPT, str(mount / "backup")],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
        leftovers = os.listdir(mount / "backup") if (mount / "backup").is_dir() else []
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
    assert result.returncode == 3, (result.returncode, result.stderr[-3000:])
    assert "No space left on device: could not write" in result.stdout
    assert "Exception ignored" not in result.stderr, result.stderr[-3000:]
    assert not [name for name in leftovers if ".tmp-" in name], leftovers


def test_the_recipe_stops_a_diverging_run_and_resumes_it(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "recipes"))
    import train

    logdir = str(tmp_path / "run")
    common = ["--smoke", "--logdir", logdir, "--save-every", "1", "--optimizer", "sgd"]
    with pytest.raises(SystemExit) as raised:
        train.main([*common, "--lr", "1e12"])
    message = str(raised.value.code)
    assert "Training diverged: " in message, message
    assert "--resume --logdir" in message and "lower --lr" in message
    backup = os.path.join(logdir, "backup")
    assert f"The last backup, after training step {_backup_step(backup)}" in message
    assert not os.path.exists(os.path.join(logdir, "best.keras"))
    # --resume continues from that finite backup (here a state one step of 1e12 away from
    # the start, which may diverge again: then with the same error, the backup unchanged).
    kept = _backup_step(backup)
    capsys.readouterr()
    try:
        results = train.main(["--resume", "--logdir", logdir, "--lr", "0.001"])
    except SystemExit as again:
        assert "Training diverged: " in str(again.code), again.code
        assert _backup_step(backup) >= kept
    else:
        assert np.isfinite(results["mean_iou"])
    assert f"Resuming after training step {kept} " in capsys.readouterr().out


def test_a_truncated_backup_is_named_when_resumed(tmp_path):
    folder = tmp_path / "backup"
    model = _model()
    _fit(model, [BackupAndRestore(str(folder), save_freq=2, delete_checkpoint=False)],
         *_data(None))
    weights = folder / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(ValueError, match="is not a valid weights file \\(truncated or corrupt"):
        _fit(_model(), [BackupAndRestore(str(folder), save_freq=2)], *_data(None))
