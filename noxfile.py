"""Test matrix: one virtualenv and one process per Keras backend.

    nox -s tests              # all three backends
    nox -s "tests(backend='jax')"
    nox -s lint

Set KSEG_TORCH_SPEC to choose the torch build (default: the 2.13.0 CPU wheel).
Extra pytest arguments go after `--`, e.g. `nox -s tests -- -m large`.
"""

import os

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

TORCH_SPEC = os.environ.get("KSEG_TORCH_SPEC", "torch==2.13.0")
BACKEND_EXTRAS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


@nox.session(python=False if os.environ.get("KSEG_NOX_NO_VENV") else None)
@nox.parametrize("backend", list(BACKEND_EXTRAS))
def tests(session, backend):
    """Runs the default test suite under one backend."""
    # torch is the independent reference for several op tests, so every session
    # gets the CPU wheel; install it first so no other requirement pulls a GPU build.
    session.install(TORCH_SPEC)
    session.install("-e", f".[{BACKEND_EXTRAS[backend]},data,dev]")
    env = {
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
    session.run("python", "-m", "pytest", "-q", "-rs", *session.posargs, env=env)


@nox.session
def lint(session):
    """Ruff over the package, tests, recipes and benchmarks."""
    session.install("ruff")
    session.run("ruff", "check", "kseg", "tests", "recipes", "benchmarks", "noxfile.py")
