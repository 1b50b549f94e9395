"""Test matrix: the README's main job, lint, and one test process per Keras backend.

    nox                       # everything, as in CI: lint, demo, tests
    nox -s demo               # the README's first command, in a virtualenv of its own
    nox -s "tests(backend='jax')"
    nox -s lint

Set KSEG_TORCH_SPEC to choose the torch build (default: the 2.13.0 CPU wheel), and
KSEG_TORCHVISION_SPEC to the torchvision release that goes with it.
Extra pytest arguments go after `--`, e.g. `nox -s tests -- -m large`.
"""

import hashlib
import os
import re
import sys

import nox

nox.options.sessions = ["lint", "demo", "tests"]
nox.options.reuse_existing_virtualenvs = True

TORCH_SPEC = os.environ.get("KSEG_TORCH_SPEC", "torch==2.13.0")
# torchvision's release for that torch (set both together).
TORCHVISION_SPEC = os.environ.get("KSEG_TORCHVISION_SPEC", "torchvision==0.28.0")
TIMM_SPEC = "timm==1.0.31"
# The reference of the Hugging Face converter (SegFormer); its own dependencies go in by name below.
TRANSFORMERS_SPEC = "transformers==5.25.0"
# The reference of the smp converter and of FPN, Linknet, UNet++ and UPerNet.
SMP_SPEC = "segmentation-models-pytorch==0.6.0"
BACKENDS = ["tensorflow", "jax", "torch"]
# The README's claim for its first command: validation mean IoU of the demo run.
DEMO_MIN_MIOU = 0.80


# The three test sessions install the same packages, so they share one virtualenv: it is
# filled by the first of them (about 3.5 minutes of pip on a 2-core machine) and
# reused by the others while the requirements below and pyproject.toml stay the same.
# Delete the folder to rebuild it.
TEST_VENV = os.path.join(".nox", "tests-shared")


def _test_requirements():
    """The pip install steps of the test virtualenv, in order.

    The torch CPU wheel goes first so that no other requirement pulls a GPU build. The
    references of the checkpoint converters, torchvision's and timm's model definitions,
    go in without their dependencies (which would replace that wheel by a CUDA build);
    tests/torch_refs.py explains how they import. transformers (the Hugging Face
    converter's reference) goes the same way. The exporters' packages (`export`)
    serve the export tests.
    """
    return [
        [TORCH_SPEC],
        ["-e", ".[tensorflow,jax,data,dev,export]"],
        ["--no-deps", TORCHVISION_SPEC, TIMM_SPEC, TRANSFORMERS_SPEC, SMP_SPEC],
        # What those import (pure Python or small wheels; none pulls torch).
        ["safetensors", "pyyaml", "huggingface_hub>=2.4", "regex>=2025.10.22"],
        ["tokenizers>=0.23.1,<0.24", "typer", "tqdm"],
    ]


def _test_python(session):
    """The test virtualenv's interpreter, after creating and filling it where needed."""
    bin_dir = os.path.join(TEST_VENV, "Scripts" if os.name == "nt" else "bin")
    python = os.path.join(bin_dir, "python")
    steps = _test_requirements()
    with open("pyproject.toml", "rb") as handle:
        stamp = repr(steps) + hashlib.sha256(handle.read()).hexdigest()
    stamp_path = os.path.join(TEST_VENV, "kseg-requirements")
    if os.path.isfile(stamp_path):
        with open(stamp_path) as handle:
            if handle.read() == stamp:
                session.log(f"Reusing the test virtualenv {TEST_VENV}")
                return python, bin_dir
    if not os.path.isfile(python):
        session.run(sys.executable, "-m", "venv", TEST_VENV, external=True)
    for step in steps:
        session.run(python, "-m", "pip", "install", "--quiet", *step, external=True)
    with open(stamp_path, "w") as handle:
        handle.write(stamp)
    return python, bin_dir


@nox.session(venv_backend="none")
@nox.parametrize("backend", BACKENDS)
def tests(session, backend):
    """Runs the default test suite under one backend (`KERAS_BACKEND`).

    Every backend's tests need all three backends: torch is the independent
    reference of several op tests, and weights saved under the session's
    backend are checked to load under the other two (in subprocesses). The
    sessions share one virtualenv (`TEST_VENV`).

    On TensorFlow the tests that need channels_first convolutions run again with
    oneDNN off, as on a CPU without AVX-512 (there they must skip, and kseg must
    refuse channels_first with its own error), and with oneDNN forced on, where
    NCHW convolutions run on any x86 CPU.
    """
    python, bin_dir = _test_python(session)
    env = {
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "KSEG_REQUIRE_TORCH_REFERENCES": "1",
        # The export tests' ONNX half must run where they export (TensorFlow and JAX).
        "KSEG_REQUIRE_EXPORTERS": "1",
        # As an activated virtualenv: its scripts first on the PATH.
        "VIRTUAL_ENV": os.path.abspath(TEST_VENV),
        "PATH": os.pathsep.join([os.path.abspath(bin_dir), os.environ.get("PATH", "")]),
    }
    # Most tests are small, single-threaded work (JAX and XLA compile on one core, tiny
    # tensors): two workers (one file each at a time, so module fixtures run once) use
    # both cores of a small machine.
    workers = ["-n", "2", "--dist", "loadfile"]
    pytest = [python, "-m", "pytest", "-q", "-rs"]
    session.run(*pytest, *workers, *session.posargs, env=env, external=True)
    if backend == "tensorflow" and not session.posargs:
        # TensorFlow turns oneDNN on by default only on CPUs with AVX-512, so the first
        # run tested one of the two cases: test both on any host.
        for onednn in ("0", "1"):
            session.run(
                *pytest, "-m", "channels_first_conv",
                "tests/ops/test_backend.py", "tests/layers", "tests/backbones",
                "tests/inference/test_tta.py",
                env={**env, "TF_ENABLE_ONEDNN_OPTS": onednn},
                external=True,
            )


@nox.session
def demo(session):
    """The README's first command as written, in a virtualenv with only what it installs.

    `pip install -e ".[jax,data]" && KERAS_BACKEND=jax python recipes/train_voc.py`:
    no test or dev extras, so a dependency that only the test sessions bring
    fails here. Fails unless the run exits 0 with validation mIoU >= 0.80.
    """
    session.install("-e", ".[jax,data]")
    output = session.run(
        "python", "recipes/train_voc.py",
        env={"KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"},
        silent=True,
    )
    print(output)
    found = re.findall(r"Validation mIoU: ([0-9.]+)", output or "")
    if not found:
        session.error("The demo run printed no 'Validation mIoU' line.")
    miou = float(found[-1])
    if miou < DEMO_MIN_MIOU:
        session.error(f"Demo validation mIoU {miou:.4f} is below the README's {DEMO_MIN_MIOU}.")
    session.log(f"Demo validation mIoU {miou:.4f} >= {DEMO_MIN_MIOU}")


@nox.session
def lint(session):
    """Ruff over the package, tests, recipes and benchmarks."""
    session.install("ruff")
    session.run("ruff", "check", "kseg", "tests", "recipes", "benchmarks", "noxfile.py")
