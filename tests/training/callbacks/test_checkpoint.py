"""The best checkpoint (kseg.training.callbacks.checkpoint)."""

import json
import os

import keras
import numpy as np
import pytest

import kseg
from kseg.training import (
    BestCheckpoint,
    best_checkpoint,
)
from tests.training.callbacks.fitting import (
    _fit,
    _model,
    _weights,
)


def _val_logs(values):
    class _Logs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_score"] = values[epoch]

    return _Logs()


def test_best_checkpoint_keeps_the_best_and_its_score_across_a_resume(tmp_path):
    path, state = tmp_path / "best.keras", tmp_path / "best.json"
    model = _model()
    callback = BestCheckpoint(path, monitor="val_score", state_path=state)
    _fit(model, [_val_logs([0.2, 0.5, 0.4]), callback])
    assert callback.best == 0.5
    assert json.loads(state.read_text()) == {"val_score": 0.5}
    best_weights = _weights(keras.saving.load_model(path))

    # A resumed run starts from the saved score: 0.45 does not replace the 0.5 model.
    resumed = BestCheckpoint(path, monitor="val_score", state_path=state)
    _fit(_model(), [_val_logs([0.45]), resumed], epochs=1)
    assert resumed.best == 0.5
    for a, b in zip(_weights(keras.saving.load_model(path)), best_weights):
        np.testing.assert_array_equal(a, b)
    # NaN never improves; mode="min" keeps the lowest.
    nan = BestCheckpoint(tmp_path / "n.keras", monitor="val_score")
    _fit(_model(), [_val_logs([float("nan")]), nan], epochs=1)
    assert not (tmp_path / "n.keras").exists()
    low = best_checkpoint(tmp_path / "l.keras", monitor="val_score", mode="min")
    _fit(_model(), [_val_logs([0.3, 0.1, 0.2]), low])
    assert low.best == 0.1
    # Without the model file the saved score is not trusted.
    os.remove(path)
    fresh = BestCheckpoint(path, monitor="val_score", state_path=state)
    _fit(_model(), [_val_logs([0.1]), fresh], epochs=1)
    assert fresh.best == 0.1 and path.exists()


def test_best_checkpoint_failed_save_keeps_the_previous_model(tmp_path):
    path = tmp_path / "best.weights.h5"
    model = _model()
    callback = BestCheckpoint(path, monitor="val_score", save_weights_only=True)
    _fit(model, [_val_logs([0.2]), callback], epochs=1)
    before = path.read_bytes()

    def fail_mid_save(p, overwrite=True):
        with open(p, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    model.save_weights = fail_mid_save
    with pytest.raises(OSError, match="disk full"):
        callback.on_epoch_end(1, {"val_score": 0.9})
    assert path.read_bytes() == before and callback.best == 0.2
    assert sorted(os.listdir(tmp_path)) == ["best.weights.h5"]


def test_best_checkpoint_factory(tmp_path):
    callback = best_checkpoint(str(tmp_path / "best.keras"))
    assert isinstance(callback, kseg.training.BestCheckpoint)
    assert callback.monitor == "val_mean_iou" and callback.mode == "max"
    assert callback.state_path is None
