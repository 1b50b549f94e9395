"""SegFormer: the Mix Transformer encoder and the all-MLP decoder."""

import keras

from kseg import backbones as kbackbones
from kseg._common import check_float, check_int
from kseg.layers import ConvBNAct, ResizeLike
from kseg.models._base import (
    backbone_features,
    check_num_classes,
    classifier_initializer,
    upsample_logits,
)
from kseg.models.segmentation_model import builder

#: The decoder width of each variant: 256 for the light MiT-B0 and B1, 768 for B2-B5
#: (Xie et al., "SegFormer", NeurIPS 2021, section 4.1 "Implementation details";
#: mmsegmentation's `segformer_mit-b*` configs, Hugging Face's `nvidia/segformer-b*`
#: `decoder_hidden_size`).
DECODER_FILTERS = {
    "mit_b0": 256,
    "mit_b1": 256,
    "mit_b2": 768,
    "mit_b3": 768,
    "mit_b4": 768,
    "mit_b5": 768,
}
#: The width for a Mix Transformer of no named variant (Hugging Face's config default).
DEFAULT_DECODER_FILTERS = 256


@builder
def SegFormer(
    num_classes,
    input_shape=(None, None, 3),
    backbone="mit_b0",
    backbone_weights=None,
    decoder_filters=None,
    dropout=0.1,
    drop_path_rate=0.1,
    normalization="auto",
    bn_momentum=0.9,
    name="segformer",
):
    """SegFormer (Xie et al., "SegFormer: Simple and Efficient Design for Semantic
    Segmentation with Transformers", NeurIPS 2021).

    Layout (section 3.2, the "All-MLP decoder", in the form of Hugging Face's
    `SegformerForSemanticSegmentation` and mmsegmentation's `SegformerHead`):
    the Mix Transformer encoder (`kseg.backbones.MixTransformer`) gives four
    features at strides 4, 8, 16 and 32; each goes through a linear layer to
    `decoder_filters` channels, the three deeper ones are upsampled
    bilinearly (`align_corners=False`) to the stride-4 map's size, the four
    are concatenated deepest first (stage 4, 3, 2, 1, as both references),
    fused by a 1x1 convolution without bias + BatchNorm + ReLU, then channel
    dropout and a 1x1 classifier give the logits at stride 4, which are
    upsampled bilinearly (`align_corners=False`) to the input size (what
    Hugging Face's `post_process_semantic_segmentation` does with the
    model's stride-4 logits). With the weights of a Hugging Face SegFormer
    (`kseg.convert.from_huggingface`) the logits equal that pipeline's.

    Dropout before the classifier drops whole channels (`SpatialDropout2D`,
    the `nn.Dropout2d` of mmsegmentation's decode heads, which the paper's
    code uses); Hugging Face's port drops elements. Inference is the same.

    Layer names: `normalize`, the backbone model (named by its variant,
    e.g. `mit_b0`), `decode_head_linear_c{i}` (Dense, `i` = 1 ... 4 for
    stages 1 ... 4), `decode_head_resize_c{i}` (`i` = 2 ... 4),
    `decode_head_concat`, `decode_head_fuse` (`ConvBNAct`: `conv`, `bn`,
    `act`), `decode_head_dropout`, `classifier`, `logits`: every decoder
    layer's name begins with `decode_head`, the classifier is `classifier`
    (a recipe may give the head its own learning rate by these names, as
    SegFormer's training does with a 10x rate on the head).

    Args:
        num_classes: number of classes.
        input_shape: `(height, width, channels)`, values in [0, 255] (RGB
            for pretrained weights); any size from 29 pixels up, any channel
            count.
        backbone: `"mit_b0"` (default) ... `"mit_b5"`, or a Mix Transformer
            built by `kseg.backbones.MixTransformer`.
        backbone_weights: None or `"imagenet"` (NVIDIA's ImageNet-1k
            `nvidia/mit-b*` encoder from the Hugging Face hub; needs
            `pip install kseg[huggingface]`), or a checkpoint path (see
            `kseg.backbones.MixTransformer`), for a backbone given by name.
        decoder_filters: width of the decoder. Defaults to None: 256 for
            `mit_b0` and `mit_b1`, 768 for `mit_b2` ... `mit_b5` (the
            paper's), 256 for a Mix Transformer of no named variant.
        dropout: channel dropout rate before the classifier. Defaults to
            0.1.
        drop_path_rate: stochastic depth of the encoder's last block (0 for
            the first, linear in between), for a backbone given by name.
            Defaults to 0.1 (the paper's).
        normalization: input normalisation: `"auto"` (default: the
            backbone's, `"torch"`: ImageNet mean and std of RGB in [0, 1], as
            Hugging Face's `SegformerImageProcessor`; adapted to the channel
            count when the weights are pretrained, see
            `kseg.backbones.with_input_channels`; `"unit"` for other than 3
            channels without them), `"caffe"`, `"torch"`, `"tf"`, `"unit"`
            (divide by 255), `{"mean": ..., "std": ...}` or None. See
            `kseg.layers.ImageNormalization`.
        bn_momentum: momentum of the decoder's BatchNorm (Keras' convention:
            torch's 0.1 is 0.9; its epsilon is torch's 1e-5). Defaults to 0.9.
            The encoder has no BatchNorm.
        name: model name.

    Returns:
        A `keras.Model` mapping images to float32 logits at the input size.

    Example:

    >>> model = kseg.models.SegFormer(num_classes=19, backbone="mit_b0")
    >>> tuple(model(np.zeros((1, 97, 131, 3))).shape)
    (1, 97, 131, 19)
    """
    num_classes = check_num_classes(num_classes)
    dropout = check_float("dropout", dropout, 0.0, 1.0)
    inputs, feats, info = backbone_features(
        backbone,
        names=kbackbones.registry.MIT,
        family="mit",
        input_shape=input_shape,
        backbone_weights=backbone_weights,
        normalization=normalization,
        drop_path_rate=drop_path_rate,
        roles=("low_level",),
    )
    if decoder_filters is None:
        decoder_filters = DECODER_FILTERS.get(info.variant, DEFAULT_DECODER_FILTERS)
    decoder_filters = check_int("decoder_filters", decoder_filters, 1)
    bn_momentum = check_float("bn_momentum", bn_momentum, 0.0, 1.0)

    reference = feats[info.low_level]  # the stride-4 map every stage is resized to
    projected = []
    for index, key in enumerate(info.keys(), start=1):
        x = keras.layers.Dense(decoder_filters, name=f"decode_head_linear_c{index}")(feats[key])
        if key != info.low_level:
            x = ResizeLike(name=f"decode_head_resize_c{index}")([x, reference])
        projected.append(x)
    x = keras.layers.Concatenate(name="decode_head_concat")(projected[::-1])
    x = ConvBNAct(
        decoder_filters, 1, use_bias=False, bn_momentum=bn_momentum, name="decode_head_fuse"
    )(x)
    if dropout:
        x = keras.layers.SpatialDropout2D(dropout, name="decode_head_dropout")(x)
    x = keras.layers.Conv2D(
        num_classes, 1, kernel_initializer=classifier_initializer(), name="classifier"
    )(x)
    return keras.Model(inputs, upsample_logits(x, inputs), name=name)
