import os

import keras
import numpy as np
import pytest

from kseg.training import PolyDecay, PolyLearningRateSchedule


def reference(step, initial, total, power, end, warmup, start):
    """The poly policy times mmcv's linear warm-up factor, in NumPy float64."""
    step = np.asarray(step, np.float64)
    poly = (initial - end) * (1 - np.minimum(step, total) / total) ** power + end
    if warmup == 0:
        return poly
    return poly * (start + (1 - start) * np.minimum(step / warmup, 1.0))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(initial_learning_rate=0.01, decay_steps=100),
        dict(initial_learning_rate=0.01, decay_steps=100, power=1.0, end_learning_rate=1e-4),
        dict(initial_learning_rate=0.02, decay_steps=50, warmup_steps=10),
        dict(initial_learning_rate=0.1, decay_steps=40, warmup_steps=40, warmup_start_factor=0.0),
    ],
)
def test_matches_numpy_formula(kwargs):
    full = dict(power=0.9, end_learning_rate=0.0, warmup_steps=0, warmup_start_factor=0.1)
    full.update(kwargs)
    schedule = PolyDecay(**kwargs)
    steps = np.array([0, 1, 2, 5, 9, 10, 11, 25, 39, 40, 49, 50, 99, 100, 150])
    got = np.array([float(keras.ops.convert_to_numpy(schedule(s))) for s in steps])
    expected = reference(
        steps,
        full["initial_learning_rate"],
        full["decay_steps"],
        full["power"],
        full["end_learning_rate"],
        full["warmup_steps"],
        full["warmup_start_factor"],
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)


def test_hand_worked_values():
    schedule = PolyDecay(1.0, decay_steps=4, power=1.0, warmup_steps=2, warmup_start_factor=0.5)
    # poly: 1, .75, .5, .25, 0; warm-up factor: .5, .75, 1, 1, 1
    values = [float(keras.ops.convert_to_numpy(schedule(s))) for s in range(6)]
    np.testing.assert_allclose(values, [0.5, 0.5625, 0.5, 0.25, 0.0, 0.0], atol=1e-7)


def test_tensor_step_and_alias():
    assert PolyLearningRateSchedule is PolyDecay
    schedule = PolyDecay(0.01, 10)
    value = schedule(keras.ops.convert_to_tensor(5, "int32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(value), 0.01 * 0.5**0.9, rtol=1e-6)


def test_config_round_trip():
    schedule = PolyDecay(0.01, 300, power=0.8, end_learning_rate=1e-5, warmup_steps=20)
    config = schedule.get_config()
    assert PolyDecay.from_config(config).get_config() == config
    serialized = keras.saving.serialize_keras_object(schedule)
    revived = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(revived, PolyDecay) and revived.get_config() == config
    revived = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert revived.get_config() == config


def test_saved_with_the_optimizer(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(PolyDecay(0.01, 100, warmup_steps=5)), loss="mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), batch_size=2, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    lr = reloaded.optimizer._learning_rate
    assert (
        isinstance(lr, PolyDecay)
        and lr.get_config() == PolyDecay(0.01, 100, warmup_steps=5).get_config()
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded.optimizer.learning_rate),
        reference(2, 0.01, 100, 0.9, 0.0, 5, 0.1),
        rtol=1e-5,
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: decay_steps=0"):
        PolyDecay(0.01, 0)
    with pytest.raises(ValueError, match="warmup_steps=20, decay_steps=10"):
        PolyDecay(0.01, 10, warmup_steps=20)
    with pytest.raises(ValueError, match="Received: warmup_start_factor=1.5"):
        PolyDecay(0.01, 10, warmup_start_factor=1.5)
    with pytest.raises(TypeError, match="decay_steps"):
        PolyDecay(0.01, 10.5)
