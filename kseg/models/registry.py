"""The model zoo by name: each model's builder, the backbone names it takes, its auxiliary head.

The names of the recipes' `--model` and `--backbone`. The table lives with the
builders because it names them; the backbone names each builder takes come
from `kseg.backbones.registry` (the one table of backbone names, which the
builders themselves look names up in), so that no name is written out twice.
"""

from typing import NamedTuple

from kseg.backbones import registry as backbones
from kseg.models.deeplab import DeepLabV1, DeepLabV2, DeepLabV3, DeepLabV3Plus
from kseg.models.fcn import FCN8s, FCN16s, FCN32s
from kseg.models.fpn import FPN
from kseg.models.gcunet import GCUNet
from kseg.models.ginet import GINet
from kseg.models.glorenet import GloReNet
from kseg.models.linknet import Linknet
from kseg.models.pspnet import PSPNet
from kseg.models.segformer import SegFormer
from kseg.models.segnet import SegNet
from kseg.models.unet import UNet
from kseg.models.unetplusplus import UNetPlusPlus
from kseg.models.upernet import UPerNet

#: The backbone names each kind of builder takes by name: the dilated builders
#: (at output stride 8, 16 or 32) and the encoder U-Net (at 32; `backbone=None`
#: is the paper's U-Net) the ResNets, Xception-65, the keras.applications
#: encoders and the Mix Transformers (at 32 only); the encoder-decoder models
#: that build their encoder at output stride 32 (FPN, Linknet, UNet++, UPerNet)
#: the same names; the VGG builders `"vgg16"`; SegFormer its Mix Transformers.
BACKBONE_NAMES = {
    "dilated": tuple(backbones.DILATED),
    "unet": tuple(backbones.DILATED),
    "vgg16": tuple(backbones.VGG),
    "mit": tuple(backbones.MIT),
    "encoder": tuple(backbones.DILATED),
}


class Model(NamedTuple):
    """A model of the zoo."""

    builder: object  #: the builder in `kseg.models`
    backbone_kind: str  #: the key of `BACKBONE_NAMES` for its `backbone=`
    aux_head: bool  #: whether it takes `aux_head=True`


#: The models by their lower-case name.
MODELS = {
    "fcn8s": Model(FCN8s, "vgg16", False),
    "fcn16s": Model(FCN16s, "vgg16", False),
    "fcn32s": Model(FCN32s, "vgg16", False),
    "unet": Model(UNet, "unet", False),
    "segnet": Model(SegNet, "vgg16", False),
    "pspnet": Model(PSPNet, "dilated", True),
    "deeplabv1": Model(DeepLabV1, "vgg16", False),
    "deeplabv2": Model(DeepLabV2, "dilated", False),
    "deeplabv3": Model(DeepLabV3, "dilated", True),
    "deeplabv3plus": Model(DeepLabV3Plus, "dilated", False),
    "gcunet": Model(GCUNet, "dilated", True),
    "glorenet": Model(GloReNet, "dilated", True),
    "ginet": Model(GINet, "dilated", True),
    "segformer": Model(SegFormer, "mit", False),
    "fpn": Model(FPN, "encoder", False),
    "linknet": Model(Linknet, "encoder", False),
    "unetplusplus": Model(UNetPlusPlus, "encoder", False),
    "upernet": Model(UPerNet, "encoder", True),
}


def backbone_names(model_name):
    """The backbone names the model `model_name` of `MODELS` takes."""
    return BACKBONE_NAMES[MODELS[model_name].backbone_kind]
