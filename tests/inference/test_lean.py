"""`kseg.inference.lean_call`: the layer-by-layer run that frees tensors early.

Its outputs must be those of `model(x, training=False)` bit for bit, and it
must hold far fewer intermediate tensors at once than Keras' functional call,
which keeps every one of them until it returns.
"""

import weakref

import keras
import numpy as np
import pytest
from keras import ops

import kseg
from kseg import inference
from tests.helpers import to_numpy
from tests.inference.helpers import random_images
from tests.models.conftest import tiny_resnet

K = 3


def _tiny_deeplabv3plus():
    return kseg.models.DeepLabV3Plus(
        K, backbone=tiny_resnet(8), aspp_filters=8, low_level_filters=4, decoder_filters=8
    )


BUILDERS = {
    "deeplabv3plus": _tiny_deeplabv3plus,
    "unet": lambda: kseg.models.UNet(K, base_filters=4, depth=2, padding="same", batch_norm=True),
    "deeplabv3_aux": lambda: kseg.models.DeepLabV3(
        K, backbone=tiny_resnet(16), aspp_filters=8, aux_head=True
    ),
    "with_dataset": lambda: kseg.models.with_dataset(
        _tiny_deeplabv3plus(), {"name": "toy", "class_names": ["a", "b", "c"]}
    ),
}


def _randomize(model, seed=0):
    """Random values for the all-zero trainable weights and the BN statistics,
    so that every branch reaches the outputs with non-trivial values."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        value = to_numpy(w.value)
        if "moving_variance" in w.path:
            w.assign(rng.uniform(0.5, 1.5, value.shape).astype(value.dtype))
        elif "moving_mean" in w.path or (w.trainable and not np.any(value)):
            w.assign(rng.normal(0.0, 0.1, value.shape).astype(value.dtype))


def _assert_same_outputs(got, expected):
    """Same structure, same dtypes, equal bit for bit."""
    keras.tree.assert_same_structure(got, expected)
    for g, e in zip(keras.tree.flatten(got), keras.tree.flatten(expected)):
        g, e = to_numpy(g), to_numpy(e)
        assert g.dtype == e.dtype
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_lean_call_equals_model_call(name):
    model = BUILDERS[name]()
    _randomize(model)
    x = random_images((2, 40, 48, 3))
    got = inference.lean_call(model, x)
    expected = model(x, training=False)
    _assert_same_outputs(got, expected)
    assert float(np.std(to_numpy(keras.tree.flatten(got)[0]))) > 0
    if name == "deeplabv3_aux":
        assert sorted(got) == ["aux", "main"]


def test_lean_call_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = _tiny_deeplabv3plus()
    _randomize(model)
    x = random_images((1, 32, 32, 3))
    got = inference.lean_call(model, x)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"
    _assert_same_outputs(got, model(x, training=False))


class _TwoOutputs(keras.layers.Layer):
    """A layer with two outputs (a dict): the sum and the difference of its inputs."""

    def call(self, x, y):
        return {"sum": ops.add(x, y), "diff": ops.subtract(x, y)}


class _Mix(keras.layers.Layer):
    """`x * scale + other`, with `other` a keyword tensor argument."""

    def call(self, x, other=None, scale=1.0):
        return ops.add(ops.multiply(x, scale), other)


class _TrainingFlag(keras.layers.Layer):
    """Adds 1 in training mode; training by default, so only an injected
    `training=False` gives the inference result."""

    def call(self, x, training=True):
        return ops.add(x, 1.0) if training else x


def _hand_made_model():
    """A graph with what a careless runner gets wrong: a layer called twice, a
    layer with several outputs, a keyword tensor argument, a list argument, a
    tensor read again near the end, a nested model called twice (and one of
    its outputs unused), a built Sequential inside, Keras ops and a layer
    whose `training` defaults to True."""
    keras.utils.set_random_seed(1)
    inner_in = keras.Input((None, None, 4))
    inner_a = keras.layers.Conv2D(4, 3, padding="same", name="inner_conv")(inner_in)
    inner_b = keras.layers.Conv2D(2, 1, name="inner_unused")(inner_a)
    inner = keras.Model(inner_in, [keras.layers.ReLU()(inner_a), inner_b], name="inner")
    sequential = keras.Sequential(
        [
            keras.Input((None, None, 4)),
            keras.layers.Conv2D(4, 1),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.5),
        ],
        name="sequential",
    )

    inputs = keras.Input((None, None, 3), name="image")
    early = keras.layers.Conv2D(4, 3, padding="same", name="early")(inputs)
    shared = keras.layers.Conv2D(4, 3, padding="same", name="shared")
    first = shared(early)
    pooled, indices = kseg.layers.MaxPoolingWithArgmax2D(name="pool")(first)
    unpooled = kseg.layers.MaxUnpooling2D(name="unpool")([pooled, indices, first])
    second = shared(keras.layers.ReLU()(unpooled))
    parts = _TwoOutputs(name="two")(first, second)
    nested_1 = inner(parts["sum"])[0]
    nested_2 = inner(sequential(parts["diff"]))[0]
    flagged = _TrainingFlag(name="flag")(nested_2, training=True)
    mixed = _Mix(name="mix")(nested_1, other=early, scale=0.5)  # `early` read late
    merged = keras.layers.Concatenate()([mixed, flagged, ops.add(early, 1.0) * 2.0])
    main = keras.layers.Conv2D(K, 1, name="main")(keras.layers.Dropout(0.5)(merged))
    aux = keras.layers.Conv2D(K, 1, name="aux")(early)
    return keras.Model(inputs, {"main": main, "aux": aux})


def test_lean_call_on_a_hand_made_graph():
    model = _hand_made_model()
    _randomize(model)
    x = random_images((2, 10, 12, 3))
    got = inference.lean_call(model, x)
    _assert_same_outputs(got, model(x, training=False))
    # Inputs by name, and the model wrapped in a SegmentationModel.
    _assert_same_outputs(inference.lean_call(model, {"image": x}), got)
    # Wrapping shares the layers; on torch the SegmentationModel switches them to kseg's
    # torch paths (equal to Keras' within float rounding), so both run after it.
    wrapped = kseg.models.with_dataset(model, None)
    _assert_same_outputs(inference.lean_call(wrapped, x), inference.lean_call(model, x))
    # The layer whose `training` defaults to True ran in inference mode (last:
    # a training call updates the BatchNormalization statistics).
    assert not np.array_equal(to_numpy(got["main"]), to_numpy(model(x, training=True)["main"]))


def test_lean_call_falls_back_for_subclassed_models():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(2, 3, padding="same")
            self.drop = keras.layers.Dropout(0.5)

        def call(self, x, training=None):
            return self.drop(self.conv(x), training=training)

    model = Subclassed()
    x = random_images((1, 8, 8, 3))
    _assert_same_outputs(inference.lean_call(model, x), model(x, training=False))


def test_lean_call_errors():
    model = _hand_made_model()
    with pytest.raises(TypeError, match="Expected `model` to be a keras.Model.*Received: model="):
        inference.lean_call(lambda x: x, np.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"to hold 1 tensors.*Received: 2 tensors"):
        inference.lean_call(model, [np.zeros((1, 4, 4, 3))] * 2)
    with pytest.raises(ValueError, match=r"keys \['image'\].*Received: inputs with keys \['x'\]"):
        inference.lean_call(model, {"x": np.zeros((1, 4, 4, 3))})
    with pytest.raises(ValueError, match=r"rank 4.*Received: shape \(4, 4, 3\)"):
        inference.lean_call(model, np.zeros((4, 4, 3), "float32"))


class _LiveTensors:
    """Weak references to the tensors a run's probes produced, and the most
    of them alive at once (counted at each probe call)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.refs = []
        self.peak = 0

    def record(self, tensor):
        self.peak = max(self.peak, sum(ref() is not None for ref in self.refs))
        self.refs.append(weakref.ref(tensor))


class _Probe(keras.layers.Layer):
    """Adds 1 and registers its (eager) output with a `_LiveTensors`."""

    def __init__(self, live, **kwargs):
        super().__init__(**kwargs)
        self.live = live

    def call(self, x):
        y = ops.add(x, 1.0)
        if not isinstance(y, keras.KerasTensor):
            self.live.record(y)
        return y


def _probe_chain(live, length, nested_length=0):
    """`length` probes in a row; with `nested_length`, a nested chain of that
    many in the middle; wrapped as a `SegmentationModel`."""
    inputs = keras.Input((None, None, K))
    x = inputs
    for _ in range(length // 2):
        x = _Probe(live)(x)
    if nested_length:
        inner_in = keras.Input((None, None, K))
        y = inner_in
        for _ in range(nested_length):
            y = _Probe(live)(y)
        x = keras.Model(inner_in, y)(x)
    for _ in range(length - length // 2):
        x = _Probe(live)(x)
    return kseg.models.with_dataset(keras.Model(inputs, x), None)


@pytest.mark.parametrize("nested_length", [0, 24])
def test_lean_call_frees_intermediate_tensors(nested_length):
    live = _LiveTensors()
    model = _probe_chain(live, 32, nested_length)
    x = random_images((1, 8, 8, K))
    live.reset()
    expected = to_numpy(model(x, training=False))
    # Keras' functional call holds every earlier output of the chain (of the
    # nested model's call too, while it runs).
    assert live.peak >= 31
    live.reset()
    got = inference.lean_call(model, x)
    np.testing.assert_array_equal(to_numpy(got), expected)
    assert len(live.refs) == 32 + nested_length
    # Only the probe's own input is alive when it runs.
    assert live.peak <= 2, live.peak
    del got
    assert all(ref() is None for ref in live.refs)


def test_lean_call_frees_the_arguments_of_layers_called_on_lists():
    """A layer called on a list (here `Add`) leaves a garbage reference cycle
    holding its arguments on torch (`keras.tree` on torch's pytree); the run
    collects it, else a handful of the probes' outputs stay alive."""
    live = _LiveTensors()
    inputs = keras.Input((None, None, K))
    x = inputs
    for _ in range(24):
        x = keras.layers.Add()([_Probe(live)(x), x])
    model = keras.Model(inputs, x)
    x = random_images((1, 8, 8, K))
    live.reset()
    expected = to_numpy(model(x, training=False))
    live.reset()
    np.testing.assert_array_equal(to_numpy(inference.lean_call(model, x)), expected)
    assert live.peak <= 1, live.peak


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="lean inference runs on torch")
def test_inference_runs_lean_on_torch():
    import torch

    live = _LiveTensors()
    model = _probe_chain(live, 32)
    x = random_images((2, 8, 8, K))
    live.reset()
    probs = inference.predict_probabilities(model, x)
    assert probs.shape == (2, 8, 8, K)
    assert live.peak <= 2, live.peak

    # The same logits as Keras' `predict_on_batch`.
    dlv3p = _tiny_deeplabv3plus()
    _randomize(dlv3p)
    images = random_images((2, 40, 48, 3))
    window = inference.sliding_window_logits(dlv3p, images, crop_size=(40, 48), batch_size=2)
    np.testing.assert_array_equal(window, dlv3p.predict_on_batch(images))
    # No autograd graph, even where gradients are on.
    with torch.enable_grad():
        assert dlv3p(images, training=False).requires_grad
        assert not inference.lean_call(dlv3p, images).requires_grad
