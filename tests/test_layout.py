"""The house rules of DESIGN.md that a reader can check in the source.

kseg's core (`kseg/ops`, `layers`, `backbones`, `models`, `losses`, `metrics`),
`kseg/inference` and `kseg/postprocess` import only Keras, NumPy, the standard library and
kseg itself, so that they run unchanged on every backend; backend-specific code lives in one
module, `kseg/_backend.py`, behind `keras.backend.backend()`, which imports a framework only
inside the function that needs it. (`kseg.data` and `training` are TensorFlow's by design,
`export` drives Keras' exporters, and `kseg.convert` imports torch to read `.pth` files.)
The check reads every import statement, those inside functions included, so a lazy
`import torch` cannot slip through.
"""

import ast
import os
import sys

import pytest

KSEG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kseg")
CORE = ("ops", "layers", "backbones", "models", "losses", "metrics", "inference", "postprocess")
BACKEND_MODULE = "_backend.py"  # kseg/_backend.py, outside the core
ALLOWED = {"keras", "numpy", "kseg"} | set(sys.stdlib_module_names)
FRAMEWORKS = {"tensorflow", "jax", "jaxlib", "torch"}


def core_files():
    for package in CORE:
        if package.endswith(".py"):
            yield package
            continue
        for folder, _, names in os.walk(os.path.join(KSEG, package)):
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.relpath(os.path.join(folder, name), KSEG)


def imported_roots(path, module_level=False):
    """(line, top-level module) of every absolute import in the file (or at its top level)."""
    with open(os.path.join(KSEG, path), encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    for node in tree.body if module_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.lineno, node.module.split(".")[0]


def test_the_core_is_found():
    files = list(core_files())
    assert BACKEND_MODULE not in files
    assert os.path.join("models", "deeplab.py") in files
    assert os.path.join("inference", "lean.py") in files
    assert len(files) > 40


@pytest.mark.parametrize("path", list(core_files()))
def test_core_modules_import_only_keras_and_numpy(path):
    bad = [f"line {line}: {root}" for line, root in imported_roots(path) if root not in ALLOWED]
    assert not bad, (
        f"kseg/{path} imports outside keras, numpy and the standard library "
        f"(backend code belongs in kseg/{BACKEND_MODULE}): {bad}"
    )


def test_the_backend_module_imports_frameworks_only_where_it_uses_them():
    # Importing kseg under one backend must not import the other frameworks.
    roots = {root for _, root in imported_roots(BACKEND_MODULE, module_level=True)}
    assert roots <= ALLOWED, f"kseg/{BACKEND_MODULE} imports at its top level: {roots - ALLOWED}"
    lazy = {root for _, root in imported_roots(BACKEND_MODULE)} - ALLOWED
    assert lazy <= FRAMEWORKS, f"kseg/{BACKEND_MODULE} imports {lazy - FRAMEWORKS}"


def test_the_check_sees_a_lazy_framework_import(tmp_path, monkeypatch):
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / "bad.py").write_text(
        "def f():\n    import torch.nn\n    from jax import lax\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "KSEG", str(tmp_path))
    assert list(imported_roots(os.path.join("ops", "bad.py"))) == [(2, "torch"), (3, "jax")]
    assert list(imported_roots(os.path.join("ops", "bad.py"), module_level=True)) == []


@pytest.mark.parametrize("path", list(core_files()))
def test_core_modules_branch_on_the_backend_only_through_the_backend_module(path):
    with open(os.path.join(KSEG, path), encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    calls = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "backend"
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "backend"
    ]
    assert not calls, (
        f"kseg/{path} asks keras.backend.backend() on lines {calls}: a backend-specific choice "
        f"belongs in kseg/{BACKEND_MODULE}, with the figure that justifies it"
    )
