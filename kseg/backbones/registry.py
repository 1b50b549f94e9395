"""Backbone names: each name a builder's `backbone=` accepts, and the constructor it calls.

The one table of backbone names (DESIGN.md, "Backbone names"). It lives with
the backbones because a name stands for a backbone constructor and its
arguments; `kseg.models._base` looks the builders' names up here and
`kseg.models.registry` lists them per model for the recipes' `--backbone`.
Every constructor takes `input_shape` and `weights`; the dilated ones also
`output_stride`.
"""

import functools

from kseg.backbones import applications
from kseg.backbones.applications import Application
from kseg.backbones.mit import NAMES as MIT_NAMES
from kseg.backbones.mit import MixTransformer
from kseg.backbones.resnet import ResNet, ResNet18, ResNet34, ResNet50, ResNet101
from kseg.backbones.vgg import VGG16
from kseg.backbones.xception import Xception65

#: The ResNets: the bottleneck ResNets in keras.applications' v1 layout by the
#: plain name, the torch layouts with a suffix (`kseg.backbones.ResNet`'s
#: `variant`); ResNet-18/34 by the plain name, in torchvision's layout (their only one).
RESNETS = {
    f"{name}{suffix}": functools.partial(builder, variant=variant)
    for name, builder in (("resnet50", ResNet50), ("resnet101", ResNet101))
    for suffix, variant in (("", "v1"), ("_v1.5", "v1.5"), ("_v1c", "v1c"))
}
# keras.applications' ResNet152 has the same v1 layout (and layer names).
RESNETS["resnet152"] = functools.partial(ResNet, (3, 8, 36, 3), name="resnet152")
RESNETS["resnet18"] = ResNet18
RESNETS["resnet34"] = ResNet34

#: DeepLab v3+'s own backbone, the modified aligned Xception-65.
XCEPTION = {"xception65": Xception65}

#: The keras.applications encoders by name (`kseg.backbones.Application`).
APPLICATIONS = {name: functools.partial(Application, name) for name in applications.NAMES}
APPLICATION_FAMILIES = tuple(dict.fromkeys(family for _, family, _ in applications.TABLE.values()))

#: SegFormer's Mix Transformer encoders, MiT-B0 ... B5 (`kseg.backbones.MixTransformer`),
#: SegFormer's backbones. They have no dilated form: the dilated builders take them
#: at output stride 32 only, and refuse 8 and 16 with the strides the encoder has.
MIT = {name: functools.partial(MixTransformer, name) for name in MIT_NAMES}

#: Every backbone name the dilated builders (DeepLab v2/v3/v3+, PSPNet, the
#: ResNet FCN, GCU, GloRe and GI nets) and the encoder U-Net accept, and the
#: families of a backbone model they accept.
DILATED = {**RESNETS, **XCEPTION, **APPLICATIONS, **MIT}
DILATED_FAMILIES = ("resnet", "xception65", *APPLICATION_FAMILIES, "mit")

#: The backbone name of the VGG builders (FCN-8s/16s/32s, DeepLab v1, SegNet),
#: each of which builds its own variant.
VGG = {"vgg16": VGG16}
