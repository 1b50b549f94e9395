"""Imports torchvision's (and timm's) model definitions beside a CPU torch wheel.

The torchvision wheel on PyPI is a CUDA build: its compiled ops (`_C.so`) do not
load beside the CPU torch wheel, and its import then fails where it registers
fake kernels for `torchvision::nms` and `torchvision::qnms` (ops its `_C` would
have defined). Only the pure-Python model definitions are needed to compare
against or to benchmark, so the two op schemas (as torchvision's
`csrc/ops/nms.cpp` declares them) are defined first when they are missing; no
torchvision op is ever run. timm and segmentation_models_pytorch (smp, whose
ResNet encoders subclass torchvision's) import torchvision, so they go through
the same door. Used by the tests' references and by the benchmarks' peers.
"""

import importlib

_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBRARY = []  # keeps the op definitions alive


def import_torch_reference(module):
    """Imports `torchvision`, `timm` or `segmentation_models_pytorch`, defining
    torchvision's missing op schemas first."""
    import torch

    for schema in _OPS:
        name = schema.split("(", 1)[0]
        try:
            torch._C._get_schema(f"torchvision::{name}", "")
        except RuntimeError:
            if not _LIBRARY:
                _LIBRARY.append(torch.library.Library("torchvision", "FRAGMENT"))
            _LIBRARY[0].define(schema)
    return importlib.import_module(module)
