"""Converters from other frameworks' checkpoints to kseg models.

`from_torchvision` builds the kseg model with torchvision's layout and loads a
torchvision checkpoint into it, strictly; `from_huggingface` does the same for
Hugging Face SegFormer checkpoints (a `save_pretrained` folder or a hub
repository id), reading the structure from their `config.json`, and `from_smp`
for a segmentation_models.pytorch model saved with `save_pretrained`. Backbone
checkpoints of torchvision and timm also load through `backbone_weights=` (see
`kseg.backbones.ResNet`), and NVIDIA's Mix Transformer encoders through
`kseg.backbones.MixTransformer(weights=...)`.
"""

from kseg.convert.huggingface import from_huggingface
from kseg.convert.smp import from_smp
from kseg.convert.torchvision import TORCHVISION_ARCHS, from_torchvision

__all__ = ["from_torchvision", "TORCHVISION_ARCHS", "from_huggingface", "from_smp"]
