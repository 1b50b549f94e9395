"""Test matrix: the README's main job, lint, and one virtualenv and process per Keras backend.

    nox                       # everything, as in CI: lint, demo, tests
    nox -s demo               # the README's first command, in a virtualenv of its own
    nox -s "tests(backend='jax')"
    nox -s lint

Set KSEG_TORCH_SPEC to choose the torch build (default: the 2.13.0 CPU wheel), and
KSEG_TORCHVISION_SPEC to the torchvision release that goes with it.
Extra pytest arguments go after `--`, e.g. `nox -s tests -- -m large`.
"""

import os
import re

import nox

nox.options.sessions = ["lint", "demo", "tests"]
nox.options.reuse_existing_virtualenvs = True

TORCH_SPEC = os.environ.get("KSEG_TORCH_SPEC", "torch==2.13.0")
# torchvision's release for that torch (set both together).
TORCHVISION_SPEC = os.environ.get("KSEG_TORCHVISION_SPEC", "torchvision==0.28.0")
TIMM_SPEC = "timm==1.0.31"
BACKENDS = ["tensorflow", "jax", "torch"]
# The README's claim for its first command: validation mean IoU of the demo run.
DEMO_MIN_MIOU = 0.80


@nox.session
@nox.parametrize("backend", BACKENDS)
def tests(session, backend):
    """Runs the default test suite under one backend (`KERAS_BACKEND`).

    Every session installs all three backends: torch is the independent
    reference of several op tests, and weights saved under the session's
    backend are checked to load under the other two (in subprocesses). The
    torch CPU wheel goes first so that no other requirement pulls a GPU build.

    On TensorFlow the tests that need channels_first convolutions run again with
    oneDNN off, as on a CPU without AVX-512 (there they must skip, and kseg must
    refuse channels_first with its own error), and with oneDNN forced on, where
    NCHW convolutions run on any x86 CPU.
    """
    session.install(TORCH_SPEC)
    # The exporters' packages only where the export tests run (TensorFlow and JAX).
    extras = "tensorflow,jax,data,dev" + (",export" if backend in ("tensorflow", "jax") else "")
    session.install("-e", f".[{extras}]")
    # The references of the checkpoint converters: torchvision's and timm's model
    # definitions, without their dependencies (which would replace the CPU torch
    # wheel by a CUDA build); tests/torch_refs.py explains how they import.
    session.install("--no-deps", TORCHVISION_SPEC, TIMM_SPEC)
    session.install("safetensors", "pyyaml")
    env = {
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "KSEG_REQUIRE_TORCH_REFERENCES": "1",
    }
    if backend in ("tensorflow", "jax"):
        env["KSEG_REQUIRE_EXPORTERS"] = "1"  # the export tests' ONNX half must run
    # Most tests are small, single-threaded work (JAX and XLA compile on one core, tiny
    # tensors): two workers (one file each at a time, so module fixtures run once) use
    # both cores of a small machine.
    workers = ["-n", "2", "--dist", "loadfile"]
    session.run("python", "-m", "pytest", "-q", "-rs", *workers, *session.posargs, env=env)
    if backend == "tensorflow" and not session.posargs:
        # TensorFlow turns oneDNN on by default only on CPUs with AVX-512, so the first
        # run tested one of the two cases: test both on any host.
        for onednn in ("0", "1"):
            session.run(
                "python", "-m", "pytest", "-q", "-rs", "-m", "channels_first_conv",
                "tests/ops/test_backend.py", "tests/layers", "tests/backbones",
                "tests/test_inference.py",
                env={**env, "TF_ENABLE_ONEDNN_OPTS": onednn},
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
