"""Converters from other frameworks' checkpoints to kseg models.

`from_torchvision` builds the kseg model with torchvision's layout and loads a
torchvision checkpoint into it, strictly; `from_smp` does the same for a
segmentation_models.pytorch model saved with `save_pretrained`. Backbone
checkpoints of torchvision and timm also load through `backbone_weights=` (see
`kseg.backbones.ResNet`).
"""

from kseg.convert.smp import from_smp
from kseg.convert.torchvision import TORCHVISION_ARCHS, from_torchvision

__all__ = ["from_torchvision", "TORCHVISION_ARCHS", "from_smp"]
