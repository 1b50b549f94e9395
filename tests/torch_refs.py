"""torchvision and timm as references in tests, beside the CPU torch wheel.

The torchvision wheel on PyPI is a CUDA build: its compiled ops (`_C.so`) do not
load beside the CPU torch wheel, and its import then fails where it registers
fake kernels for `torchvision::nms` and `torchvision::qnms` (ops its `_C` would
have defined). Only the pure-Python model definitions are needed here, so the
two op schemas (as torchvision's `csrc/ops/nms.cpp` declares them) are defined
first when they are missing; no torchvision op is ever run. timm imports
torchvision, so it goes through the same door.

The test sessions install both (`noxfile.py`); set `KSEG_REQUIRE_TORCH_REFERENCES=1`
(nox does) to make a missing reference an error instead of a skip.
"""

import importlib
import importlib.util
import os

import numpy as np
import pytest

_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIBRARY = []  # keeps the op definitions alive


def _missing(module):
    message = f"{module} is not installed (the test sessions install it: see noxfile.py)"
    if os.environ.get("KSEG_REQUIRE_TORCH_REFERENCES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def import_reference(module):
    """Imports `torchvision` or `timm`, defining torchvision's missing op schemas first."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec(module) is None:
        _missing(module)
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


def randomize_batchnorm(model, seed=0):
    """Non-trivial BN statistics and affine parameters (torch initialises them to 0 and 1)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.rand(c, generator=generator) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(c, generator=generator) * 0.2 - 0.1)
    return model.eval()


#: torchvision's input normalisation (ImageNet mean and std of RGB in [0, 1]).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def torch_input(images):
    """NHWC images in [0, 255] -> the NCHW normalised torch tensor torchvision expects."""
    import torch

    x = (images / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x.astype("float32").transpose(0, 3, 1, 2))


def nhwc(tensor):
    return tensor.detach().numpy().transpose(0, 2, 3, 1)


def assert_matches(got, expected, rtol=1e-4):
    """`got` equals `expected` to `rtol` of the reference's largest magnitude.

    Random-weight ResNets produce activations of 10^2-10^3; float32 arithmetic in
    another order differs by a few units in the 7th digit of that scale.
    """
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape
    scale = max(1.0, float(np.max(np.abs(expected))))
    worst = float(np.max(np.abs(got - expected)))
    assert worst <= rtol * scale, f"max |diff| {worst:.3g} > {rtol} x {scale:.3g}"
