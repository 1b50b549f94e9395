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


def mmengine_reference(last, initial, total, power, end, warmup, start):
    """mmengine's `LinearLR(start_factor=start, begin=0, end=warmup)` then `PolyLR(eta_min=end,
    power=power, begin=warmup, end=total)`, stepped as its runner steps them, in float64.

    A transcription of `_ParamScheduler.step` and the chained `_get_value` of
    `LinearParamScheduler` and `PolyParamScheduler` (mmengine/optim/scheduler/
    param_scheduler.py): each scheduler multiplies the group's current rate while
    `begin <= global_step < end`, and spans `total_iters = end - begin - 1` steps.
    Returns the rate of global steps 0 ... `last` (the rate the optimizer uses at
    that iteration: the schedulers step once at construction and after each iteration).
    """
    lr, values = float(initial), []
    linear_total, poly_total = warmup - 1, total - warmup - 1
    linear_step = poly_step = -1
    for global_step in range(last + 1):
        if global_step < warmup:  # LinearLR(begin=0, end=warmup, end_factor=1)
            linear_step += 1
            if linear_step == 0:
                lr = lr * start
            else:
                lr = lr * (
                    1.0 + (1.0 - start) / (linear_total * start + (linear_step - 1) * (1.0 - start))
                )
        if warmup <= global_step < total:  # PolyLR(begin=warmup, end=total)
            poly_step += 1
            if poly_step > 0:
                lr = (lr - end) * (1 - 1 / (poly_total - poly_step + 1)) ** power + end
        values.append(lr)
    return np.array(values)


def _values(schedule, steps):
    return np.array([float(keras.ops.convert_to_numpy(schedule(s))) for s in steps])


@pytest.mark.parametrize(
    "initial, total, power, end, warmup, start",
    [
        (6e-5, 160, 1.0, 0.0, 15, 1e-6),  # SegFormer's schedule, 1000x shorter
        (0.01, 50, 0.9, 1e-4, 0, 0.1),  # no warm-up: mmengine's PolyLR alone
        (0.01, 30, 0.9, 1e-4, 7, 0.25),
        (0.02, 10, 1.0, 0.0, 1, 0.5),  # one warm-up step: PolyLR starts from f * initial
        (0.02, 6, 2.0, 0.0, 5, 0.1),  # one poly step, which keeps the rate
    ],
)
def test_sequential_warmup_matches_mmengine_linear_then_poly(
    initial, total, power, end, warmup, start
):
    schedule = PolyDecay(
        initial,
        total,
        power=power,
        end_learning_rate=end,
        warmup_steps=warmup,
        warmup_start_factor=start,
        warmup_mode="sequential",
    )
    steps = np.arange(total + 10)  # the rate stays at its last value after `total`
    expected = mmengine_reference(int(steps[-1]), initial, total, power, end, warmup, start)
    np.testing.assert_allclose(_values(schedule, steps), expected, rtol=2e-6, atol=1e-12)


def test_segformer_schedule_at_full_length():
    # mmsegmentation 1.x configs/segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py:
    # LinearLR(start_factor=1e-6, begin=0, end=1500), PolyLR(eta_min=0, power=1, begin=1500,
    # end=160000), AdamW lr 6e-5.
    schedule = PolyDecay(
        6e-5,
        160000,
        power=1.0,
        warmup_steps=1500,
        warmup_start_factor=1e-6,
        warmup_mode="sequential",
    )
    expected = mmengine_reference(160100, 6e-5, 160000, 1.0, 0.0, 1500, 1e-6)
    steps = [0, 1, 2, 749, 1498, 1499, 1500, 1501, 80000, 159997, 159998, 159999, 160000, 160100]
    np.testing.assert_allclose(_values(schedule, steps), expected[steps], rtol=2e-6, atol=1e-15)
    assert expected[1499] == pytest.approx(6e-5) and expected[159999] == 0.0


def test_hand_worked_values():
    schedule = PolyDecay(1.0, decay_steps=4, power=1.0, warmup_steps=2, warmup_start_factor=0.5)
    # poly: 1, .75, .5, .25, 0; warm-up factor: .5, .75, 1, 1, 1
    values = [float(keras.ops.convert_to_numpy(schedule(s))) for s in range(6)]
    np.testing.assert_allclose(values, [0.5, 0.5625, 0.5, 0.25, 0.0, 0.0], atol=1e-7)
    sequential = PolyDecay(
        1.0, 5, power=1.0, warmup_steps=3, warmup_start_factor=0.5, warmup_mode="sequential"
    )
    # Warm-up .5, .75, 1 (steps 0-2); poly over N = 5 - 3 - 1 = 1 step: 1 (step 3), 0 (step 4).
    np.testing.assert_allclose(_values(sequential, range(6)), [0.5, 0.75, 1, 1, 0, 0], atol=1e-7)


def test_tensor_step_and_alias():
    assert PolyLearningRateSchedule is PolyDecay
    schedule = PolyDecay(0.01, 10)
    value = schedule(keras.ops.convert_to_tensor(5, "int32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(value), 0.01 * 0.5**0.9, rtol=1e-6)


def test_config_round_trip():
    schedule = PolyDecay(0.01, 300, power=0.8, end_learning_rate=1e-5, warmup_steps=20)
    config = schedule.get_config()
    assert config["warmup_mode"] == "multiply"
    assert PolyDecay.from_config(config).get_config() == config
    sequential = PolyDecay(0.01, 300, warmup_steps=20, warmup_mode="sequential")
    assert PolyDecay.from_config(sequential.get_config()).warmup_mode == "sequential"
    legacy = {k: v for k, v in config.items() if k != "warmup_mode"}  # saved before the option
    assert PolyDecay.from_config(legacy).get_config() == config
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
    with pytest.raises(ValueError, match="Received: warmup_mode='linear'"):
        PolyDecay(0.01, 10, warmup_mode="linear")
    with pytest.raises(
        ValueError, match="warmup_mode='sequential'.*warmup_steps=10, decay_steps=10"
    ):
        PolyDecay(0.01, 10, warmup_steps=10, warmup_mode="sequential")
