"""GINet: graph interaction network, with the shipped class-name embeddings."""

import os

import keras
import numpy as np

from kseg.layers import ConvBNAct, GraphInteractionUnit, JointPyramidUpsampling
from kseg.losses import ClassPresenceScore
from kseg.models._base import (
    aux_logits,
    check_num_classes,
    classify,
    outputs_dict,
    resnet_features,
)

_EMBEDDINGS_FILE = os.path.join(os.path.dirname(__file__), "class_embeddings.npz")


def shipped_class_embeddings(dataset):
    """Returns the shipped `(K, 384)` class-name embeddings of `"voc"` (21) or `"cityscapes"` (19).

    They are all-MiniLM-L6-v2 sentence embeddings of the class names, made by
    `recipes/make_class_embeddings.py` and stored in the package, so GINet's
    semantic graph needs no download. The class order is the dataset's label
    order (`class_embedding_names(dataset)`).
    """
    with np.load(_EMBEDDINGS_FILE) as data:
        if dataset not in ("voc", "cityscapes"):
            raise ValueError(
                f"Expected `dataset` to be 'voc' or 'cityscapes'. Received: dataset={dataset!r}"
            )
        return data[dataset].astype("float32")


def class_embedding_names(dataset):
    """The class names, in label order, behind `shipped_class_embeddings(dataset)`."""
    shipped_class_embeddings(dataset)  # validates the name
    with np.load(_EMBEDDINGS_FILE) as data:
        return tuple(str(n) for n in data[f"{dataset}_names"])


def _resolve_embeddings(value, num_classes):
    if isinstance(value, str) and value == "auto":
        by_size = {21: "voc", 19: "cityscapes"}
        value = by_size.get(num_classes, "learned")
    if isinstance(value, str) and value in ("voc", "cityscapes"):
        value = shipped_class_embeddings(value)
        if value.shape[0] != num_classes:
            raise ValueError(
                f"The shipped embeddings have {value.shape[0]} classes but the model has "
                f"{num_classes}. Received: num_classes={num_classes}"
            )
    return value


def GINet(
    num_classes,
    input_shape=(None, None, 3),
    backbone="resnet50",
    output_stride=8,
    backbone_weights=None,
    class_embeddings="auto",
    use_jpu=True,
    jpu_width=512,
    filters=512,
    num_state=256,
    num_node=84,
    dropout=0.1,
    aux_head=False,
    align_corners=True,
    normalization="auto",
    name="ginet",
):
    """GINet (Wu et al., "GINet: Graph Interaction Network for Scene Parsing", ECCV 2020).

    Layout (SPEC 3.2-3.4, following PaddleSeg's port of the authors' code): a
    dilated ResNet at output stride 8; JPU over stages 2-4 (2048 channels);
    a 3x3 ConvBNReLU to 512; the graph interaction unit (visual graph of 84
    nodes with 256-d states, semantic graph over the class embeddings, both
    interaction directions); dropout 0.1; a 1x1 classifier; bilinear
    upsampling with align_corners=True.

    The model has two outputs, `{"main": logits, "presence": (B, K)}` (plus
    `"aux"` with `aux_head=True`). `presence` holds class-presence logits
    computed from the unit's class nodes `(B, K, 256)` with a learnable
    semantic centroid (`kseg.losses.ClassPresenceScore`); train it with
    `kseg.losses.SemanticContextLoss` (weight 0.2 in the GINet recipe), feeding
    the label map as its target, or give it no loss at `compile` time:

        model.compile(
            optimizer="sgd",
            loss={"main": kseg.losses.SegmentationCrossEntropy(),
                  "presence": kseg.losses.SemanticContextLoss(num_classes)},
            loss_weights={"main": 1.0, "presence": 0.2})
        model.fit(images, {"main": labels, "presence": labels})

    Class embeddings: the reference feeds all-zero word vectors, which makes
    the semantic graph K learned queries (SPEC 3.5). kseg feeds real ones by
    default: with `"auto"`, 21 classes take the shipped PASCAL VOC embeddings,
    19 classes the Cityscapes ones, and any other count a learned table.

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, 3)`, RGB in [0, 255]; any size works.
        backbone: `"resnet50"` (default), `"resnet101"` or a ResNet from
            `kseg.backbones`.
        output_stride: 8 (default), 16 or 32, for a backbone given by name.
        backbone_weights: None, `"imagenet"` or a path (see `kseg.backbones`).
        class_embeddings: `"auto"` (default), `"voc"`, `"cityscapes"`, a
            `(num_classes, E)` array, `"learned"`, or None (zeros, as the
            reference implementation).
        use_jpu: use the joint pyramid upsampling neck
            (`kseg.layers.JointPyramidUpsampling`, layer `jpu`). Defaults to True.
        jpu_width: JPU width. Defaults to 512.
        filters: width of the conv before the unit. Defaults to 512.
        num_state: GI unit state width D. Defaults to 256.
        num_node: number of visual nodes N. Defaults to 84.
        dropout: before the classifier. Defaults to 0.1.
        aux_head: add the auxiliary head on stage 3. Defaults to False.
        align_corners: of the final resize. Defaults to True (reference).
        normalization: input normalisation, `"auto"` (what the backbone's
            weights expect), `"caffe"`, `"torch"`, `"unit"` or None.
        name: model name.

    Returns:
        A `keras.Model` mapping images to `{"main": float32 logits at the input
        size, "presence": float32 (B, num_classes)}` (and `"aux"`).
    """
    num_classes = check_num_classes(num_classes)
    embeddings = _resolve_embeddings(class_embeddings, num_classes)
    inputs, feats, info = resnet_features(
        backbone,
        input_shape=input_shape,
        backbone_weights=backbone_weights,
        output_stride=output_stride,
        normalization=normalization,
    )
    if use_jpu:
        x = JointPyramidUpsampling(width=jpu_width, name="jpu")(
            [feats["stage2"], feats["stage3"], feats["stage4"]]
        )
    else:
        x = feats[info.high_level]
    x = ConvBNAct(filters, 3, name="conv5")(x)
    x, class_nodes = GraphInteractionUnit(
        num_classes,
        class_embeddings=embeddings,
        num_state=num_state,
        num_node=num_node,
        embedding_mlp=(num_state // 2, num_state),  # 300 -> 128 -> 256 in the reference
        name="gi_unit",
    )(x)
    main = classify(x, inputs, num_classes, align_corners, dropout)
    aux = aux_logits(feats[info.aux], inputs, num_classes, align_corners) if aux_head else None
    presence = ClassPresenceScore(name="presence")(class_nodes)
    return keras.Model(inputs, outputs_dict(main, aux, presence=presence), name=name)
