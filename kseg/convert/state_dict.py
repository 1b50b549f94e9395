"""PyTorch checkpoints (torchvision, timm, mmseg, Hugging Face) into kseg layers: reading and
strict copying.

Used by `kseg.convert.from_torchvision` and by the ResNet backbones' `weights=` of the
torch layouts (`kseg.backbones.ResNet(variant="v1.5")`). Reading a `.pth` file needs
PyTorch, imported here only when one is read; `.safetensors` files need nothing
beyond NumPy.

A torch state dict maps dotted names to tensors. Convolution kernels are
`(out, in, kh, kw)` in torch and `(kh, kw, in, out)` in Keras (for either
`data_format`); BatchNorm's `weight`, `bias`, `running_mean` and `running_var`
are Keras' `gamma`, `beta`, `moving_mean` and `moving_variance`; `nn.Linear` weights
are `(out, in)`, a Keras Dense kernel `(in, out)`. Copies are
strict: every weight of the target layers needs a source, every key of the
checkpoint must be used (or skipped by name), every shape must agree, and
nothing is assigned unless all of that holds.
"""

import collections.abc
import hashlib
import json
import os
import re
import struct

import keras
import numpy as np

from kseg.backbones._weights import existing_file

#: torchvision's ResNet ImageNet checkpoints (`IMAGENET1K_V2`, 80.86% / 82.28% top-1),
#: from `torchvision.models.resnet` (ResNet50_Weights / ResNet101_Weights); the
#: 8 hex digits in the name are the start of the file's SHA-256.
TORCHVISION_IMAGENET = {
    (3, 4, 6, 3): "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    (3, 4, 23, 3): "https://download.pytorch.org/models/resnet101-cd907fc2.pth",
}

#: torchvision's basic-block ResNet ImageNet checkpoints (`IMAGENET1K_V1`, the only
#: ones: 69.76% / 73.31% top-1), from `torchvision.models.resnet` (ResNet18_Weights /
#: ResNet34_Weights). torchvision publishes no full SHA-256 of them, only the 8 hex
#: digits in the name, which `torch.hub` checks and so does kseg.
TORCHVISION_IMAGENET_BASIC = {
    (2, 2, 2, 2): "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    (3, 4, 6, 3): "https://download.pytorch.org/models/resnet34-b627a593.pth",
}

_SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}

# A weighted layer of a residual block: conv{stage}_block{block}_{0 shortcut | 1..3}_{conv|bn}.
_BLOCK_LAYER = re.compile(r"conv(\d+)_block(\d+)_(\d)_(conv|bn)")

# Keys a checkpoint may wrap its state dict in (mmseg / mmcv and timm training
# checkpoints: "state_dict"; others: "model").
_WRAPPERS = ("state_dict", "model")


def check_torch_weights(weights, variant):
    """Validates the `weights` of a v1.5 / v1c ResNet: None, "imagenet", a file or a mapping."""
    if weights is None or isinstance(weights, collections.abc.Mapping):
        return weights
    if weights == "imagenet":
        if variant != "v1.5":
            raise ValueError(
                f"No ImageNet download is defined for the {variant} layout: pass the path of a "
                "checkpoint file (timm `resnet50c`, or mmseg's `resnet50_v1c`). "
                f"Received: weights={weights!r}"
            )
        return weights
    return existing_file(
        weights,
        "None, 'imagenet', a state dict or the path of a torch checkpoint (.pth, .pt, .bin or "
        ".safetensors)",
    )


def torchvision_imagenet_table(block="bottleneck"):
    """torchvision's ImageNet checkpoint URLs of `block` ("bottleneck" or "basic") ResNets."""
    return TORCHVISION_IMAGENET_BASIC if block == "basic" else TORCHVISION_IMAGENET


def torchvision_imagenet_file(blocks, block="bottleneck"):
    """Downloads (once) torchvision's ImageNet checkpoint of a ResNet layout; returns its path.

    `blocks` per stage and the `block` kind ("bottleneck" or "basic": ResNet-34 and
    ResNet-50 have the same `blocks`) pick the file.
    """
    url = torchvision_imagenet_table(block)[tuple(blocks)]
    fname = url.rsplit("/", 1)[1]
    try:
        path = keras.utils.get_file(fname, url, cache_subdir="models")
    except Exception as error:  # get_file raises a bare Exception offline.
        raise OSError(
            f"Could not obtain torchvision's ImageNet checkpoint ({error}). Download {url} "
            f"(or copy `{fname}` from a machine that has it) and pass its path as the weights."
        ) from error
    prefix = fname.rsplit("-", 1)[1].split(".")[0]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(prefix):
        raise OSError(
            f"{path} does not have the SHA-256 its name promises (starting {prefix}): the "
            "download is damaged. Delete the file and try again."
        )
    return path


def read_safetensors(path):
    """Reads a `.safetensors` file into `{name: numpy array}` (no torch needed).

    The format (huggingface/safetensors, README "Format"): an 8-byte
    little-endian header length `n`, `n` bytes of JSON `{name: {"dtype",
    "shape", "data_offsets": [begin, end]}}` (plus an optional
    `"__metadata__"`), then the raw little-endian data, offsets counted from
    the end of the header. bfloat16 is widened to float32 exactly.
    """
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        (length,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + length])
    except (struct.error, ValueError) as error:
        raise ValueError(f"{path} is not a safetensors file ({error}).") from None
    data = memoryview(raw)[8 + length :]
    state = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        dtype = entry["dtype"]
        if dtype == "BF16":
            bits = np.frombuffer(data[begin:end], "<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif dtype in _SAFETENSORS_DTYPES:
            array = np.frombuffer(data[begin:end], _SAFETENSORS_DTYPES[dtype])
        else:
            raise ValueError(f"{path}: tensor {name!r} has the unsupported dtype {dtype!r}.")
        state[name] = array.reshape(entry["shape"]).copy()
    return state


def _torch_load(path):
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"Reading the torch checkpoint {path} needs PyTorch (the CPU wheel is enough: "
            "`pip install torch`), or convert it to .safetensors, which kseg reads without it."
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"Could not read {path} as a torch checkpoint (torch.load with weights_only=True): "
            f"{error}"
        ) from None


def _as_numpy(name, value):
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    if isinstance(value, (np.ndarray, np.generic, int, float)):
        return np.asarray(value)
    raise TypeError(
        f"Expected the state dict's values to be tensors or arrays. Received: {name!r} of "
        f"type {type(value).__name__}"
    )


def read_state_dict(weights):
    """`{name: numpy array}` from a state dict, a torch checkpoint file or a safetensors file.

    A checkpoint that wraps its state dict (`{"state_dict": ...}` as mmseg and
    timm training checkpoints do, or `{"model": ...}`) is unwrapped, and a
    `module.` prefix on every key (a model saved from DataParallel) is removed.
    """
    if isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        state = read_safetensors(path) if path.endswith(".safetensors") else _torch_load(path)
    else:
        path, state = "the state dict", weights
    if not isinstance(state, collections.abc.Mapping):
        raise ValueError(
            f"Expected {path} to hold a state dict (a mapping of names to tensors). Received: "
            f"{type(state).__name__}"
        )
    for key in _WRAPPERS:
        if isinstance(state.get(key), collections.abc.Mapping):
            state = state[key]
            break
    state = {str(k): v for k, v in state.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    arrays = {}
    for name, value in state.items():
        if isinstance(value, collections.abc.Mapping):
            raise ValueError(
                f"Expected {path} to hold a flat state dict (names to tensors); {name!r} is a "
                f"nested mapping with the keys {sorted(map(str, value))[:5]}"
            )
        arrays[name] = _as_numpy(name, value)
    return arrays


class StrictCopy:
    """Collects `layer <- checkpoint keys` assignments and applies them only if all fit.

    Args:
        state: `{name: numpy array}` (from `read_state_dict`).
        source: how to name the checkpoint in errors (e.g. "torchvision deeplabv3_resnet50").
    """

    _LIMIT = 20

    def __init__(self, state, source):
        self.state = state
        self.source = source
        self.used = set()
        self.missing = []
        self.mismatched = []
        self.pending = []
        self.covered = set()

    def _take(self, key):
        self.used.add(key)
        if key not in self.state:
            self.missing.append(key)
            return None
        return self.state[key]

    def _assign(self, layer, values, keys):
        self.covered.update(id(w) for w in layer.weights)
        if any(v is None for v in values):
            return
        expected = [tuple(w.shape) for w in layer.weights]
        received = [tuple(v.shape) for v in values]
        if expected != received:
            self.mismatched.append(
                f"{layer.name} <- {', '.join(keys)}: expected {expected}, received {received}"
            )
            return
        self.pending.append((layer, values))

    def _kernel(self, layer, keys, fits, expected, axes):
        """Takes `keys`, checks the kernel (the first) with `fits`, transposes it by `axes`."""
        values = [self._take(k) for k in keys]
        if values[0] is not None:
            if not fits(values[0]):
                self.covered.update(id(w) for w in layer.weights)
                self.mismatched.append(
                    f"{layer.name} <- {keys[0]}: expected {expected}, received shape "
                    f"{tuple(values[0].shape)}"
                )
                return
            values[0] = np.transpose(values[0], axes)
        self._assign(layer, values, keys)

    def conv(self, layer, key):
        """A Conv2D from torch `key.weight` (and `key.bias` when the layer has a bias)."""
        keys = [f"{key}.weight"]
        if getattr(layer, "use_bias", False):
            keys.append(f"{key}.bias")
        self._kernel(layer, keys, lambda v: v.ndim == 4, "a 4-D conv kernel", (2, 3, 1, 0))

    def depthwise(self, layer, key):
        """A DepthwiseConv2D `(kh, kw, in, 1)` from torch's grouped `(in, 1, kh, kw)` `key.weight`.

        With `key.bias` when the layer has a bias.
        """
        keys = [f"{key}.weight"]
        if getattr(layer, "use_bias", False):
            keys.append(f"{key}.bias")
        self._kernel(
            layer,
            keys,
            lambda v: v.ndim == 4 and v.shape[1] == 1,
            "a depthwise kernel (channels, 1, kh, kw)",
            (2, 3, 0, 1),
        )

    def dense(self, layer, key):
        """A Dense `(in, out)` from torch's `nn.Linear` `key.weight` `(out, in)` (and `key.bias`)."""
        keys = [f"{key}.weight"]
        if getattr(layer, "use_bias", False):
            keys.append(f"{key}.bias")
        self._kernel(layer, keys, lambda v: v.ndim == 2, "a 2-D linear weight", (1, 0))

    def layer_norm(self, layer, key):
        """A LayerNormalization (or GroupNormalization) from torch `key.{weight,bias}`.

        Keras' `gamma` and `beta`, in that order, for either layer.
        """
        keys = [f"{key}.weight", f"{key}.bias"]
        self._assign(layer, [self._take(k) for k in keys], keys)

    group_norm = layer_norm

    def conv_transpose(self, layer, key):
        """A Conv2DTranspose `(kh, kw, out, in)` from torch's `(in, out, kh, kw)` `key.weight`.

        Both frameworks' transposed convolution is the adjoint of the same
        correlation, so the kernel is only transposed, not flipped.
        """
        keys = [f"{key}.weight"]
        if getattr(layer, "use_bias", False):
            keys.append(f"{key}.bias")
        self._kernel(
            layer, keys, lambda v: v.ndim == 4, "a 4-D transposed-conv kernel", (2, 3, 1, 0)
        )

    def bn(self, layer, key):
        """A BatchNormalization from torch `key.{weight,bias,running_mean,running_var}`."""
        keys = [f"{key}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]
        self.used.add(f"{key}.num_batches_tracked")
        self._assign(layer, [self._take(k) for k in keys], keys)

    def skip(self, prefix):
        """Marks every checkpoint key starting with `prefix` as deliberately unused."""
        self.used.update(k for k in self.state if k.startswith(prefix))

    def keep(self, layer):
        """Marks `layer`'s weights as deliberately kept (not loaded from the checkpoint)."""
        self.covered.update(id(w) for w in layer.weights)

    def finish(self, model):
        """Raises on any problem (listing them all); otherwise assigns every weight.

        Every weight of `model` (of nested layers too) must have been given a
        source.
        """
        uncovered = [w.path for w in model.weights if id(w) not in self.covered]
        unexpected = sorted(k for k in self.state if k not in self.used)
        problems = []
        for title, items in (
            ("missing from the checkpoint", sorted(set(self.missing))),
            ("unexpected in the checkpoint", unexpected),
            ("with the wrong shape", self.mismatched),
            (f"weights of {model.name!r} that no key maps to", uncovered),
        ):
            if items:
                shown = ", ".join(items[: self._LIMIT])
                more = f" and {len(items) - self._LIMIT} more" if len(items) > self._LIMIT else ""
                problems.append(f"{len(items)} {title}: {shown}{more}")
        if problems:
            raise ValueError(
                f"The checkpoint ({self.source}) does not match {model.name!r}; nothing was "
                "loaded. " + "; ".join(problems) + "."
            )
        for layer, values in self.pending:
            layer.set_weights([v.astype(w.dtype) for v, w in zip(values, layer.weights)])
        return model


def resnet_copy(copy, backbone, prefix=""):
    """Adds a torchvision / timm / mmseg ResNet's keys to `copy` for a kseg ResNet `backbone`.

    torchvision and timm: `conv1`, `bn1`, `layer{i}.{j}.conv{k}` / `bn{k}`,
    `layer{i}.{j}.downsample.{0,1}`. The v1c deep stem is timm's `conv1.{0,3,6}`
    convs with BN `conv1.{1,4}` and `bn1`, or mmseg's `stem.{0,3,6}` with BN
    `stem.{1,4,7}`.
    """
    layers = {layer.name: layer for layer in backbone.layers}
    if "conv1_conv" in layers:
        copy.conv(layers["conv1_conv"], f"{prefix}conv1")
        copy.bn(layers["conv1_bn"], f"{prefix}bn1")
    else:
        mmseg = any(k.startswith(f"{prefix}stem.") for k in copy.state)
        convs, bns = (("stem.0", "stem.3", "stem.6"), ("stem.1", "stem.4", "stem.7"))
        if not mmseg:
            convs, bns = (("conv1.0", "conv1.3", "conv1.6"), ("conv1.1", "conv1.4", "bn1"))
        for index in range(3):
            copy.conv(layers[f"conv1_{index + 1}_conv"], prefix + convs[index])
            copy.bn(layers[f"conv1_{index + 1}_bn"], prefix + bns[index])
    for name, layer in layers.items():
        match = _BLOCK_LAYER.fullmatch(name)
        if match is None:
            continue
        stage, block, part, kind = match.groups()
        base = f"{prefix}layer{int(stage) - 1}.{int(block) - 1}"
        if part == "0":
            key = f"{base}.downsample.{0 if kind == 'conv' else 1}"
        else:
            key = f"{base}.{kind}{part}"
        (copy.conv if kind == "conv" else copy.bn)(layer, key)
    return copy


def load_torch_resnet(backbone, state, skip=(), source="torch ResNet"):
    """Strictly loads a torch ResNet state dict into a kseg v1.5 / v1c ResNet."""
    copy = StrictCopy(state, source)
    for prefix in skip:
        copy.skip(prefix)
    resnet_copy(copy, backbone)
    return copy.finish(backbone)


# A weighted layer of kseg's Xception65: timm's module path with "_" for ".", then the part
# ("conv" / "bn", with "_dw" / "_pw" inside a separable conv).
_XCEPTION_LAYER = re.compile(
    r"(stem_\d+|blocks_\d+_shortcut|blocks_\d+_stack_conv\d+)_(conv|bn)(_dw|_pw)?"
)


def load_timm_xception(backbone, state, source="timm xception65"):
    """Strictly loads a timm aligned-Xception state dict into `kseg.backbones.xception.Xception65`.

    timm's keys are `stem.{0,1}.{conv,bn}`, `blocks.{i}.stack.conv{k}.{conv_dw,bn_dw,
    conv_pw,bn_pw}` and `blocks.{i}.shortcut.{conv,bn}`; the kseg layer of each is its
    module path with `_` for `.` (`blocks_3_stack_conv1_conv_dw`). The depthwise kernels
    `(channels, 1, 3, 3)` become Keras' `(3, 3, channels, 1)`. The classifier
    (`head.fc.*`) is skipped; any other key without a layer, or a layer without a key,
    raises and nothing is loaded.
    """
    copy = StrictCopy(state, source)
    copy.skip("head.fc.")
    for layer in backbone.layers:
        match = _XCEPTION_LAYER.fullmatch(layer.name)
        if match is None:
            continue
        module, kind, part = match.groups()
        key = f"{module.replace('_', '.')}.{kind}{part or ''}"
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            copy.depthwise(layer, key)
        elif kind == "conv":
            copy.conv(layer, key)
        else:
            copy.bn(layer, key)
    return copy.finish(backbone)
