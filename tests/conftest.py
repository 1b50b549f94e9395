"""Test configuration: one backend per process, chosen by KERAS_BACKEND."""

import gc
import itertools
import os
import tempfile

# JAX compiles every new computation; many tests build the same small models
# (float32 then reloaded, the same builder in several files, the recipes'
# subprocesses). Its persistent cache, keyed by the computation and the JAX
# version (so a cache left by an earlier run is safe), lets each compile once
# per run. Set before JAX is imported, so that it also reaches the subprocesses.
# Measured on tests/models/test_deeplab.py (2-core CPU, cold cache): 1290 s ->
# 557 s wall, 377 s -> 203 s CPU.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "kseg-tests-jax-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Compiling, not running, is most of a small test's time under JAX (and under
# TensorFlow's XLA): the tests' tensors are tiny, and each program runs a few
# times. XLA's CPU code generation without LLVM's optimisation passes compiles
# several times faster; the computation is the same (XLA's own graph
# optimisations still run), only its machine code is slower. JAX's default
# "partitionable" threefry random-bit generator compiles to a much larger
# program (about 2 s per new shape on a 2-core CPU against 0.6 s), and every
# weight initialiser is one: the classic generator gives other (equally
# random) numbers, and no test depends on which. Measured on
# tests/models/test_unet.py under JAX (2-core CPU, cold cache): 199 s -> 63 s.
# Most programs compiled are single ops (on JAX every eager op of a new shape is one):
# XLA:CPU's older loop emitters instead of its MLIR fusion emitters, and code generation
# in one piece instead of split for parallel compilation, compile those about twice as
# fast (80 one-op programs: 6.3-7.2 s -> 3.0-3.5 s; tests/ops and tests/losses under JAX
# with 2 workers: 126 s -> 119 s wall). TensorFlow's XLA knows both flags too.
# Set before JAX or TensorFlow start, and inherited by the subprocesses.
XLA_TEST_FLAGS = (
    "--xla_backend_optimization_level=0",
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_cpu_parallel_codegen_split_count=1",
)
_xla_flags = os.environ.get("XLA_FLAGS", "").split()
_xla_flags += [f for f in XLA_TEST_FLAGS if f.split("=")[0] not in " ".join(_xla_flags)]
os.environ["XLA_FLAGS"] = " ".join(_xla_flags)
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_runtest_setup(item):
    """The one check for tests that need channels_first convolutions."""
    if item.get_closest_marker("channels_first_conv") is None:
        return
    from kseg._backend import channels_first_conv_supported

    if not channels_first_conv_supported():
        pytest.skip(
            "TensorFlow cannot run channels_first convolutions on this CPU (oneDNN is off: "
            "TF_ENABLE_ONEDNN_OPTS=0 or no AVX-512)"
        )


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Every test starts with float32, channels_last and a fixed seed."""
    keras.config.set_dtype_policy("float32")
    keras.config.set_image_data_format("channels_last")
    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield
    keras.config.set_dtype_policy("float32")
    keras.config.set_image_data_format("channels_last")
    # Keras' full garbage collection after every test cost a third of a session's time: with
    # TensorFlow, JAX and torch loaded, one takes 0.7 s (median of a JAX session's teardowns).
    # Python's generational collector seldom reaches the old generation where the tests'
    # models (cycles of layers and weights) end up; one full collection every
    # `_COLLECT_EVERY` tests still frees them now and then, at a 25th of the cost (a JAX
    # worker ended its session at 5.6 GB resident with it and without it). Measured under
    # JAX on tests/ops and tests/models/test_deeplab.py, one process: 186 s -> 125 s.
    keras.backend.clear_session(free_memory=False)
    if next(_TESTS_RUN) % _COLLECT_EVERY == 0:
        gc.collect()


_COLLECT_EVERY = 25
_TESTS_RUN = itertools.count(1)


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
