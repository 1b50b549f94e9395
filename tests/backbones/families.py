"""What the papers say about each keras.applications family, shared by the encoder and model tests.

Written out from the papers and keras.applications' sources, never read from
the code under test.
"""

import math

import keras

# Channels at nominal strides 2, 4, 8, 16, 32 (None: no feature at that stride).
# MobileNetV2: Sandler et al. 2018, Table 2 (last block outputs, before the
# 1280-channel 1x1 conv). MobileNetV3: Howard et al. 2019, Tables 1 and 2.
# EfficientNet: Tan & Le 2019, Table 1, widths scaled by keras.applications'
# `round_filters` (width 1.0, 1.0, 1.1, 1.2, 1.4, 1.6, 1.8, 2.0). EfficientNetV2:
# Tan & Le 2021, Table 4 and keras.applications' block configs. Xception:
# Chollet 2017, Figure 5. DenseNet: Huang et al. 2017, Table 1 (growth 32).
# ConvNeXt: Liu et al. 2022, section 2 (C = 96, 96, 128, 192). ResNetV2:
# He et al. 2016b. VGG19: Simonyan & Zisserman 2015, Table 1 (column E).
CHANNELS = {
    "mobilenetv2": (16, 24, 32, 96, 320),
    "mobilenetv3small": (16, 16, 24, 48, 96),
    "mobilenetv3large": (16, 24, 40, 112, 160),
    "efficientnetb0": (16, 24, 40, 112, 320),
    "efficientnetb1": (16, 24, 40, 112, 320),
    "efficientnetb2": (16, 24, 48, 120, 352),
    "efficientnetb3": (24, 32, 48, 136, 384),
    "efficientnetb4": (24, 32, 56, 160, 448),
    "efficientnetb5": (24, 40, 64, 176, 512),
    "efficientnetb6": (32, 40, 72, 200, 576),
    "efficientnetb7": (32, 48, 80, 224, 640),
    "efficientnetv2b0": (16, 32, 48, 112, 192),
    "efficientnetv2b1": (16, 32, 48, 112, 192),
    "efficientnetv2b2": (16, 32, 56, 120, 208),
    "efficientnetv2b3": (16, 40, 56, 136, 232),
    "efficientnetv2s": (24, 48, 64, 160, 256),
    "efficientnetv2m": (24, 48, 80, 176, 512),
    "efficientnetv2l": (32, 64, 96, 224, 640),
    "xception": (64, 128, 256, 728, 2048),
    "densenet121": (64, 256, 512, 1024, 1024),
    "densenet169": (64, 256, 512, 1280, 1664),
    "densenet201": (64, 256, 512, 1792, 1920),
    "convnexttiny": (None, 96, 192, 384, 768),
    "convnextsmall": (None, 96, 192, 384, 768),
    "convnextbase": (None, 128, 256, 512, 1024),
    "convnextlarge": (None, 192, 384, 768, 1536),
    "resnet50v2": (64, 256, 512, 1024, 2048),
    "resnet101v2": (64, 256, 512, 1024, 2048),
    "resnet152v2": (64, 256, 512, 1024, 2048),
    "vgg19": (128, 256, 512, 512, 512),
}

# Family: (output strides offered, what keras.applications' `preprocess_input`
# does, as the `ImageNormalization` mode, and that module).
FAMILIES = {
    "mobilenetv2": ((8, 16, 32), "tf", keras.applications.mobilenet_v2),
    "mobilenetv3": ((8, 16, 32), None, keras.applications.mobilenet_v3),
    "efficientnet": ((8, 16, 32), None, keras.applications.efficientnet),
    "efficientnetv2": ((8, 16, 32), None, keras.applications.efficientnet_v2),
    "xception": ((16, 32), "tf", keras.applications.xception),
    "densenet": ((32,), "torch", keras.applications.densenet),
    "convnext": ((8, 16, 32), None, keras.applications.convnext),
    "resnetv2": ((8, 16, 32), "tf", keras.applications.resnet_v2),
    "vgg19": ((32,), "caffe", keras.applications.vgg19),
}

# BatchNorm of each family's keras.applications model, from its sources:
# (momentum, epsilon) of every BatchNormalization it builds, None for a family
# without BatchNorm (ConvNeXt normalises with LayerNormalization, VGG19 not at
# all). The ImageNet weights were trained with that epsilon.
KERAS_BATCH_NORM = {
    "mobilenetv2": (0.999, 1e-3),
    "mobilenetv3": (0.999, 1e-3),
    "efficientnet": (0.99, 1e-3),
    "efficientnetv2": (0.9, 1e-3),
    "xception": (0.99, 1e-3),
    "densenet": (0.99, 1.001e-5),
    "convnext": None,
    "resnetv2": (0.99, 1.001e-5),
    "vgg19": None,
}

SMALLEST = {
    "mobilenetv2": "mobilenetv2",
    "mobilenetv3": "mobilenetv3small",
    "efficientnet": "efficientnetb0",
    "efficientnetv2": "efficientnetv2b0",
    "xception": "xception",
    "densenet": "densenet121",
    "convnext": "convnexttiny",
    "resnetv2": "resnet50v2",
    "vgg19": "vgg19",
}


_PREFIXES = (
    ("mobilenetv3", "mobilenetv3"),
    ("mobilenetv2", "mobilenetv2"),
    ("efficientnetv2", "efficientnetv2"),
    ("efficientnet", "efficientnet"),
    ("xception", "xception"),
    ("densenet", "densenet"),
    ("convnext", "convnext"),
    ("resnet", "resnetv2"),
    ("vgg19", "vgg19"),
)


def family_of(name):
    return next(family for prefix, family in _PREFIXES if name.startswith(prefix))


def rows(family, size, stride):
    """Rows of a feature at true `stride` for `size` input rows, undilated.

    MobileNet, EfficientNet and ResNetV2 pad every stride-2 step so that it
    gives ceil(h / 2) on a static size. DenseNet: ceil to stride 4, then 2x2/2
    average pools (floor). VGG19 (2x2/2 max-pools) and ConvNeXt (4x4/4 stem,
    2x2/2 convs) floor. Xception: an unpadded 3x3/2 conv and an unpadded 3x3
    conv, then "same" stride-2 pools (ceil). Every other family (kseg's
    ResNets and Xception-65) pads as torch does: ceil(h / 2) at each step.
    """
    if family in ("vgg19", "convnext"):
        return size // stride
    if family == "densenet":
        return math.ceil(size / min(stride, 4)) // max(stride // 4, 1)
    if family == "xception":
        stem = (size - 3) // 2 + 1 - 2
        return math.ceil(stem / (stride // 2))
    return math.ceil(size / stride)
