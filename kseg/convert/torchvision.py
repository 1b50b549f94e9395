"""torchvision ResNet, DeepLabV3 and FCN checkpoints as kseg models."""

from kseg import backbones as kbackbones
from kseg._common import check_choice, check_int
from kseg.convert.state_dict import StrictCopy, read_state_dict, resnet_copy

_DEPTHS = {"resnet50": kbackbones.ResNet50, "resnet101": kbackbones.ResNet101}

#: Architectures `from_torchvision` converts: name -> (head, backbone depth).
TORCHVISION_ARCHS = {
    "resnet50": (None, "resnet50"),
    "resnet101": (None, "resnet101"),
    "deeplabv3_resnet50": ("deeplabv3", "resnet50"),
    "deeplabv3_resnet101": ("deeplabv3", "resnet101"),
    "fcn_resnet50": ("fcn", "resnet50"),
    "fcn_resnet101": ("fcn", "resnet101"),
}

# torchvision's DeepLabHead (models/segmentation/deeplabv3.py): ASPP with rates
# 12, 24, 36 and dropout 0.5, a 3x3 ConvBNReLU of 256, the classifier at index 4.
_DEEPLAB = {"atrous_rates": (12, 24, 36), "dropout": 0.5, "head_filters": 256}


def _classes(state, key, arch):
    weight = state.get(f"{key}.weight")
    if weight is None:
        raise ValueError(
            f"The checkpoint has no `{key}.weight`, the classifier of torchvision's {arch}: "
            "is it a checkpoint of this architecture?"
        )
    return int(weight.shape[0])


def from_torchvision(
    arch,
    weights,
    num_classes=None,
    input_shape=(None, None, 3),
    normalization="torch",
    name=None,
):
    """A kseg model with the layout of a torchvision model, holding its checkpoint.

    The layouts are built from kseg's own builders with the options that make
    them equal to torchvision's (`torchvision.models.segmentation`, 0.2x):

    - `resnet50` / `resnet101`: the feature extractor, a v1.5
      `kseg.backbones.ResNet50/101` at output stride 32 (the ImageNet
      classifier `fc.*` is skipped); the outputs are the backbone's dict of
      stage features.
    - `deeplabv3_resnet50/101`: `kseg.models.DeepLabV3` on a v1.5 ResNet at
      output stride 8 (torchvision's `replace_stride_with_dilation=[False,
      True, True]`: the first block of a dilated stage keeps the previous
      rate), no multi-grid, ASPP rates (12, 24, 36) with its image-pooling
      branch and dropout 0.5, a 3x3 ConvBNReLU of 256 before the classifier,
      and bilinear upsampling with `align_corners=False`.
    - `fcn_resnet50/101`: `kseg.models.DilatedFCN` on the same backbone (a
      3x3 ConvBNReLU of 512, dropout 0.1, the classifier).

    A checkpoint with `aux_classifier.*` keys (torchvision's COCO-with-VOC-labels
    checkpoints have them) adds the auxiliary FCN head on stage 3, and the
    model's outputs become `{"main", "aux"}`.

    Args:
        arch: a key of `TORCHVISION_ARCHS`.
        weights: a state dict (`{name: torch tensor or numpy array}`, e.g.
            `model.state_dict()`) or the path of a checkpoint (`.pth` read
            with torch, or `.safetensors`).
        num_classes: None (default: the checkpoint's) or another class count:
            every weight but the classifiers' (main and auxiliary) loads, and
            the classifiers start from kseg's initialisation (fine-tuning).
        input_shape: the model's input shape. Defaults to `(None, None, 3)`.
        normalization: the model's input normalisation; the default `"torch"`
            takes RGB images in [0, 255] and applies torchvision's ImageNet
            mean and std on [0, 1], the preprocessing torchvision's
            checkpoints expect. (Unused for the feature extractors, which take
            the normalised image, as torchvision's ResNet does.)
        name: model name. Defaults to `arch`.

    Returns:
        A `keras.Model`. Its logits equal torchvision's on the same image in
        inference mode (to float32 rounding; tested at 97x131).

    Raises:
        ValueError: the checkpoint does not fit the layout: the message lists
            every missing, unexpected and misshapen key, and nothing is loaded.

    Example:

    >>> model = kseg.convert.from_torchvision(
    ...     "deeplabv3_resnet101", "deeplabv3_resnet101_coco-586e9e4e.pth")
    >>> logits = model.predict(images)["main"]  # (B, H, W, 21), VOC classes
    """
    check_choice("arch", arch, tuple(TORCHVISION_ARCHS))
    head, depth = TORCHVISION_ARCHS[arch]
    state = read_state_dict(weights)
    source = f"torchvision {arch}"
    name = name or arch
    if head is None:
        model = _DEPTHS[depth](input_shape=input_shape, variant="v1.5", name=name)
        copy = StrictCopy(state, source)
        copy.skip("fc.")
        resnet_copy(copy, model)
        return copy.finish(model)

    from kseg import models

    checkpoint_classes = _classes(state, "classifier.4", arch)
    if num_classes is None:
        num_classes = checkpoint_classes
    num_classes = check_int("num_classes", num_classes, 1)
    fine_tune = num_classes != checkpoint_classes
    aux = any(k.startswith("aux_classifier.") for k in state)
    backbone = _DEPTHS[depth](
        input_shape=input_shape, output_stride=8, variant="v1.5", name=f"{depth}_v1.5"
    )
    common = {
        "input_shape": input_shape,
        "backbone": backbone,
        "aux_head": aux,
        "align_corners": False,
        "normalization": normalization,
        "name": name,
    }
    if head == "deeplabv3":
        model = models.DeepLabV3(num_classes, multi_grid=None, **_DEEPLAB, **common)
    else:
        model = models.DilatedFCN(num_classes, head_filters=512, dropout=0.1, **common)

    copy = StrictCopy(state, source)
    resnet_copy(copy, backbone, prefix="backbone.")
    if head == "deeplabv3":
        aspp = model.get_layer("aspp")
        for index, branch in enumerate(aspp.branches):
            copy.conv(branch.conv, f"classifier.0.convs.{index}.0")
            copy.bn(branch.bn, f"classifier.0.convs.{index}.1")
        pool = len(aspp.branches)  # ASPPPooling: [AdaptiveAvgPool2d, conv, BN, ReLU]
        copy.conv(aspp.pool_conv.conv, f"classifier.0.convs.{pool}.1")
        copy.bn(aspp.pool_conv.bn, f"classifier.0.convs.{pool}.2")
        copy.conv(aspp.projection.conv, "classifier.0.project.0")
        copy.bn(aspp.projection.bn, "classifier.0.project.1")
        head_conv = model.get_layer("head_conv")
        copy.conv(head_conv.conv, "classifier.1")
        copy.bn(head_conv.bn, "classifier.2")
    else:
        head_conv = model.get_layer("head_conv")
        copy.conv(head_conv.conv, "classifier.0")
        copy.bn(head_conv.bn, "classifier.1")
    classifiers = [("classifier", "classifier.4")]
    if aux:
        aux_conv = model.get_layer("aux_conv")
        copy.conv(aux_conv.conv, "aux_classifier.0")
        copy.bn(aux_conv.bn, "aux_classifier.1")
        classifiers.append(("aux_classifier", "aux_classifier.4"))
    for layer_name, key in classifiers:
        layer = model.get_layer(layer_name)
        if fine_tune:
            # Keeps kseg's initialisation for the new class count.
            copy.skip(f"{key}.")
            copy.keep(layer)
        else:
            copy.conv(layer, key)
    return copy.finish(model)
