"""Model builders: CamelCase functions returning a `keras.Model` that outputs logits.

`SegmentationModel` / `with_dataset` give a built model the description of its
dataset (class names, palette, ignore index), kept in its saved config; `with_num_classes` rebuilds a trained model for
another class count (fine-tuning).
"""

from kseg.models.deeplab import DeepLabV1, DeepLabV2, DeepLabV3, DeepLabV3Plus
from kseg.models.fcn import DilatedFCN, FCN8s, FCN16s, FCN32s
from kseg.models.fine_tuning import with_num_classes
from kseg.models.fpn import FPN
from kseg.models.gcunet import GCUNet
from kseg.models.ginet import GINet, class_embedding_names, shipped_class_embeddings
from kseg.models.glorenet import GloReNet
from kseg.models.linknet import Linknet
from kseg.models.pspnet import PSPNet
from kseg.models.segformer import SegFormer
from kseg.models.segmentation_model import SegmentationModel, with_dataset
from kseg.models.segnet import SegNet
from kseg.models.unet import UNet
from kseg.models.unetplusplus import UNetPlusPlus
from kseg.models.upernet import UPerNet

__all__ = [
    "FCN32s",
    "FCN16s",
    "FCN8s",
    "DilatedFCN",
    "UNet",
    "FPN",
    "Linknet",
    "UNetPlusPlus",
    "SegNet",
    "PSPNet",
    "DeepLabV1",
    "DeepLabV2",
    "DeepLabV3",
    "DeepLabV3Plus",
    "GCUNet",
    "GloReNet",
    "GINet",
    "SegFormer",
    "UPerNet",
    "SegmentationModel",
    "with_dataset",
    "with_num_classes",
    "shipped_class_embeddings",
    "class_embedding_names",
]
