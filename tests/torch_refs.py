"""torchvision, timm and smp as references in tests, beside the CPU torch wheel.

`kseg.convert._torch_references` explains how they import where the PyPI
torchvision wheel (a CUDA build) cannot load its compiled ops.

The test sessions install them (`noxfile.py`); set `KSEG_REQUIRE_TORCH_REFERENCES=1`
(nox does) to make a missing reference an error instead of a skip.
"""

import importlib.util
import os

import numpy as np
import pytest

from kseg.convert._torch_references import import_torch_reference


def _missing(module):
    message = f"{module} is not installed (the test sessions install it: see noxfile.py)"
    if os.environ.get("KSEG_REQUIRE_TORCH_REFERENCES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def import_reference(module):
    """Imports `torchvision`, `timm` or `segmentation_models_pytorch` (smp), or skips.

    All three import torchvision's model definitions (see `import_torch_reference`).
    """
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec(module) is None:
        _missing(module)
    return import_torch_reference(module)


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


def random_images(h, w, batch=1, seed=0):
    """`batch` random NHWC float32 images of `h` x `w` in [0, 255]."""
    return np.random.default_rng(seed).uniform(0, 255, (batch, h, w, 3)).astype("float32")


def reference_logits(reference, images):
    """A torch model's NCHW output on NHWC `images` in [0, 255] (normalised as
    `torch_input`), as NHWC NumPy, without recording gradients."""
    import torch

    with torch.no_grad():
        return nhwc(reference(torch_input(images)))


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
