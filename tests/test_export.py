"""Export: every model of the zoo as a SavedModel and as ONNX, checked against Keras.

Each exported graph is loaded with its own runtime (`tf.saved_model.load`,
onnxruntime) and run at two input sizes it never saw at export (the height and
width are free); its logits must match the Keras model's `"main"` output on the
same images to 1e-4. The models are the tiny configurations of the mixed-precision
tests, with random non-zero weights and calibrated BatchNorm statistics so that
every branch reaches the logits.

What runs on which backend is what Keras' exporters support for kseg (README,
section "Export"): SavedModel and ONNX from TensorFlow and from JAX (jax2tf,
jax2onnx), LiteRT from TensorFlow for the compact models.
"""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest

import kseg
from tests.helpers import BACKEND, to_numpy
from tests.models.test_mixed_precision import (
    BUILDERS,
    _calibrate_batch_norms,
    _randomize_zero_weights,
)

SIZES = ((40, 56), (57, 45))
# The ONNX converter of each backend that exports ONNX, and the runtime that checks it.
ONNX_PACKAGES = {"tensorflow": ("tf2onnx", "onnxruntime"), "jax": ("jax2onnx", "onnxruntime")}
HAVE_ONNX = BACKEND in ONNX_PACKAGES and all(
    importlib.util.find_spec(m) for m in ONNX_PACKAGES[BACKEND]
)
if BACKEND in ONNX_PACKAGES and not HAVE_ONNX and os.environ.get("KSEG_REQUIRE_EXPORTERS") == "1":
    raise ImportError(
        f"KSEG_REQUIRE_EXPORTERS=1 but {' or '.join(ONNX_PACKAGES[BACKEND])} is not installed"
    )
TF_ONLY = pytest.mark.skipif(BACKEND != "tensorflow", reason="exported from TensorFlow")
EXPORTING = pytest.mark.skipif(
    BACKEND not in kseg.export.BACKEND_FORMATS, reason=f"no export from {BACKEND}"
)
# Every model of the zoo, in the default suite: an export costs 5-30 s of tracing and
# conversion on a 2-core CPU (about a minute of wall time per backend for the zoo with
# two workers, measured on an AVX-512 host).


def _images(size, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (2, *size, 3)).astype("float32")


def _model(name):
    model = BUILDERS[name]()
    x = _images((48, 48), seed=5)
    _randomize_zero_weights(model)
    _calibrate_batch_norms(model, x)
    return model


def _keras_logits(model, x):
    out = model(x, training=False)
    return to_numpy(out["main"] if isinstance(out, dict) else out)


def _onnx_logits(path, x):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _argmax_pools(model):
    return [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, kseg.layers.MaxPoolingWithArgmax2D)
    ]


# What a backend's ONNX exporter cannot write, and why (the README's export table says so).
NO_ONNX = {
    ("jax", "segformer"): "jax2onnx cannot express the size of the Mix Transformer's "
    "spatially reduced keys in terms of the symbolic input size ('has no registered "
    "origin'); the SavedModel from JAX (jax2tf) and ONNX from TensorFlow are checked",
}

# Models that unpool to argmax positions (SegNet) are checked by
# `test_argmax_model_exports_with_the_same_decisions`.
SMOOTH = sorted(name for name in BUILDERS if name != "segnet")


@EXPORTING
@pytest.mark.parametrize("name", SMOOTH)
def test_model_exports_to_saved_model_and_onnx(name, tmp_path):
    import tensorflow as tf

    model = _model(name)
    assert not _argmax_pools(model), f"{name} unpools to argmax positions: test it below"
    saved = str(tmp_path / "saved_model")
    kseg.export.export_model(model, saved, format="saved_model")
    served = tf.saved_model.load(saved)
    onnx_path = str(tmp_path / "model.onnx")
    onnx = HAVE_ONNX and (BACKEND, name) not in NO_ONNX
    if onnx:
        kseg.export.export_model(model, onnx_path, format="onnx")
    for seed, size in enumerate(SIZES):
        x = _images(size, seed)
        expected = _keras_logits(model, x)
        assert expected.shape == (2, *size, 3)
        np.testing.assert_allclose(
            served.serve(tf.constant(x)).numpy(), expected, atol=1e-4, rtol=1e-4
        )
        if onnx:
            np.testing.assert_allclose(_onnx_logits(onnx_path, x), expected, atol=1e-4, rtol=1e-4)
    if (BACKEND, name) in NO_ONNX:
        pytest.skip(f"SavedModel checked; ONNX from {BACKEND}: {NO_ONNX[BACKEND, name]}")
    if not HAVE_ONNX:
        pytest.skip(f"SavedModel checked; {' or '.join(ONNX_PACKAGES[BACKEND])} is not installed")


# A window whose two largest values are closer than this may pick either in an exported
# graph: the graphs' features differ from Keras' by rounding (up to 3e-6 measured on
# SegNet's), so they may order two values that close the other way. Elsewhere the
# choice must be Keras' own.
NEAR_TIE = 1e-4


def _window_values(features, pool):
    """The `(B, out_h, out_w, C, k)` values of each "valid" pooling window, row-major."""
    (kh, kw), (sh, sw) = pool.pool_size, pool.strides
    if pool.padding != "valid" or pool.data_format != "channels_last":
        raise NotImplementedError("the test reads valid, channels_last windows only")
    n, h, w, c = features.shape
    out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
    cells = []
    positions = []
    for dy in range(kh):
        for dx in range(kw):
            rows = np.arange(out_h) * sh + dy
            cols = np.arange(out_w) * sw + dx
            cells.append(features[:, rows][:, :, cols])
            positions.append(rows[:, None] * w + cols[None, :])
    values = np.stack(cells, axis=-1)
    flat = np.stack(positions, axis=-1)[None, :, :, None, :]  # (1, out_h, out_w, 1, k)
    return values, np.broadcast_to(flat, values.shape)


def _check_decisions(features, pool, eager, exported):
    """Exported argmax indices: Keras' where a window's top two values are apart by more
    than NEAR_TIE, and one of the near-equal maxima where they are not. Returns how many
    windows were near ties (values above NEAR_TIE only: a window of zeros unpools zeros
    whichever it picks)."""
    values, positions = _window_values(features, pool)
    ordered = np.sort(values, axis=-1)
    top = ordered[..., -1]
    near = (top - ordered[..., -2] <= NEAR_TIE) & (top > NEAR_TIE)
    # Keras' own choice is checked independently: the first maximum in window order.
    first = np.take_along_axis(positions, np.argmax(values, axis=-1)[..., None], -1)[..., 0]
    np.testing.assert_array_equal(eager, first)
    np.testing.assert_array_equal(exported[~near], eager[~near])
    candidates = np.where(values >= top[..., None] - NEAR_TIE, positions, -1)
    assert np.all((candidates == exported[..., None]).any(axis=-1)[near])
    return int(near.sum())


def _logits_with_decisions(model, pools, x, decisions):
    """Keras' logits with each argmax pooling's indices replaced by `decisions`."""
    from keras import ops

    def forced(indices):
        def call(inputs):
            n, h, w, c = inputs.shape
            planes = ops.reshape(inputs, (n, h * w, c))
            taken = ops.reshape(ops.convert_to_tensor(indices), (n, -1, c))
            pooled = ops.take_along_axis(planes, taken, axis=1)
            return ops.reshape(pooled, indices.shape), ops.convert_to_tensor(indices)

        return call

    for pool, indices in zip(pools, decisions):
        pool.call = forced(indices)
    try:
        return _keras_logits(model, x)
    finally:
        for pool in pools:
            del pool.call


def _served(format, path):
    """The exported graph at `path` as a function of the images, returning a list."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})
    import tensorflow as tf

    loaded = tf.saved_model.load(path)  # kept: its variables live as long as it does

    def run(x):
        out = loaded.serve(tf.constant(x))
        out = list(out.values()) if isinstance(out, dict) else out
        return [t.numpy() for t in (out if isinstance(out, (list, tuple)) else [out])]

    return run


@EXPORTING
@pytest.mark.parametrize("format", ["saved_model", "onnx"])
def test_argmax_model_exports_with_the_same_decisions(format, tmp_path):
    """SegNet exported: the same argmax choices as Keras where they are not near ties, and,
    given the exported graph's choices, the same logits to 1e-4.

    An exported graph's convolutions round differently from Keras' eager ones (another
    compilation, and on TensorFlow other kernels with and without oneDNN), so where a
    window's two largest values are within rounding of each other it may pick the other;
    the unpooling then moves that value by one pixel, and the logits near it differ by
    up to 1e-3 (measured). Checking the choices and the function separately gives the
    same verdict on every host.
    """
    if format == "onnx" and not HAVE_ONNX:
        pytest.skip(f"{' or '.join(ONNX_PACKAGES[BACKEND])} is not installed")
    model = _model("segnet")
    pools = _argmax_pools(model)
    assert len(pools) == 5
    probe = keras.Model(
        model.inputs, [model.outputs[0], *(pool.output[1] for pool in pools)], name="probe"
    )
    features = keras.Model(model.inputs, [pool.input for pool in pools])
    path = str(tmp_path / ("model.onnx" if format == "onnx" else "saved_model"))
    kseg.export.write_graph(probe, path, format)
    served = _served(format, path)
    near_ties = 0
    for seed, size in enumerate(SIZES):
        x = _images(size, seed)
        logits, *decisions = served(x)
        eager = [to_numpy(t) for t in probe(x, training=False)[1:]]
        for pool, f, mine, theirs in zip(pools, features(x), eager, decisions):
            near_ties += _check_decisions(to_numpy(f), pool, mine, theirs)
        expected = _logits_with_decisions(model, pools, x, decisions)
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)
        if all(np.array_equal(a, b) for a, b in zip(eager, decisions)):
            np.testing.assert_allclose(logits, _keras_logits(model, x), atol=1e-4, rtol=1e-4)
    print(f"{near_ties} near-tie windows")


def test_smallest_input_size():
    # SegNet: five 2x2 "valid" pools need 2**5 rows; a 31-row input leaves none at the fifth.
    segnet = kseg.export.inference_model(BUILDERS["segnet"]())
    assert kseg.export.smallest_input_size(segnet) == 32
    unet = kseg.export.inference_model(BUILDERS["unet"]())
    assert kseg.export.smallest_input_size(unet) == 1


@TF_ONLY
def test_litert_exports_a_fixed_size(tmp_path):
    model = _model("unet")
    path = str(tmp_path / "unet.tflite")
    with pytest.raises(ValueError, match="LiteRT export needs a fixed input size"):
        kseg.export.export_model(model, path, format="litert")
    kseg.export.export_model(model, path, format="litert", size=(40, 56))
    interpreter = __import__("tensorflow").lite.Interpreter(model_path=path)
    interpreter.allocate_tensors()
    x = _images((40, 56), seed=3)[:1]
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, _keras_logits(model, x), atol=1e-4, rtol=1e-4)


@TF_ONLY
def test_inference_model_keeps_the_logits_with_free_size():
    """The exported graph: one image input of free height and width, the main logits."""
    model = _model("deeplabv3")  # outputs {"main", "aux"}
    exported = kseg.export.inference_model(model)
    assert tuple(exported.inputs[0].shape) == (None, None, None, 3)
    for seed, size in enumerate(SIZES):
        x = _images(size, seed)
        np.testing.assert_array_equal(to_numpy(exported(x)), _keras_logits(model, x))
    aux = kseg.export.inference_model(model, output="aux", size=(40, 56))
    assert tuple(aux.inputs[0].shape) == (None, 40, 56, 3)
    with pytest.raises(ValueError, match=r"one of the model's outputs \['aux', 'main'\]"):
        kseg.export.inference_model(model, output="logits")


@TF_ONLY
def test_mixed_precision_model_exports_in_float32():
    """A mixed_float16 model is rebuilt in float32 with the same weights."""
    previous = keras.config.dtype_policy().name
    try:
        keras.config.set_dtype_policy("mixed_float16")
        mixed = BUILDERS["deeplabv3plus"]()
    finally:
        keras.config.set_dtype_policy(previous)
    reference = BUILDERS["deeplabv3plus"]()
    _randomize_zero_weights(reference)
    mixed.set_weights(reference.get_weights())
    exported = kseg.export.inference_model(mixed)
    policies = {layer.dtype_policy.name for layer in exported._flatten_layers()}
    assert policies == {"float32"}, policies
    x = _images((40, 56), seed=1)
    np.testing.assert_allclose(
        to_numpy(exported(x)), _keras_logits(reference, x), atol=1e-5, rtol=1e-5
    )
    # The model given is not changed.
    assert mixed.get_layer("classifier").dtype_policy.name == "mixed_float16"


def test_export_refuses_bad_arguments(tmp_path):
    model = BUILDERS["unet"]()
    path = str(tmp_path / "m")
    with pytest.raises(ValueError, match=r"`format` to be one of \('saved_model', 'onnx', "):
        kseg.export.export_model(model, path, format="tflite")
    with pytest.raises(ValueError, match=r"two positive ints. Received: size=\(40,\)"):
        kseg.export.export_model(model, path, size=(40,))
    with pytest.raises(TypeError, match="Expected a keras.Model. Received: model of type str"):
        kseg.export.inference_model("best.keras")
    if BACKEND == "jax":
        with pytest.raises(NotImplementedError, match="'litert' from the TensorFlow backend only"):
            kseg.export.export_model(model, path, format="litert", size=(40, 56))
    elif BACKEND != "tensorflow":
        with pytest.raises(NotImplementedError, match=f"Received: Keras backend '{BACKEND}'"):
            kseg.export.export_model(model, path, format="onnx")
    assert not os.listdir(tmp_path)


@TF_ONLY
def test_description_beside_the_export(tmp_path):
    from kseg.data.palette import dataset_description

    voc = dataset_description("voc")
    model = kseg.models.with_dataset(
        kseg.models.UNet(21, base_filters=4, depth=2, padding="same"), voc
    )
    path = str(tmp_path / "unet")
    written = kseg.export.export_model(model, path, format="saved_model")
    assert written == path + ".json"
    with open(written) as f:
        described = json.load(f)
    assert described["dataset"]["class_names"] == voc["class_names"]
    assert described["dataset"]["palette"] == [list(c) for c in voc["palette"]]
    assert described["input"]["shape"] == [None, None, None, 3]
    assert described["input"]["layout"] == "NHWC"
    assert described["output"]["classes"] == 21
    assert described["format"] == "saved_model"
