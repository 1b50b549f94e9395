"""Shared test helpers: the standard checks every kseg layer goes through."""

import os
import tempfile

import keras
import numpy as np

BACKEND = keras.backend.backend()


# Relative tolerance of a 16-bit policy's result against float32: a few
# roundings to 11 (float16) or 8 (bfloat16) significant bits.
MIXED_PRECISION_TOLERANCES = {"mixed_float16": 1e-2, "mixed_bfloat16": 6e-2}


def assert_close_to_float32(got, expected, policy):
    """Checks a mixed-precision result against the float32 one with the same weights.

    Every floating output must be finite and agree elementwise within
    `tol * (|expected| + max|expected|)`, `tol` from
    `MIXED_PRECISION_TOLERANCES[policy]`: relative to each output's scale, so
    near-zero entries are judged by the output's magnitude. Integer outputs
    (such as argmax indices) are not compared: 16-bit rounding may create ties.
    """
    tol = MIXED_PRECISION_TOLERANCES[policy]
    for i, (g, e) in enumerate(zip(_as_list(got), _as_list(expected))):
        g, e = np.asarray(g), np.asarray(e)
        if not (_is_float(g) and _is_float(e)):
            continue
        g = g.astype("float64")
        e = e.astype("float64")
        bad = int(np.sum(~np.isfinite(g)))
        assert bad == 0, f"output {i}: {bad} non-finite values under {policy}"
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        err = np.abs(g - e) - tol * (np.abs(e) + scale)
        worst = float(np.max(err)) if e.size else 0.0
        assert worst <= 0, (
            f"output {i} under {policy} differs from float32 beyond tolerance {tol}: "
            f"max |diff| = {float(np.max(np.abs(g - e))):.3g}, max |float32| = {scale:.3g}"
        )


def _is_float(a):
    return np.issubdtype(a.dtype, np.floating) or str(a.dtype) == "bfloat16"


def random_array(shape, seed=0, dtype="float32", scale=1.0):
    """Standard-normal test data, deterministic by seed."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def to_numpy(x):
    """Converts a backend tensor (or a nested structure of them) to NumPy."""
    return keras.tree.map_structure(lambda t: np.asarray(keras.ops.convert_to_numpy(t)), x)


def infer(model, x):
    """`model(x, training=False)` as NumPy, each backend on its fastest path for a test.

    On JAX an eager call compiles each of the model's ops as a program of its own (for
    every new shape and dtype), and a test's tensors are too small for running them to
    matter: one compiled `predict_on_batch` is faster (SegNet's mixed-precision test:
    30.5 s -> 24.7 s). On TensorFlow and torch the eager call is the faster.
    """
    if BACKEND == "jax":
        return model.predict_on_batch(x)
    return to_numpy(model(x, training=False))


def batch_norms(model):
    """Every `BatchNormalization` in `model`, however nested (models, `ConvBNAct`, ...)."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def _as_list(x):
    if isinstance(x, dict):
        return [x[k] for k in sorted(x)]
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _shape_of(x):
    return tuple(int(d) for d in x.shape)


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_shape=None,
    expected_output_shape=None,
    *,
    input_data=None,
    symbolic_input_shape=None,
    train=True,
    mixed_precision=True,
    save=True,
):
    """Runs the checks every layer must pass and returns the eager output.

    1. `get_config` / `from_config` round trip gives the same config.
    2. Eager call: output shape equals `expected_output_shape` (a shape, or a
       list/dict of shapes for several outputs) and `compute_output_shape`.
    3. Symbolic call on `keras.Input` (by default with `None` spatial sizes):
       the symbolic output matches the eager output where the size is known.
    4. `.keras` save and `safe_mode=True` reload give equal outputs.
    5. One `fit` step on float outputs leaves every weight finite.
    6. Under each of `mixed_float16` and `mixed_bfloat16`, the same layer
       with the float32 weights gives a finite forward pass close to the
       float32 one (`assert_close_to_float32`); under `mixed_float16` a
       training step leaves every weight finite.

    `input_shape` is a full shape with batch (or a list of them for layers with
    several inputs); `input_data` may be passed instead (array or list).
    """
    if input_data is None:
        shapes = input_shape if isinstance(input_shape, list) else [input_shape]
        input_data = [random_array(s, seed=i) for i, s in enumerate(shapes)]
    multi_input = isinstance(input_data, list) and len(input_data) > 1
    data = input_data if isinstance(input_data, list) else [input_data]
    call_arg = data if multi_input else data[0]

    # 1. Config round trip.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    revived = layer_cls.from_config(config)
    assert revived.get_config() == config, "config round trip changed the config"

    # 2. Eager call and compute_output_shape.
    out = layer(call_arg)
    outs = _as_list(out)
    if expected_output_shape is not None:
        expected = (
            _as_list(expected_output_shape)
            if not isinstance(expected_output_shape, tuple)
            else [expected_output_shape]
        )
        got = [_shape_of(o) for o in outs]
        assert got == [tuple(e) for e in expected], f"eager shapes {got} != expected {expected}"
    in_shapes = [tuple(d.shape) for d in data]
    cos = layer.compute_output_shape(in_shapes if multi_input else in_shapes[0])
    cos_list = (
        _as_list(cos)
        if not (isinstance(cos, tuple) and all(isinstance(d, (int, type(None))) for d in cos))
        else [cos]
    )
    for c, o in zip(cos_list, outs):
        c = tuple(c)
        assert len(c) == len(o.shape) and all(
            cd is None or cd == od for cd, od in zip(c, _shape_of(o))
        ), f"compute_output_shape {c} disagrees with eager shape {_shape_of(o)}"

    # 3. Symbolic call with unknown spatial sizes.
    if symbolic_input_shape is None:
        symbolic_input_shape = [
            (None,) * (len(d.shape) - 2) + (d.shape[-1],)
            if keras.config.image_data_format() == "channels_last" or d.ndim < 4
            else (d.shape[1],) + (None,) * (d.ndim - 2)
            for d in data
        ]
    elif not isinstance(symbolic_input_shape, list):
        symbolic_input_shape = [symbolic_input_shape]
    inputs = [keras.Input(shape=s, dtype=str(d.dtype)) for s, d in zip(symbolic_input_shape, data)]
    sym_layer = layer_cls(**init_kwargs)
    sym_out = sym_layer(inputs if multi_input else inputs[0])
    for so, o in zip(_as_list(sym_out), outs):
        assert len(so.shape) == len(o.shape)
        for sd, od in zip(tuple(so.shape)[1:], _shape_of(o)[1:]):
            assert sd is None or sd == od, f"symbolic shape {so.shape} vs eager {o.shape}"

    # 4. Save and reload through a functional model.
    model = keras.Model(inputs if multi_input else inputs[0], sym_out)
    expected_np = to_numpy(model(call_arg, training=False))
    if save:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.keras")
            model.save(path)
            reloaded = keras.saving.load_model(path, safe_mode=True)
        got_np = to_numpy(reloaded(call_arg, training=False))
        for e, g in zip(_as_list(expected_np), _as_list(got_np)):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)

    # 5. One training step.
    float_outs = [
        str(o.dtype).endswith(("float32", "float16", "float64")) for o in _as_list(sym_out)
    ]
    if train and model.trainable_weights and any(float_outs):
        _one_step(model, call_arg, expected_np)

    # 6. Mixed precision, with the weights of the float32 model.
    if mixed_precision:
        reference = to_numpy(model(call_arg, training=False))
        for mp_policy in MIXED_PRECISION_TOLERANCES:
            policy = keras.config.dtype_policy()
            keras.config.set_dtype_policy(mp_policy)
            try:
                mp_inputs = [
                    keras.Input(shape=s, dtype=str(d.dtype))
                    for s, d in zip(symbolic_input_shape, data)
                ]
                mp_out = layer_cls(**init_kwargs)(mp_inputs if multi_input else mp_inputs[0])
                mp_model = keras.Model(mp_inputs if multi_input else mp_inputs[0], mp_out)
                mp_model.set_weights(model.get_weights())
                y = to_numpy(mp_model(call_arg, training=False))
                assert_close_to_float32(y, reference, mp_policy)
                # A training step where 16-bit gradients can overflow or underflow
                # (float16; bfloat16 has float32's exponent range and the forward
                # check above covers its precision).
                if (
                    mp_policy == "mixed_float16"
                    and train
                    and mp_model.trainable_weights
                    and any(float_outs)
                ):
                    _one_step(mp_model, call_arg, y)
            finally:
                keras.config.set_dtype_policy(policy)
    return to_numpy(out)


def compile_for_fit(model, *args, **kwargs):
    """`model.compile(*args, **kwargs)`, then the optimizer's variables built.

    Left to `fit` on TensorFlow (without a distribution strategy), they are created inside
    the first trace of the train step, and tf.function then traces the whole step a second
    time; tracing is most of what a small test's `fit` costs. As recipes/train.py does.
    """
    model.compile(*args, **kwargs)
    model.optimizer.build(model.trainable_variables)


def _one_step(model, x, y_like):
    """One SGD step on an MSE loss towards zeros; every weight must stay finite."""
    ys = keras.tree.map_structure(lambda v: np.zeros(v.shape, "float32"), y_like)
    if isinstance(ys, tuple):
        ys = list(ys)
    float_mask = keras.tree.map_structure(
        lambda v: (
            np.issubdtype(np.asarray(v).dtype, np.floating)
            or str(np.asarray(v).dtype) == "bfloat16"
        ),
        y_like,
    )
    if isinstance(ys, list):
        losses = ["mse" if m else None for m in float_mask]
    elif isinstance(ys, dict):
        losses = {k: ("mse" if float_mask[k] else None) for k in ys}
    else:
        losses = "mse"
    compile_for_fit(model, optimizer=keras.optimizers.SGD(1e-3), loss=losses)
    history = model.fit(
        x, ys, epochs=1, batch_size=len(x[0]) if isinstance(x, list) else len(x), verbose=0
    )
    assert np.isfinite(history.history["loss"][-1]), "non-finite training loss"
    for w in model.weights:
        assert np.all(np.isfinite(to_numpy(w.value).astype("float32"))), (
            f"non-finite weight {w.path}"
        )


def torch_or_skip():
    """Imports torch for use as an independent reference, or skips the test."""
    import pytest

    return pytest.importorskip("torch")


def run_model_test(model, input_shape, num_classes, *, train=True, save=True):
    """Checks a model builder's output: logits at the input size in float32.

    Runs an odd-sized image batch through `model`, checks every output named
    like logits (`main`, `aux` or a lone tensor) is `(B, H, W, num_classes)`
    float32 and finite, reloads the `.keras` file with `safe_mode=True` and
    compares outputs, and runs one training step. Returns the outputs.
    """
    x = np.random.default_rng(0).uniform(0, 255, input_shape).astype("float32")
    out = model(x, training=False)
    logits = out if not isinstance(out, dict) else {k: out[k] for k in ("main", "aux") if k in out}
    for name, y in logits.items() if isinstance(logits, dict) else [("logits", logits)]:
        assert _shape_of(y) == (*input_shape[:3], num_classes), f"{name}: {y.shape}"
        assert keras.backend.standardize_dtype(y.dtype) == "float32", f"{name} dtype {y.dtype}"
        assert np.all(np.isfinite(to_numpy(y))), f"{name} not finite"
    expected = to_numpy(out)
    if save:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.keras")
            model.save(path)
            reloaded = keras.saving.load_model(path, safe_mode=True)
        got = to_numpy(reloaded(x, training=False))
        for e, g in zip(_as_list(expected), _as_list(got)):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
    if train:
        labels = np.random.default_rng(1).integers(0, num_classes, input_shape[:3]).astype("int32")
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        ys, losses = labels, loss
        if isinstance(out, dict):
            ys = {k: labels for k in logits}
            losses = {k: loss for k in logits}
        compile_for_fit(model, optimizer=keras.optimizers.SGD(1e-3), loss=losses)
        history = model.fit(x, ys, epochs=1, batch_size=input_shape[0], verbose=0)
        assert np.isfinite(history.history["loss"][-1])
        for w in model.weights:
            assert np.all(np.isfinite(to_numpy(w.value).astype("float32"))), w.path
    return expected
