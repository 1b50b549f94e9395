"""GINet: graph interaction network, with the shipped class-name embeddings."""

import os

import keras
import numpy as np

from kseg.backbones.applications import KEYS
from kseg.layers import ClassPresenceScore, ConvBNAct, GraphInteractionUnit, JointPyramidUpsampling
from kseg.models._base import (
    aux_logits,
    check_num_classes,
    classify,
    outputs_dict,
    resnet_features,
)
from kseg.models.segmentation_model import builder

_EMBEDDINGS_FILE = os.path.join(os.path.dirname(__file__), "class_embeddings.npz")


#: Datasets whose class-name embeddings ship with kseg, and their class counts.
SHIPPED_EMBEDDINGS = {"voc": 21, "cityscapes": 19}


def shipped_class_embeddings(dataset):
    """Returns the shipped `(K, 384)` class-name embeddings of `"voc"` (21) or `"cityscapes"` (19).

    They are all-MiniLM-L6-v2 sentence embeddings of the class names, made by
    `recipes/make_class_embeddings.py` and stored in the package, so GINet's
    semantic graph needs no download. The class order is the dataset's label
    order (`class_embedding_names(dataset)`, equal to
    `kseg.data.palette.VOC_CLASSES` / `CITYSCAPES_CLASSES`).
    """
    if not isinstance(dataset, str) or dataset not in SHIPPED_EMBEDDINGS:
        raise ValueError(
            f"Expected `dataset` to be one of {sorted(SHIPPED_EMBEDDINGS)}. "
            f"Received: dataset={dataset!r}"
        )
    with np.load(_EMBEDDINGS_FILE) as data:
        return data[dataset].astype("float32")


def class_embedding_names(dataset):
    """The class names, in label order, behind `shipped_class_embeddings(dataset)`."""
    shipped_class_embeddings(dataset)  # validates the name
    with np.load(_EMBEDDINGS_FILE) as data:
        return tuple(str(n) for n in data[f"{dataset}_names"])


def _resolve_embeddings(value, num_classes):
    """The GI unit's `class_embeddings` for GINet's argument: None, "learned" or an array."""
    if value is None or (isinstance(value, str) and value == "learned"):
        return value
    if isinstance(value, str):
        if value not in SHIPPED_EMBEDDINGS:
            raise ValueError(
                "Expected `class_embeddings` to be a dataset name with shipped embeddings "
                f"({', '.join(repr(n) for n in SHIPPED_EMBEDDINGS)}), a (num_classes, "
                f"embedding_dim) array, 'learned' or None. Received: class_embeddings={value!r}"
            )
        count = SHIPPED_EMBEDDINGS[value]
        if count != num_classes:
            raise ValueError(
                f"The shipped embeddings of {value!r} have {count} classes but the model has "
                f"{num_classes}: pass the embeddings of your own classes as an array, "
                f"'learned' or None. Received: num_classes={num_classes}"
            )
        return shipped_class_embeddings(value)
    if isinstance(value, (bool, int, float)) or not hasattr(value, "__len__"):
        raise TypeError(
            "Expected `class_embeddings` to be a dataset name, a (num_classes, embedding_dim) "
            f"array, 'learned' or None. Received: class_embeddings={value!r}"
        )
    shape = np.shape(value)
    if len(shape) != 2 or shape[0] != num_classes:
        raise ValueError(
            f"Expected `class_embeddings` of shape (num_classes, embedding_dim) with "
            f"num_classes rows; the array has shape {shape} ({shape[0] if shape else 0} rows). "
            f"Received: num_classes={num_classes}"
        )
    return value


@builder
def GINet(
    num_classes,
    input_shape=(None, None, 3),
    backbone="resnet50",
    output_stride=8,
    backbone_weights=None,
    class_embeddings=None,
    use_jpu=True,
    jpu_width=512,
    reduce_filters=512,
    num_state=256,
    num_node=84,
    dropout=0.1,
    aux_head=False,
    align_corners=True,
    normalization="auto",
    bn_momentum=0.9,
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
    semantic centroid (`kseg.layers.ClassPresenceScore`); train it with
    `kseg.losses.SemanticContextLoss` (weight 0.2 in the GINet recipe), feeding
    the label map as its target, or give it no loss at `compile` time:

        model.compile(
            optimizer="sgd",
            loss={"main": kseg.losses.SegmentationCrossEntropy(),
                  "presence": kseg.losses.SemanticContextLoss(num_classes)},
            loss_weights={"main": 1.0, "presence": 0.2})
        model.fit(images, {"main": labels, "presence": labels})

    Class embeddings are chosen explicitly, never from the class count (a
    21-class dataset is not necessarily PASCAL VOC). The default None feeds
    all-zero word vectors, as the reference does, which makes the semantic
    graph K learned class queries (SPEC 3.5). A dataset name (`"voc"`,
    `"cityscapes"`) takes the shipped sentence embeddings of its class names
    (`shipped_class_embeddings`), in that dataset's label order; a
    `(num_classes, E)` array gives your own (for example GloVe vectors of your
    class names, row k for label k), stored as a frozen weight; `"learned"`
    gives a trainable table drawn from N(0, 0.02).

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`, values in [0, 255] (RGB
            for pretrained weights); any size and channel count works.
        backbone: `"resnet50"` (default), `"resnet101"` (keras.applications'
            layout), the same with `"_v1.5"` or `"_v1c"` for the torch layouts
            (e.g. `"resnet101_v1.5"`, see `kseg.backbones.ResNet`),
            `"resnet152"`, `"xception65"` (DeepLab v3+'s aligned Xception-65,
            `kseg.backbones.Xception65`), a keras.applications encoder name
            (`"mobilenetv2"`, `"efficientnetb0"`, `"convnexttiny"`, ... : see
            `kseg.backbones.Application`; its family's output strides apply and
            `multi_grid` does not), or a backbone built by `kseg.backbones`.
        output_stride: 8 (default), 16 or 32, for a backbone given by name.
        backbone_weights: None, `"imagenet"` or a path (see `kseg.backbones`).
        class_embeddings: None (default: zeros, as the reference), a
            dataset name with shipped embeddings (`"voc"`: 21 classes,
            `"cityscapes"`: 19), a `(num_classes, E)` array or `"learned"`.
            A name or array whose class count differs from `num_classes`
            raises a `ValueError`.
        use_jpu: use the joint pyramid upsampling neck
            (`kseg.layers.JointPyramidUpsampling`, layer `jpu`). Defaults to True.
        jpu_width: JPU width. Defaults to 512.
        reduce_filters: width of the conv before the unit. Defaults to 512.
        num_state: GI unit state width D. Defaults to 256.
        num_node: number of visual nodes N. Defaults to 84.
        dropout: before the classifier. Defaults to 0.1.
        aux_head: add the auxiliary head on stage 3. Defaults to False.
        align_corners: of the final resize. Defaults to True (reference).
        normalization: input normalisation, `"auto"` (what the backbone's
            weights expect), `"caffe"`, `"torch"`, `"unit"` or None.
        bn_momentum: the momentum of every BatchNormalization built here: the
            head's and, for a backbone given by name, the backbone's (Keras'
            convention: torch's momentum 0.1 is 0.9). Defaults to 0.9. A
            backbone model keeps its own.
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
        bn_momentum=bn_momentum,
        roles=("high_level", "aux") if aux_head else ("high_level",),
    )
    if use_jpu:
        # The stride 8, 16 and 32 features (at output stride 32).
        keys = ("stage2", "stage3", "stage4") if info.family == "resnet" else KEYS[2:]
        jpu = JointPyramidUpsampling(width=jpu_width, bn_momentum=bn_momentum, name="jpu")
        x = jpu([feats[key] for key in keys])
    else:
        x = feats[info.high_level]
    x = ConvBNAct(reduce_filters, 3, bn_momentum=bn_momentum, name="conv5")(x)
    x, class_nodes = GraphInteractionUnit(
        num_classes,
        class_embeddings=embeddings,
        num_state=num_state,
        num_node=num_node,
        embedding_mlp=(num_state // 2, num_state),  # 300 -> 128 -> 256 in the reference
        bn_momentum=bn_momentum,
        name="gi_unit",
    )(x)
    main = classify(x, inputs, num_classes, align_corners, dropout)
    aux = (
        aux_logits(feats[info.aux], inputs, num_classes, align_corners, bn_momentum=bn_momentum)
        if aux_head
        else None
    )
    presence = ClassPresenceScore(name="presence")(class_nodes)
    return keras.Model(inputs, outputs_dict(main, aux, presence=presence), name=name)
