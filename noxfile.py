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
BACKENDS = ["tensorflow", "jax", "torch"]


@nox.session
@nox.parametrize("backend", BACKENDS)
def tests(session, backend):
    """Runs the default test suite under one backend (`KERAS_BACKEND`).

    Every session installs all three backends: torch is the independent
    reference of several op tests, and weights saved under the session's
    backend are checked to load under the other two (in subprocesses). The
    torch CPU wheel goes first so that no other requirement pulls a GPU build.
    """
    session.install(TORCH_SPEC)
    session.install("-e", ".[tensorflow,jax,data,dev]")
    env = {
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    session.run("python", "-m", "pytest", "-q", "-rs", *session.posargs, env=env)


@nox.session
def lint(session):
    """Ruff over the package, tests, recipes and benchmarks."""
    session.install("ruff")
    session.run("ruff", "check", "kseg", "tests", "recipes", "benchmarks", "noxfile.py")
