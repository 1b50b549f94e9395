"""Every backbone family under every builder that takes a backbone, on every backend.

The smallest member of each family is built by name (random weights) under
PSPNet, DeepLab v3 and v3+, the GCU, GloRe and GI nets and U-Net, on an odd
input size (every member with `-m large`, and under FPN, Linknet, UNet++ and UPerNet
too). The test then reads which encoder features the head consumes, and
their rows, columns and channels, and compares them with what the papers'
tables give for the roles that builder needs at the output stride it runs at
(tests/backbones/families.py; kseg's own ResNet-50 and Xception-65 below). A
builder that reads the wrong role, a family whose features do not fit a head,
or a stride that does not compose fails here on each backend. The numerics of
each head are tested against their references in the builders' own tests.
"""

import pytest

import kseg
from tests.backbones.families import CHANNELS, FAMILIES, SMALLEST, family_of, rows

H, W = 75, 99  # odd, and above Xception's 71x71 minimum

# Every member: (family, channels at nominal strides 2, 4, 8, 16, 32). ResNet:
# He et al. 2016, Table 1 (ResNet-18/34: basic blocks, without the bottleneck's
# 4x expansion). Xception-65: Chen et al. 2018 (DeepLab v3+), Figure 4, at timm's
# feature taps (the entry-flow blocks' last ReLU, the last middle block's, the
# exit flow's output).
MEMBERS = {
    **{
        name: ("resnet", (64, 256, 512, 1024, 2048))
        for name in ("resnet50", "resnet101", "resnet152")
    },
    **{name: ("resnet", (64, 64, 128, 256, 512)) for name in ("resnet18", "resnet34")},
    "xception65": ("xception65", (128, 256, 728, 1024, 2048)),
    **{name: (family_of(name), channels) for name, channels in CHANNELS.items()},
}
STRIDES = {"resnet": (8, 16, 32), "xception65": (8, 16, 32)}
STRIDES.update({family: strides for family, (strides, *_) in FAMILIES.items()})
# The default suite builds each family's smallest member; `-m large` the others.
DEFAULT = ("resnet50", "xception65", *SMALLEST.values())

# Builder: (its default output stride, the nominal strides of the features its
# head reads). U-Net reads the stride 2, 4, 8 and 16 skips and the deepest
# feature; GINet's joint pyramid upsampling the stride 8, 16 and 32 features.
BUILDERS = {
    "PSPNet": (8, (32,)),
    "DeepLabV3": (16, (32,)),
    "DeepLabV3Plus": (16, (4, 32)),
    "GCUNet": (8, (32,)),
    "GloReNet": (8, (32,)),
    "GINet": (8, (8, 16, 32)),
    "UNet": (32, (2, 4, 8, 16, 32)),
}
# Builders tried on every member only with `-m large` (each adds a build per member):
# FPN and UPerNet read the stride 4 ... 32 features, Linknet and UNet++ the stride 2 ... 32
# ones (U-Net's, DeepLab v3+'s and GINet's roles, which the default suite checks on every
# family).
LARGE_BUILDERS = {
    "FPN": (32, (4, 8, 16, 32)),
    "Linknet": (32, (2, 4, 8, 16, 32)),
    "UNetPlusPlus": (32, (2, 4, 8, 16, 32)),
    "UPerNet": (32, (4, 8, 16, 32)),
}
# The encoder-decoder builders build their backbone at output stride 32 and take no
# `output_stride`.
STRIDE_32 = ("UNet", "FPN", "Linknet", "UNetPlusPlus", "UPerNet")
HEADS = {**BUILDERS, **LARGE_BUILDERS}


def _output_stride(builder, family):
    """The builder's default, or the smallest larger one the family offers."""
    default = HEADS[builder][0]
    return min(stride for stride in STRIDES[family] if stride >= default)


def _expected(builder, name, output_stride):
    """Sorted `(rows, cols, channels)` of the features the head should read."""
    family, channels = MEMBERS[name]
    channels = dict(zip((2, 4, 8, 16, 32), channels))
    out = []
    for nominal in HEADS[builder][1]:
        if channels[nominal] is None:  # ConvNeXt has no stride-2 feature
            continue
        stride = min(nominal, output_stride)
        out.append((rows(family, H, stride), rows(family, W, stride), channels[nominal]))
    return sorted(out)


# One encoder per output stride of the member under test, built by name by the
# first builder that needs it and given to the others as a model (building an
# encoder is most of the time here; how a builder resolves a name is the same
# code for all). Only the current member's are kept (the tests run member by
# member): keeping every member's held 6.4 GB in a TensorFlow worker.
_ENCODERS = {"member": None}


def _consumed(model, encoder):
    """Sorted `(rows, cols, channels)` of the encoder outputs other layers read."""
    shapes = set()
    for layer in model.layers:
        if layer is encoder:
            continue
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                if tensor._keras_history.operation is encoder:
                    shapes.add(tuple(tensor.shape[1:]))
    return sorted(shapes)


def _build_and_check(builder, name):
    family = MEMBERS[name][0]
    output_stride = _output_stride(builder, family)
    kwargs = {} if builder in STRIDE_32 else {"output_stride": output_stride}
    if builder == "DeepLabV3" and name == "resnet18":
        # DeepLab v3's default multi-grid (1, 2, 4) is one rate per block of a 3-block
        # last stage; ResNet-18's has 2 blocks.
        kwargs["multi_grid"] = (1, 2)
    if _ENCODERS["member"] != name:
        _ENCODERS.clear()
        _ENCODERS["member"] = name
    backbone = _ENCODERS.get(output_stride, name)
    model = getattr(kseg.models, builder)(
        num_classes=3, backbone=backbone, input_shape=(H, W, 3), **kwargs
    )
    encoder = _ENCODERS.setdefault(output_stride, model.get_layer(name))
    info = kseg.backbones.feature_info(encoder)
    # kseg's ResNets name their layout: keras.applications' v1 by the plain names of
    # the bottleneck ResNets, torchvision's v1.5 for ResNet-18/34 (their only layout).
    variant = name if family != "resnet" else "v1.5" if name in ("resnet18", "resnet34") else "v1"
    assert (info.family, info.variant, info.output_stride) == (family, variant, output_stride)
    assert _consumed(model, encoder) == _expected(builder, name, output_stride)
    main = model.output["main"] if isinstance(model.output, dict) else model.output
    assert tuple(main.shape) == (None, H, W, 3)


@pytest.mark.parametrize("builder", sorted(BUILDERS))
@pytest.mark.parametrize("name", DEFAULT)
def test_every_family_builds_every_model(builder, name):
    _build_and_check(builder, name)


@pytest.mark.large
@pytest.mark.parametrize("builder", sorted(BUILDERS))
@pytest.mark.parametrize("name", [name for name in MEMBERS if name not in DEFAULT])
def test_every_member_builds_every_model(builder, name):
    _build_and_check(builder, name)


@pytest.mark.large
@pytest.mark.parametrize("builder", sorted(LARGE_BUILDERS))
@pytest.mark.parametrize("name", list(MEMBERS))
def test_every_member_builds_the_encoder_decoder_models(builder, name):
    _build_and_check(builder, name)
