"""keras.applications VGG16 weights files with known random values, saved locally (no download).

The FCN and DeepLab v1 tests load them as `backbone_weights`. Values come from
a seeded NumPy generator, so a test reads the expected fc1 / fc2 / conv arrays
from `vgg16_values()` instead of from the code under test. A file is written
once per pytest session (under the session's base temporary directory).
"""

import keras
import numpy as np

# The layers whose values are set (the others keep keras' random initialisation).
_SHAPES = {
    "block1_conv1": (3, 3, 3, 64),
    "block5_conv3": (3, 3, 512, 512),
    "fc1": (25088, 4096),
    "fc2": (4096, 4096),
}


def vgg16_values():
    """`{layer name: [kernel, bias]}` as float32 NumPy arrays (deterministic)."""
    values = {}
    for seed, (name, shape) in enumerate(_SHAPES.items()):
        rng = np.random.default_rng(seed)
        fan_in = int(np.prod(shape[:-1]))
        kernel = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        bias = rng.standard_normal(shape[-1], dtype=np.float32) * np.float32(0.1)
        values[name] = [kernel, bias]
    return values


def vgg16_file(tmp_path_factory, include_top):
    """Path of a `.weights.h5` of `keras.applications.VGG16(include_top=...)` with those values."""
    name = "vgg16_top.weights.h5" if include_top else "vgg16_notop.weights.h5"
    path = tmp_path_factory.getbasetemp() / name
    if not path.exists():
        model = keras.applications.VGG16(include_top=include_top, weights=None)
        for layer, weights in vgg16_values().items():
            if include_top or not layer.startswith("fc"):
                model.get_layer(layer).set_weights(weights)
        model.save_weights(str(path))
    return str(path)
