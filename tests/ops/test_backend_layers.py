"""Tests for kseg._backend's torch layer paths: fused BatchNorm and copy-free convolutions.

On torch, `use_fused_batch_norm` and `use_direct_conv` replace the `call` of every
`BatchNormalization`, `Conv2D` and `DepthwiseConv2D` of a model; the reference is an
untouched Keras layer with the same weights (outputs, gradients and moving
statistics within 1e-5). On TensorFlow and JAX nothing changes.
"""

import os

import keras
import numpy as np
import pytest

import kseg
from kseg import _backend
from tests.helpers import BACKEND

torch_only = pytest.mark.skipif(BACKEND != "torch", reason="the paths exist on torch only")
TOL = dict(rtol=1e-5, atol=1e-5)


def _nested(model):
    from kseg.training import _keras_internals

    return _keras_internals.nested_layers(model)


def _pair(make, shape, seed=0):
    """Two built layers with the same (random) weights; the second goes through the hooks."""
    reference, layer = make(), make()
    reference.build(shape)
    layer.build(shape)
    rng = np.random.default_rng(seed)
    weights = [rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in reference.get_weights()]
    reference.set_weights(weights)
    layer.set_weights(weights)
    inputs = keras.Input(shape[1:])
    model = keras.Model(inputs, layer(inputs))
    changed = _backend.use_fused_batch_norm(model) + _backend.use_direct_conv(model)
    return reference, layer, changed


def _run(layer, x, training, weights, dtype="float32"):
    """Outputs, input gradient and gradients of `weights` of `sum(outputs * ramp)`."""
    import torch

    t = torch.tensor(x).to(getattr(torch, dtype)).requires_grad_(True)
    y = layer(t, training=training) if training is not None else layer(t)
    ramp = torch.linspace(-1, 1, y.numel()).reshape(y.shape) / y[0].numel()
    (y.float() * ramp).sum().backward()
    grads = [t.grad.float().numpy()] + [w.value.grad.numpy() for w in weights]
    for w in weights:
        w.value.grad = None
    return [y.detach().float().numpy()] + grads


BN_CASES = [
    dict(shape=(4, 6, 5, 8)),
    dict(shape=(4, 6, 5, 8), momentum=0.9, epsilon=1e-5),
    dict(shape=(4, 8, 6, 5), axis=1),
    dict(shape=(3, 7, 8), center=False),
    dict(shape=(16, 8), scale=False),
    dict(shape=(2, 4, 4, 8), dtype="mixed_float16"),
    dict(shape=(2, 4, 4, 8), dtype="mixed_bfloat16"),
    dict(shape=(1, 1, 1, 8)),  # one value per channel: zero variance
]


@torch_only
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", BN_CASES, ids=str)
def test_fused_batch_norm_equals_keras(case, training):
    case = dict(case)
    shape = case.pop("shape")
    reference, layer, changed = _pair(lambda: keras.layers.BatchNormalization(**case), shape)
    assert changed == 1
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, shape).astype("float32")
    dtype = keras.mixed_precision.Policy(case.get("dtype", "float32")).compute_dtype
    # Half-precision outputs are rounded from float32 ones that agree within 1e-5: one unit
    # in the last place apart at most.
    tol = TOL if dtype == "float32" else dict(rtol=1e-2, atol=1e-2)
    for _ in range(2):  # the moving statistics after two updates
        expected = _run(reference, x, training, reference.trainable_weights, dtype)
        got = _run(layer, x, training, layer.trainable_weights, dtype)
        for e, g in zip(expected, got):
            np.testing.assert_allclose(g, e, **tol)
        for e, g in zip(reference.non_trainable_weights, layer.non_trainable_weights):
            np.testing.assert_allclose(g.numpy(), e.numpy(), **TOL)
            assert g.dtype == e.dtype


@torch_only
def test_fused_batch_norm_frozen_layer_uses_moving_statistics():
    reference, layer, _ = _pair(lambda: keras.layers.BatchNormalization(), (4, 3, 3, 5))
    for each in (reference, layer):
        each.trainable = False
    x = np.random.default_rng(2).normal(size=(4, 3, 3, 5)).astype("float32")
    for e, g in zip(_run(reference, x, True, []), _run(layer, x, True, [])):
        np.testing.assert_allclose(g, e, **TOL)
    np.testing.assert_allclose(layer.moving_mean.numpy(), reference.moving_mean.numpy())


@torch_only
def test_synchronized_or_opted_out_layers_keep_keras_call(monkeypatch):
    import torch

    calls = []
    native = torch.native_batch_norm
    monkeypatch.setattr(torch, "native_batch_norm", lambda *a: calls.append(1) or native(*a))
    _, layer, _ = _pair(lambda: keras.layers.BatchNormalization(), (2, 3, 3, 4))
    x = torch.ones((2, 3, 3, 4))
    layer(x, training=True)
    assert len(calls) == 1
    setattr(layer, _backend.FUSED_BATCH_NORM_ATTRIBUTE, False)
    layer(x, training=True)
    assert len(calls) == 1
    setattr(layer, _backend.FUSED_BATCH_NORM_ATTRIBUTE, True)
    layer.synchronized = True
    with pytest.raises(NotImplementedError):  # Keras' own torch moments refuse it
        layer(x, training=True)
    assert len(calls) == 1


CONV_CASES = [
    (keras.layers.Conv2D, dict(filters=6, kernel_size=3, padding="same"), 9),
    (keras.layers.Conv2D, dict(filters=6, kernel_size=3, strides=2, padding="same"), 9),
    (keras.layers.Conv2D, dict(filters=6, kernel_size=3, strides=2, padding="same"), 8),
    (keras.layers.Conv2D, dict(filters=6, kernel_size=2, padding="same"), 7),
    (keras.layers.Conv2D, dict(filters=6, kernel_size=3, dilation_rate=2, padding="same"), 9),
    (keras.layers.Conv2D, dict(filters=6, kernel_size=(1, 3), activation="relu"), 8),
    (keras.layers.Conv2D, dict(filters=6, kernel_size=1, groups=2, use_bias=False), 8),
    (keras.layers.DepthwiseConv2D, dict(kernel_size=3, padding="same"), 9),
    (keras.layers.DepthwiseConv2D, dict(kernel_size=3, depth_multiplier=2, strides=2), 9),
]


@torch_only
@pytest.mark.parametrize("cls,kwargs,size", CONV_CASES, ids=str)
def test_direct_conv_equals_keras(cls, kwargs, size):
    shape = (2, size, size + 1, 4)
    reference, layer, changed = _pair(lambda: cls(**kwargs), shape)
    assert changed == 1
    x = np.random.default_rng(3).normal(size=shape).astype("float32")
    expected = _run(reference, x, None, reference.trainable_weights)
    got = _run(layer, x, None, layer.trainable_weights)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, **TOL)


def _count_calls(monkeypatch, model):
    """How many times torch's fused BatchNorm and conv2d run in one training forward pass."""
    import torch

    counts = {"bn": 0, "conv": 0}
    native, conv2d = torch.native_batch_norm, torch.nn.functional.conv2d

    def counting_bn(*args):
        counts["bn"] += 1
        return native(*args)

    def counting_conv(*args, **kwargs):
        counts["conv"] += 1
        return conv2d(*args, **kwargs)

    monkeypatch.setattr(torch, "native_batch_norm", counting_bn)
    monkeypatch.setattr(torch.nn.functional, "conv2d", counting_conv)
    shape = (2,) + tuple(model.inputs[0].shape[1:])
    model(np.random.default_rng(0).uniform(0, 255, shape).astype("float32"), training=True)
    return counts


BUILT = {
    # kseg's ResNet, ASPP and decoder layers (separable: DepthwiseConv2D).
    "deeplabv3plus": lambda: kseg.models.DeepLabV3Plus(
        3, input_shape=(32, 32, 3), backbone="resnet18", separable=True
    ),
    # A keras.applications encoder (its own BatchNorm and depthwise convolutions).
    "deeplabv3plus_mobilenetv2": lambda: kseg.models.DeepLabV3Plus(
        3, input_shape=(32, 32, 3), backbone="mobilenetv2"
    ),
    # Backbones alone (a kseg.backbones.Backbone) take the paths too.
    "mobilenetv2_backbone": lambda: kseg.backbones.Application(
        "mobilenetv2", input_shape=(32, 32, 3)
    ),
    "ginet": lambda: kseg.models.GINet(
        3,
        input_shape=(32, 32, 3),
        backbone="resnet18",
        jpu_width=16,
        reduce_filters=16,
        num_state=8,
        num_node=4,
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", BUILT)
def test_every_layer_of_a_built_model_takes_the_paths(name, monkeypatch):
    model = BUILT[name]()
    layers = {id(x): x for x in _nested(model)}.values()
    norms = [x for x in layers if isinstance(x, keras.layers.BatchNormalization)]
    convs = [x for x in layers if type(x) in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)]
    assert norms and convs
    patched = [x for x in norms + convs if "call" in vars(x)]
    if BACKEND != "torch":
        assert patched == []
        assert _backend.use_fused_batch_norm(model) == 0 == _backend.use_direct_conv(model)
        return
    assert len(patched) == len(norms) + len(convs)
    counts = _count_calls(monkeypatch, model)
    # Every BatchNorm ran the fused kernel; every convolution whose "same" padding torch
    # expresses ran conv2d directly (the others, stride 2 on even sizes, Keras' conv).
    assert counts["bn"] == len(norms)
    assert 0 < counts["conv"] <= len(convs)


def test_saved_files_keep_keras_classes_and_reload_fused(tmp_path):
    model = BUILT["deeplabv3plus"]()
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    config = model.get_config()
    text = str(config)
    assert "kseg_fused" not in text and "kseg_direct" not in text
    classes = {layer["class_name"] for layer in config["layers"]}
    assert "BatchNormalization" in classes or any(
        "BatchNormalization" in str(layer) for layer in config["layers"]
    )
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(4).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), **TOL
    )
    norms = [x for x in _nested(loaded) if isinstance(x, keras.layers.BatchNormalization)]
    assert all(("call" in vars(x)) == (BACKEND == "torch") for x in norms)
    assert all(type(x) is keras.layers.BatchNormalization for x in norms)
