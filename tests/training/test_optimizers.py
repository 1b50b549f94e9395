import os
import re

import keras
import numpy as np
import pytest

import kseg
from kseg.training import SGD

torch = pytest.importorskip("torch")

SHAPES = {"kernel": (3, 4), "bias": (4,), "gamma": (2, 3)}


def _problem(seed=0, steps=5):
    """Initial values and one hand-written gradient per step for each parameter."""
    rng = np.random.default_rng(seed)
    init = {k: rng.normal(size=s).astype("float32") for k, s in SHAPES.items()}
    grads = [
        {k: rng.normal(size=s).astype("float32") for k, s in SHAPES.items()} for _ in range(steps)
    ]
    return init, grads


def _tensor(x):
    return keras.ops.convert_to_tensor(x)


def _run_kseg(optimizer, init, grads):
    variables = {k: keras.Variable(v, name=k) for k, v in init.items()}
    for step in grads:
        optimizer.apply_gradients([(_tensor(step[k]), variables[k]) for k in SHAPES])
    return {k: keras.ops.convert_to_numpy(v) for k, v in variables.items()}


def _run_torch(init, grads, lr, momentum, nesterov, wd, no_decay=()):
    params = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    groups = [
        {"params": [p for k, p in params.items() if k not in no_decay], "weight_decay": wd},
        {"params": [p for k, p in params.items() if k in no_decay], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    for step in grads:
        for k, p in params.items():
            p.grad = torch.tensor(step[k])
        optimizer.step()
    return {k: p.detach().numpy() for k, p in params.items()}


@pytest.mark.parametrize(
    "momentum, nesterov, wd",
    [(0.9, False, 1e-4), (0.9, False, 0.05), (0.9, True, 0.05), (0.0, False, 0.05)],
)
def test_five_steps_equal_torch_sgd_with_weight_decay(momentum, nesterov, wd):
    init, grads = _problem()
    got = _run_kseg(SGD(0.1, momentum=momentum, nesterov=nesterov, l2=wd), init, grads)
    expected = _run_torch(init, grads, 0.1, momentum, nesterov, wd)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], expected[k], rtol=0, atol=1e-6, err_msg=k)


def test_keras_decoupled_weight_decay_is_not_the_papers_decay():
    # Why the class exists: Keras' decoupled decay departs from torch's by far more
    # than rounding, while kseg's SGD above matches it to 1e-6.
    init, grads = _problem()
    keras_sgd = keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.05)
    got = _run_kseg(keras_sgd, init, grads)
    expected = _run_torch(init, grads, 0.1, 0.9, False, 0.05)
    assert np.abs(got["kernel"] - expected["kernel"]).max() > 1e-3


def test_l2_exclude_by_name_and_path_equals_torch_parameter_groups():
    init, grads = _problem(seed=1)
    optimizer = SGD(0.1, momentum=0.9, l2=0.05, l2_exclude=("bias", "gamma"))
    got = _run_kseg(optimizer, init, grads)
    expected = _run_torch(init, grads, 0.1, 0.9, False, 0.05, no_decay=("bias", "gamma"))
    for k in SHAPES:
        np.testing.assert_allclose(got[k], expected[k], rtol=0, atol=1e-6, err_msg=k)

    layer = keras.layers.Dense(2, name="fc")
    layer.build((None, 3))
    layer.bias.assign(np.ones(2, "float32"))
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    optimizer = SGD(0.1, l2=1.0, l2_exclude=["fc/bias"])
    optimizer.apply_gradients(
        [
            (_tensor(np.zeros((3, 2), "float32")), layer.kernel),
            (_tensor(np.zeros((2,), "float32")), layer.bias),
        ]
    )
    # Zero gradients: the kernel only decays, w -= lr * l2 * w; the bias stays.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.kernel), 0.9 * kernel, atol=1e-7)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.bias), np.ones(2))


def test_with_a_schedule_the_rate_enters_the_velocity_as_in_caffe():
    init, grads = _problem(seed=2)
    schedule = kseg.training.PolyDecay(0.1, decay_steps=5)
    got = _run_kseg(SGD(schedule, momentum=0.9, l2=0.05), init, grads)
    for k in SHAPES:  # Caffe's SGDSolver: v = m * v + lr * (g + wd * w); w -= v
        w = init[k].astype(np.float64)
        v = np.zeros_like(w)
        for t, step in enumerate(grads):
            lr = 0.1 * (1 - t / 5) ** 0.9
            v = 0.9 * v + lr * (step[k] + 0.05 * w)
            w = w - v
        np.testing.assert_allclose(got[k], w, rtol=0, atol=1e-6, err_msg=k)


def test_config_round_trip():
    optimizer = SGD(0.05, momentum=0.9, nesterov=True, l2=1e-4, l2_exclude=("bias",))
    config = optimizer.get_config()
    assert config["l2"] == 1e-4 and config["l2_exclude"] == ["bias"]
    restored = SGD.from_config(config)
    assert restored.get_config() == config
    revived = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(revived, SGD) and revived.l2 == 1e-4 and revived.nesterov


def _tiny_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Conv2D(2, 1, name="classifier")(keras.layers.ReLU()(x))
    return keras.Model(inputs, outputs)


def test_fit_save_and_reload_with_optimizer_state(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(8, 8, 8, 3)).astype("float32")
    labels = rng.integers(0, 2, size=(8, 8, 8)).astype("int32")
    model = _tiny_model()
    model.compile(
        optimizer=SGD(0.01, momentum=0.9, l2=1e-4),
        loss=kseg.losses.SegmentationCrossEntropy(),
    )
    history = model.fit(images, labels, batch_size=4, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 4

    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(reloaded.optimizer, SGD)
    assert reloaded.optimizer.l2 == 1e-4 and reloaded.optimizer.momentum == 0.9
    saved = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
    loaded = [keras.ops.convert_to_numpy(v) for v in reloaded.optimizer.variables]
    assert len(saved) == len(loaded) > 1
    for a, b in zip(saved, loaded):
        np.testing.assert_array_equal(a, b)
    reloaded.fit(images, labels, batch_size=4, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(l2=-1.0), ValueError, "Received: l2=-1.0"),
        (dict(l2="a"), TypeError, "Received: l2='a'"),
        (dict(momentum=1.5), ValueError, "Received: momentum=1.5"),
        (dict(l2=1e-4, weight_decay=1e-4), ValueError, "at most one of `l2`"),
        (dict(l2_exclude=3), TypeError, "Received: l2_exclude=3"),
        (dict(l2_exclude=("bias", 3)), TypeError, "Received: l2_exclude=('bias', 3)"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        SGD(0.01, **kwargs)


# --- per-variable learning rates and weight decay ---------------------------------------------

LR_MULTIPLIERS = {
    "decode_head": 10.0,
    "classifier": 5.0,
    "head_fuse/bias": 2.0,
    "stem": 3.0,
    "norm": 0.5,
}
DECAY_EXCLUDE = ("norm", "classifier/bias")
#: `(multiplier, decayed)` of each variable of `_named_model` under the keys above, written
#: out by hand from mmengine's rule: the longest matching key, ties in alphabetical order.
GROUPS = {
    "stem/kernel": (3.0, True),
    "stem/bias": (3.0, True),
    "stem_norm/gamma": (0.5, False),  # "norm" and "stem" match, both 4 letters: "norm" first
    "stem_norm/beta": (0.5, False),
    "decode_head_fuse/kernel": (10.0, True),
    "decode_head_fuse/bias": (2.0, True),  # "head_fuse/bias" is longer than "decode_head"
    "classifier/kernel": (5.0, True),
    "classifier/bias": (5.0, False),
}


def _named_model(seed=0):
    """Dense -> LayerNorm -> Dense (relu) -> Dense, named so that the keys above match."""
    inputs = keras.Input((4,))
    x = keras.layers.Dense(6, name="stem")(inputs)
    x = keras.layers.LayerNormalization(epsilon=1e-3, name="stem_norm")(x)
    x = keras.layers.Dense(5, activation="relu", name="decode_head_fuse")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="classifier")(x))
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    return model


def _values(model):
    return {v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_variables}


def _torch_optimizer(kind, params, groups, lr, wd, **kwargs):
    """torch.optim with one parameter group per variable: lr * multiplier, wd or 0."""
    param_groups = [
        {"params": [p], "lr": lr * groups[k][0], "weight_decay": wd if groups[k][1] else 0.0}
        for k, p in params.items()
    ]
    for group, key in zip(param_groups, params):
        group["multiplier"] = groups[key][0]
    cls = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[kind]
    return cls(param_groups, lr=lr, **kwargs)


def _torch_steps(kind, init, grads, lrs, groups, wd, **kwargs):
    params = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    optimizer = _torch_optimizer(kind, params, groups, lrs[0], wd, **kwargs)
    for lr, step in zip(lrs, grads):
        for group in optimizer.param_groups:
            group["lr"] = lr * group["multiplier"]
        for k, p in params.items():
            p.grad = torch.tensor(step[k])
        optimizer.step()
    return {k: p.detach().numpy() for k, p in params.items()}


def _gradients(model, steps=5, seed=1, tiny=("classifier/bias",)):
    """Fixed gradients per step; those of `tiny` are 1e-6 small, where Adam's epsilon counts."""
    rng = np.random.default_rng(seed)
    return [
        {
            v.path: rng.normal(size=v.shape).astype("float32") * (1e-6 if v.path in tiny else 1.0)
            for v in model.trainable_variables
        }
        for _ in range(steps)
    ]


def _keras_steps(optimizer, model, grads):
    variables = model.trainable_variables
    for step in grads:
        optimizer.apply_gradients([(_tensor(step[v.path]), v) for v in variables])
    return _values(model)


def _assert_close(got, expected, atol=1e-6):
    assert got.keys() == expected.keys()
    for k in got:
        np.testing.assert_allclose(got[k], expected[k], rtol=0, atol=atol, err_msg=k)


def test_variable_groups_follow_mmengine_custom_keys():
    model = _named_model()
    groups = kseg.training.variable_groups(model.trainable_variables, LR_MULTIPLIERS, DECAY_EXCLUDE)
    assert dict(zip(_values(model), groups)) == GROUPS
    # No keys: every variable at the base rate, decayed.
    assert set(kseg.training.variable_groups(model.trainable_variables)) == {(1.0, True)}


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_with_groups_and_a_schedule_equals_torch_adamw(amsgrad):
    model = _named_model()
    init, grads = _values(model), _gradients(model)
    schedule = kseg.training.PolyDecay(0.01, decay_steps=5, power=1.0)
    lrs = [0.01 * (1 - t / 5) for t in range(5)]
    optimizer = kseg.training.AdamW(
        schedule,
        weight_decay=0.05,
        amsgrad=amsgrad,
        lr_multipliers=LR_MULTIPLIERS,
        decay_exclude=DECAY_EXCLUDE,
    )
    got = _keras_steps(optimizer, model, grads)
    expected = _torch_steps("adamw", init, grads, lrs, GROUPS, 0.05, amsgrad=amsgrad)
    _assert_close(got, expected)


def test_adamw_defaults_are_torchs_and_keras_adamw_differs():
    model = _named_model()
    init, grads = _values(model), _gradients(model)
    uniform = dict.fromkeys(init, (1.0, True))
    expected = _torch_steps("adamw", init, grads, [1e-3] * 5, uniform, 0.01)  # torch defaults
    _assert_close(_keras_steps(kseg.training.AdamW(), model, grads), expected)
    # keras.optimizers.AdamW adds epsilon before the bias correction of v: with the same
    # epsilon, the variable with tiny gradients moves differently by far more than rounding.
    model = _named_model()
    keras_adamw = keras.optimizers.AdamW(1e-3, weight_decay=0.01, epsilon=1e-8)
    got = _keras_steps(keras_adamw, model, grads)
    assert np.abs(got["classifier/bias"] - expected["classifier/bias"]).max() > 1e-4


def test_adamw_honours_keras_exclude_from_weight_decay():
    model = _named_model()
    init, grads = _values(model), _gradients(model)
    optimizer = kseg.training.AdamW(0.01, weight_decay=0.1, decay_exclude=("norm",))
    optimizer.exclude_from_weight_decay(var_names=["bias"])  # Keras: a pattern of names
    groups = {k: (1.0, "norm" not in k and not k.endswith("bias")) for k in init}
    expected = _torch_steps("adamw", init, grads, [0.01] * 5, groups, 0.1)
    _assert_close(_keras_steps(optimizer, model, grads), expected)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_with_groups_equals_torch_sgd(nesterov):
    model = _named_model()
    init, grads = _values(model), _gradients(model, tiny=())
    optimizer = SGD(
        0.05,
        momentum=0.9,
        nesterov=nesterov,
        l2=0.01,
        lr_multipliers=LR_MULTIPLIERS,
        decay_exclude=DECAY_EXCLUDE,
    )
    got = _keras_steps(optimizer, model, grads)
    expected = _torch_steps(
        "sgd", init, grads, [0.05] * 5, GROUPS, 0.01, momentum=0.9, nesterov=nesterov
    )
    _assert_close(got, expected)


def test_sgd_decoupled_weight_decay_uses_each_variables_rate():
    # Keras' decoupled decay, now applied per variable: w *= 1 - lr_v * wd before the update.
    model = _named_model()
    init, grads = _values(model), _gradients(model, tiny=())
    optimizer = SGD(
        0.05, momentum=0.9, weight_decay=0.2, lr_multipliers=LR_MULTIPLIERS, l2_exclude=["bias"]
    )
    got = _keras_steps(optimizer, model, grads)
    for k, (multiplier, _) in GROUPS.items():
        lr, decayed = 0.05 * multiplier, not k.endswith("bias")
        w, velocity = init[k].astype(np.float64), 0.0
        for step in grads:
            w = w * (1 - lr * 0.2) if decayed else w
            velocity = 0.9 * velocity - lr * step[k]
            w = w + velocity
        np.testing.assert_allclose(got[k], w, rtol=0, atol=1e-6, err_msg=k)


def _torch_forward(params, x):
    """`_named_model` in torch (Keras kernels are (in, out); LayerNorm epsilon 1e-3)."""
    F = torch.nn.functional
    h = x @ params["stem/kernel"] + params["stem/bias"]
    h = F.layer_norm(h, (6,), params["stem_norm/gamma"], params["stem_norm/beta"], eps=1e-3)
    h = torch.relu(h @ params["decode_head_fuse/kernel"] + params["decode_head_fuse/bias"])
    return h @ params["classifier/kernel"] + params["classifier/bias"]


def _fit_problem():
    rng = np.random.default_rng(2)
    return rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 3)).astype("float32")


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_two_fit_steps_equal_torch(kind):
    x, y = _fit_problem()
    model = _named_model()
    init = _values(model)
    groups = {"lr_multipliers": LR_MULTIPLIERS, "decay_exclude": DECAY_EXCLUDE}
    if kind == "adamw":
        optimizer = kseg.training.AdamW(0.01, weight_decay=0.05, **groups)
        torch_kwargs = dict(lr=0.01, wd=0.05)
    else:
        optimizer = SGD(0.01, momentum=0.9, l2=0.05, **groups)
        torch_kwargs = dict(lr=0.01, wd=0.05, momentum=0.9)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)

    params = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    reference = _torch_optimizer(kind, params, GROUPS, **torch_kwargs)
    for _ in range(2):
        reference.zero_grad()
        loss = ((_torch_forward(params, torch.tensor(x)) - torch.tensor(y)) ** 2).mean()
        loss.backward()
        reference.step()
    _assert_close(_values(model), {k: p.detach().numpy() for k, p in params.items()})


def test_adamw_saved_and_reloaded_with_its_groups(tmp_path):
    x, y = _fit_problem()
    model = _named_model()
    schedule = kseg.training.PolyDecay(
        0.01, 10, power=1.0, warmup_steps=3, warmup_start_factor=1e-6, warmup_mode="sequential"
    )
    optimizer = kseg.training.AdamW(
        schedule, weight_decay=0.05, lr_multipliers=LR_MULTIPLIERS, decay_exclude=DECAY_EXCLUDE
    )
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(reloaded.optimizer, kseg.training.AdamW)
    assert reloaded.optimizer.lr_multipliers == LR_MULTIPLIERS
    assert tuple(reloaded.optimizer.decay_exclude) == DECAY_EXCLUDE
    assert reloaded.optimizer.epsilon == 1e-8 and reloaded.optimizer.weight_decay == 0.05
    for a, b in zip(model.optimizer.variables, reloaded.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    # The next epoch goes on identically: the groups are rebuilt from the saved keys.
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    reloaded.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    _assert_close(_values(reloaded), _values(model), atol=1e-7)


@pytest.mark.parametrize("cls", ["AdamW", "SGD"])
def test_groups_config_round_trip(cls):
    optimizer_cls = getattr(kseg.training, cls)
    optimizer = optimizer_cls(0.05, lr_multipliers={"head": 10}, decay_exclude="norm")
    config = optimizer.get_config()
    assert config["lr_multipliers"] == {"head": 10.0} and config["decay_exclude"] == ["norm"]
    assert optimizer_cls.from_config(config).get_config() == config
    revived = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(revived, optimizer_cls) and revived.get_config() == config


@pytest.mark.parametrize("cls", ["AdamW", "SGD"])
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(lr_multipliers={"head": "x"}), TypeError, "Received: lr_multipliers['head']='x'"),
        (dict(lr_multipliers={"head": -1}), ValueError, "Received: lr_multipliers['head']=-1.0"),
        (dict(lr_multipliers=["head"]), TypeError, "Received: lr_multipliers=['head']"),
        (dict(lr_multipliers={3: 1.0}), TypeError, "Received: lr_multipliers={3: 1.0}"),
        (dict(decay_exclude=3), TypeError, "Received: decay_exclude=3"),
        (dict(decay_exclude=("norm", "")), TypeError, "Received: decay_exclude=('norm', '')"),
    ],
)
def test_bad_group_arguments(cls, kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        getattr(kseg.training, cls)(0.01, **kwargs)


@pytest.mark.parametrize("cls", ["AdamW", "SGD"])
def test_a_key_that_matches_no_variable_is_refused_at_build(cls):
    model = _named_model()
    optimizer = getattr(kseg.training, cls)(0.01, lr_multipliers={"decoder": 10.0, "stem": 2.0})
    with pytest.raises(ValueError, match=re.escape("keys matching no variable: ['decoder']")):
        optimizer.build(model.trainable_variables)
    optimizer = getattr(kseg.training, cls)(0.01, decay_exclude=("norm", "bn"))
    with pytest.raises(ValueError, match=re.escape("Received: decay_exclude=('norm', 'bn')")):
        optimizer.build(model.trainable_variables)


def test_adamw_bad_arguments():
    with pytest.raises(TypeError, match="Received: weight_decay=None"):
        kseg.training.AdamW(0.01, weight_decay=None)
    with pytest.raises(ValueError, match="Received: weight_decay=-0.1"):
        kseg.training.AdamW(0.01, weight_decay=-0.1)
