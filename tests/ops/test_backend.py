"""Tests for kseg._backend: the backend fast paths equal their NumPy meaning."""

import keras
import numpy as np
import pytest

from kseg import _backend
from tests.helpers import BACKEND, to_numpy


def tricky_scores(rng, shape, axis):
    """Small integers (many ties), some NaN, -inf and +inf entries."""
    scores = rng.integers(0, 3, size=shape).astype("float32")
    flat = scores.reshape(-1)
    n = flat.size
    flat[rng.integers(0, n, max(1, n // 97))] = np.nan
    flat[rng.integers(0, n, max(1, n // 89))] = -np.inf
    flat[rng.integers(0, n, max(1, n // 301))] = np.inf
    # A few pixels with every channel tied, and with every channel NaN.
    moved = np.moveaxis(scores, axis, -1)
    moved[(0,) * (moved.ndim - 1)] = 1.0
    moved[(-1,) * (moved.ndim - 1)] = np.nan
    return scores


# Shapes below and above the torch fast path's size threshold, with plane sizes that
# are and are not multiples of its block and lane widths.
CASES = [
    ((2, 3, 4, 5), -1),
    ((2, 5, 3, 4), 1),
    ((2, 129, 131, 5), -1),
    ((2, 64, 64, 21), -1),
    ((1, 7, 128, 128), 1),
    ((2, 5, 129, 131), 1),
    ((70001, 2), -1),
]


@pytest.mark.parametrize("shape,axis", CASES)
def test_channel_argmax_matches_numpy(shape, axis):
    rng = np.random.default_rng(0)
    scores = tricky_scores(rng, shape, axis)
    expected = scores.argmax(axis)
    got = _backend.channel_argmax(keras.ops.convert_to_tensor(scores), axis)
    assert keras.backend.standardize_dtype(got.dtype) == "int32"
    np.testing.assert_array_equal(to_numpy(got), expected)
    # The generic path agrees where it is defined alike on every backend (no NaN).
    finite = np.nan_to_num(scores, nan=0.5)
    generic = keras.ops.argmax(keras.ops.convert_to_tensor(finite), axis=axis)
    np.testing.assert_array_equal(
        to_numpy(_backend.channel_argmax(keras.ops.convert_to_tensor(finite), axis)),
        to_numpy(generic),
    )


@pytest.mark.parametrize("shape,axis", CASES[:3])
def test_channel_argmax_while_compiled(shape, axis):
    """Inside the backend's compiler (jax.jit, tf.function with and without XLA)."""
    rng = np.random.default_rng(1)
    scores = tricky_scores(rng, shape, axis)
    expected = scores.argmax(axis)
    if BACKEND == "jax":
        import jax

        got = [jax.jit(lambda x: _backend.channel_argmax(x, axis))(scores)]
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        fn = lambda x: _backend.channel_argmax(x, axis)  # noqa: E731
        got = [tf.function(fn, jit_compile=j)(scores) for j in (False, True)]
    else:
        pytest.skip("torch runs eagerly")
    for g in got:
        np.testing.assert_array_equal(to_numpy(g), expected)


def test_channel_argmax_integer_and_bfloat16_scores():
    rng = np.random.default_rng(2)
    ints = rng.integers(-3, 3, size=(2, 4, 5, 6)).astype("int32")
    np.testing.assert_array_equal(to_numpy(_backend.channel_argmax(ints, -1)), ints.argmax(-1))
    halves = keras.ops.cast(rng.standard_normal((2, 4, 5, 6)), "bfloat16")
    expected = to_numpy(keras.ops.cast(halves, "float32")).argmax(-1)
    np.testing.assert_array_equal(to_numpy(_backend.channel_argmax(halves, -1)), expected)


def test_compare_select_argmax_matches_numpy():
    """The compare-and-select loop on its own, eagerly, on every backend."""
    rng = np.random.default_rng(3)
    scores = tricky_scores(rng, (3, 6, 7, 9), -1)
    got = _backend.compare_select_argmax(keras.ops.convert_to_tensor(scores), 3)
    np.testing.assert_array_equal(to_numpy(got), scores.argmax(-1))


@pytest.mark.skipif(BACKEND != "torch", reason="the torch fast path")
@pytest.mark.parametrize(
    "shape,axis", [((1, 1, 1, 2), 3), ((3, 5, 7), 2), ((2, 3, 8, 32), 1), ((2, 3, 4, 5), 2)]
)
def test_torch_pooling_argmax_on_small_inputs(shape, axis, monkeypatch):
    """The pooling argmax itself, below its size threshold and with tiny chunks."""
    import torch

    monkeypatch.setattr(_backend, "_TORCH_CHUNK_ELEMENTS", 64)
    rng = np.random.default_rng(4)
    scores = tricky_scores(rng, shape, axis)
    got = _backend._torch_channel_argmax(torch.from_numpy(scores), axis)
    assert got.dtype == torch.int32
    np.testing.assert_array_equal(got.numpy(), scores.argmax(axis))


@pytest.mark.skipif(BACKEND != "torch", reason="the torch fast path")
def test_torch_fast_argmax_is_taken_and_ignores_autograd():
    import torch

    scores = torch.randn(2, 64, 64, 21, requires_grad=True)
    assert _backend._torch_fast_argmax_applies(scores, 3)
    assert not _backend._torch_fast_argmax_applies(scores.double(), 3)
    assert not _backend._torch_fast_argmax_applies(scores[:, :8, :8], 3)
    got = _backend.channel_argmax(scores * 2, -1)
    assert not got.requires_grad
    np.testing.assert_array_equal(got.numpy(), scores.detach().numpy().argmax(-1))


def test_xla_function_runs_eagerly_and_inside_a_trace():
    fn = _backend.xla_function(lambda a, b: (a * 2 + b, a - b))
    a = np.arange(6, dtype="float32").reshape(2, 3)
    out = fn(a, a)
    np.testing.assert_allclose(to_numpy(out[0]), 3 * a)
    if BACKEND == "jax":
        import jax

        np.testing.assert_allclose(np.asarray(jax.jit(lambda x: fn(x, x)[1])(a)), 0 * a)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        np.testing.assert_allclose(tf.function(lambda x: fn(x, x)[1])(a).numpy(), 0 * a)


_CHANNELS_FIRST_SCRIPT = """
import kseg
from kseg._backend import channels_first_conv_supported
print("supported" if channels_first_conv_supported() else "unsupported")
for build in (
    lambda: kseg.layers.ConvBNAct(4, data_format="channels_first"),
    lambda: kseg.layers.ASPP(filters=4, data_format="channels_first"),
    lambda: kseg.backbones.ResNet((1, 1, 1, 1), width=4, data_format="channels_first"),
    lambda: kseg.backbones.VGG16(data_format="channels_first"),
):
    try:
        build()
        print("built")
    except ValueError as e:
        print("error:", e)
"""


@pytest.mark.skipif(BACKEND != "tensorflow", reason="only TensorFlow lacks NCHW convolutions")
def test_channels_first_without_onednn_is_a_clear_error():
    """With oneDNN off, TensorFlow on a CPU cannot run NCHW convolutions: kseg says so."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run(
        [sys.executable, "-c", _CHANNELS_FIRST_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = run.stdout.strip().splitlines()
    if lines[0] == "supported":
        pytest.skip("TensorFlow runs NCHW convolutions here (a GPU is visible)")
    assert len(lines) == 5
    for line in lines[1:]:
        assert line.startswith("error:"), line
        assert "TF_ENABLE_ONEDNN_OPTS" in line
        assert "Received: data_format='channels_first'" in line


def test_channels_first_accepted_where_supported():
    if not _backend.channels_first_conv_supported():
        pytest.skip("no NCHW convolutions on this CPU")
    assert _backend.check_conv_data_format("channels_first") == "channels_first"
    assert _backend.check_conv_data_format("channels_last") == "channels_last"


def test_erf_equals_the_backend_erf():
    """`kseg._backend.erf` (a Chebyshev fit on JAX, for jax2tf) against NumPy's float64 erf."""
    from math import erf as math_erf

    from kseg._backend import erf

    x = np.concatenate([np.linspace(-6.0, 6.0, 2401), [0.0, -0.0, 1e-8, -1e-8, 30.0, -30.0]])
    expected = np.array([math_erf(v) for v in x])
    got = keras.ops.convert_to_numpy(erf(keras.ops.convert_to_tensor(x.astype("float32"))))
    np.testing.assert_allclose(got, expected, atol=3e-7, rtol=0)
