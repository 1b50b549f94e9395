"""kseg: semantic segmentation for Keras 3 on TensorFlow, JAX and PyTorch.

`kseg.data` and `kseg.training` need TensorFlow (tf.data) and are imported on
first use, as are `kseg.inference` and `kseg.export`, so `import kseg` stays light and
backend-neutral.
"""

from kseg import (
    backbones,
    convert,
    initializers,
    layers,
    losses,
    metrics,
    models,
    ops,
    postprocess,
    utils,
)

__version__ = "0.1.0"

__all__ = [
    "ops",
    "layers",
    "initializers",
    "backbones",
    "models",
    "losses",
    "metrics",
    "postprocess",
    "utils",
    "convert",
]


def __getattr__(name):
    if name in ("data", "training", "inference", "export"):
        import importlib

        return importlib.import_module(f"kseg.{name}")
    raise AttributeError(f"module 'kseg' has no attribute {name!r}")
