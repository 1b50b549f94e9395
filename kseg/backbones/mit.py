"""The Mix Transformer (MiT-B0 ... B5), SegFormer's hierarchical encoder, as a dict of features."""

import collections.abc
import math
import os

import keras

from kseg._common import check_float, check_int
from kseg.backbones._info import BackboneInfo, FeatureSpec, as_backbone
from kseg.layers.mix_transformer import (
    LAYER_NORM_EPSILON,
    DropPath,
    EfficientSelfAttention,
    MixFFN,
    OverlapPatchEmbedding,
)

#: Per variant: the widths and the number of blocks of the four stages (Xie et al.,
#: "SegFormer", NeurIPS 2021, appendix Table 6; the same in Hugging Face's `nvidia/mit-b*`
#: configs and mmsegmentation's `configs/_base_/models/segformer_mit-b0.py` and the
#: `segformer_mit-b*` configs).
VARIANTS = {
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}
NAMES = tuple(VARIANTS)

#: What every variant shares (Table 6): heads, spatial-reduction ratios, MLP
#: expansion, and the patch embeddings' kernel sizes and strides.
SHARED = {
    "num_heads": (1, 2, 5, 8),
    "sr_ratios": (8, 4, 2, 1),
    "mlp_ratios": (4, 4, 4, 4),
    "patch_sizes": (7, 3, 3, 3),
    "strides": (4, 2, 2, 2),
}
#: The structural arguments of `MixTransformer`, in order.
STRUCTURE = ("hidden_sizes", "depths", *SHARED)
NUM_STAGES = 4

_TABLE = """
    Outputs (a dict; for an input of `H` rows every map has
    `ceil(H / stride)` rows, the patch embeddings padding `patch_size // 2`
    on every side: `floor((h + 2 * (k // 2) - k) / s) + 1` per stage):

    | key      | layer          | B0 channels | B1-B5 channels | stride |
    |----------|----------------|-------------|----------------|--------|
    | `stage1` | `stage1_norm`  |          32 |             64 |      4 |
    | `stage2` | `stage2_norm`  |          64 |            128 |      8 |
    | `stage3` | `stage3_norm`  |         160 |            320 |     16 |
    | `stage4` | `stage4_norm`  |         256 |            512 |     32 |

    Roles (see `kseg.backbones.feature_info`): `low_level="stage1"`,
    `aux="stage3"`, `high_level="stage4"`. There is no dilated form: the
    output stride is 32 (the product of `strides`).

"""


def architecture(variant="mit_b0", **overrides):
    """The structure of a Mix Transformer: a variant's values with `overrides` in their place.

    Args:
        variant: a name of `NAMES`, or None (then every structural argument
            must be given).
        **overrides: any of `STRUCTURE` (a sequence of 4 values, or None for
            the variant's).

    Returns:
        A dict `{name: tuple of 4}` over `STRUCTURE`.
    """
    if variant is not None and variant not in VARIANTS:
        raise ValueError(
            f"Expected `variant` to be one of {NAMES} or None. Received: variant={variant!r}"
        )
    unknown = sorted(set(overrides) - set(STRUCTURE))
    if unknown:
        raise TypeError(f"Unknown structural arguments {unknown}; expected some of {STRUCTURE}")
    defaults = {}
    if variant is not None:
        widths, depths = VARIANTS[variant]
        defaults = {"hidden_sizes": widths, "depths": depths, **SHARED}
    structure = {}
    for key in STRUCTURE:
        value = overrides.get(key)
        if value is None:
            if variant is None:
                raise ValueError(
                    f"Expected `{key}` to be given when `variant` is None. Received: {key}=None"
                )
            value = defaults[key]
        if isinstance(value, (str, bytes)) or not isinstance(value, collections.abc.Sequence):
            raise ValueError(
                f"Expected `{key}` to be a sequence of {NUM_STAGES} values, one per stage. "
                f"Received: {key}={value!r}"
            )
        if len(value) != NUM_STAGES:
            raise ValueError(
                f"Expected `{key}` to have {NUM_STAGES} values, one per stage. "
                f"Received: {key}={tuple(value)!r}"
            )
        if key == "mlp_ratios":
            value = tuple(check_float(key, v, 0.0, None, inclusive=False) for v in value)
            value = tuple(int(v) if v == int(v) else v for v in value)
        else:
            value = tuple(check_int(key, v, 1) for v in value)
        structure[key] = value
    for width, heads in zip(structure["hidden_sizes"], structure["num_heads"]):
        if width % heads:
            raise ValueError(
                "Expected each of `hidden_sizes` to be a multiple of the stage's `num_heads`. "
                f"Received: hidden_sizes={structure['hidden_sizes']}, "
                f"num_heads={structure['num_heads']}"
            )
    return structure


def variant_of(structure):
    """The name of the variant with exactly `structure` (an `architecture` dict), or None."""
    for name in NAMES:
        if architecture(name) == structure:
            return name
    return None


def minimum_size(structure):
    """The smallest input height (or width) whose every spatial reduction keeps a row.

    Each stage's map has `floor((h + 2 * (k // 2) - k) / s) + 1` rows and its
    key / value reduction `floor(rows / sr)`, which must be at least 1 (for
    MiT-B0 ... B5: 29 pixels).
    """
    size = 1
    while True:
        rows, fits = size, True
        for k, s, sr in zip(structure["patch_sizes"], structure["strides"], structure["sr_ratios"]):
            rows = (rows + 2 * (k // 2) - k) // s + 1
            if rows < 1 or rows // sr < 1:
                fits = False
                break
        if fits:
            return size
        size += 1


def MixTransformer(
    variant="mit_b0",
    input_shape=None,
    weights=None,
    drop_path_rate=0.1,
    hidden_sizes=None,
    depths=None,
    num_heads=None,
    sr_ratios=None,
    mlp_ratios=None,
    patch_sizes=None,
    strides=None,
    epsilon=LAYER_NORM_EPSILON,
    output_stride=None,
    bn_momentum=None,
    name=None,
):
    """The Mix Transformer encoder of SegFormer (MiT-B0 ... B5), a dict of four stage features.

    Xie et al., "SegFormer: Simple and Efficient Design for Semantic
    Segmentation with Transformers" (NeurIPS 2021), section 3.1 and Table 6,
    in the layout of Hugging Face's `SegformerModel` (`transformers`
    `models/segformer/modeling_segformer.py`), whose checkpoints load into it.
    Four stages; stage `i` is an overlapping patch embedding
    (`kseg.layers.OverlapPatchEmbedding`: a `patch_sizes[i]` convolution of
    stride `strides[i]`, padding `patch_sizes[i] // 2`, then LayerNorm) to
    `hidden_sizes[i]` channels, `depths[i]` transformer blocks, and a
    LayerNorm. A block is pre-norm:

        x = x + DropPath(EfficientSelfAttention(LayerNorm(x)))
        x = x + DropPath(MixFFN(LayerNorm(x)))

    with `num_heads[i]` heads, keys and values reduced by `sr_ratios[i]`
    (`kseg.layers.EfficientSelfAttention`), and a Mix-FFN of expansion
    `mlp_ratios[i]` (`kseg.layers.MixFFN`: linear, 3x3 depthwise conv, exact
    GELU, linear). Stochastic depth grows linearly over the blocks, from 0
    for the first to `drop_path_rate` for the last (`kseg.layers.DropPath`).
    Every LayerNorm has epsilon `epsilon`: 1e-5, as every `nn.LayerNorm` of
    Hugging Face's implementation (mmsegmentation's MiT uses 1e-6). The
    feature maps stay `(B, h, w, C)` throughout: no token sequence is
    flattened outside the attention.
    {table}
    | variant  | hidden_sizes       | depths        | parameters |
    |----------|--------------------|---------------|------------|
    | `mit_b0` | 32, 64, 160, 256   | 2, 2, 2, 2    |  3,319,392 |
    | `mit_b1` | 64, 128, 320, 512  | 2, 2, 2, 2    | 13,151,424 |
    | `mit_b2` | 64, 128, 320, 512  | 3, 4, 6, 3    | 24,196,288 |
    | `mit_b3` | 64, 128, 320, 512  | 3, 4, 18, 3   | 44,072,128 |
    | `mit_b4` | 64, 128, 320, 512  | 3, 8, 27, 3   | 60,842,688 |
    | `mit_b5` | 64, 128, 320, 512  | 3, 6, 40, 3   | 81,443,008 |

    (the parameter counts of `transformers`' `SegformerModel` of each
    structure, which the variants equal).

    All share `num_heads=(1, 2, 5, 8)`, `sr_ratios=(8, 4, 2, 1)`,
    `mlp_ratios=(4, 4, 4, 4)`, `patch_sizes=(7, 3, 3, 3)` and
    `strides=(4, 2, 2, 2)`. Any of these structural arguments given replaces
    the variant's value (a sequence of 4, one per stage), so any Hugging Face
    SegFormer config can be built (`kseg.convert.from_huggingface` does).

    Layer names: `stage{i}_patch_embed`, `stage{i}_block{j}_norm1`,
    `stage{i}_block{j}_attention`, `stage{i}_block{j}_drop_path1`,
    `stage{i}_block{j}_add1`, `stage{i}_block{j}_norm2`,
    `stage{i}_block{j}_mlp`, `stage{i}_block{j}_drop_path2`,
    `stage{i}_block{j}_add2`, `stage{i}_norm` (`i`, `j` from 1). Every
    LayerNorm's name (and weight path) contains `norm`: the block's, the
    stage's, the patch embedding's `norm` and the attention's `sr_norm`.

    Args:
        variant: `"mit_b0"` (default) ... `"mit_b5"`, or None when every
            structural argument is given.
        input_shape: `(height, width, channels)`. Defaults to `(None, None,
            3)`; any size from 29 pixels up (each key/value reduction must
            keep a row), any channel count without `weights`. Channels_last
            only.
        weights: None (random initialisation), `"imagenet"` (the ImageNet-1k
            encoder NVIDIA published on the Hugging Face hub,
            `nvidia/mit-b0` ... `nvidia/mit-b5`, downloaded on first use with
            `huggingface_hub`: `pip install kseg[huggingface]`; named
            variants only), the path of a Hugging Face folder (`config.json`
            and `model.safetensors` or `pytorch_model.bin`, as
            `save_pretrained` and `hf download` write) or of a weights file
            (`.safetensors`, or a torch file read with torch), or a state
            dict. The checkpoint may be a `SegformerModel`, a
            `SegformerForImageClassification` (its `classifier.*` is
            skipped) or a `SegformerForSemanticSegmentation` (its
            `decode_head.*` is skipped), in the file layout or in the layout
            `transformers` 5 keeps in memory. Loading is strict: every
            missing, unexpected or misshapen key is listed in one error and
            nothing is loaded; a folder's `config.json` must describe this
            structure. The weights expect "torch" preprocessing.
        drop_path_rate: stochastic depth of the last block. Defaults to 0.1
            (SegFormer's training setting).
        hidden_sizes, depths, num_heads, sr_ratios, mlp_ratios, patch_sizes,
            strides: None (the variant's) or 4 values each, see above.
        epsilon: the epsilon of every LayerNorm. Defaults to 1e-5.
        output_stride: None or the output stride the caller expects, which
            must be the encoder's (32 for every variant): a model that asks
            for 8 or 16 (a dilated DeepLab or PSPNet) is refused, as the Mix
            Transformer has no dilated form.
        bn_momentum: accepted and unused (the encoder has no BatchNorm), so
            that every builder can pass its own.
        name: model name. Defaults to the variant's name, or
            `"mix_transformer"` for a structure of no variant.

    Returns:
        A `keras.Model` from the image to the dict above; its attribute
        `feature_info` (also `kseg.backbones.feature_info(model)`) is a
        `BackboneInfo` of family `"mit"`, variant the variant's name (or
        `"custom"`), and preprocessing `"torch"` (Hugging Face's
        `SegformerImageProcessor`: RGB rescaled to [0, 1], then ImageNet mean
        and std).

    Example:

    >>> backbone = kseg.backbones.MixTransformer("mit_b0")
    >>> features = backbone(np.zeros((1, 97, 131, 3)))
    >>> tuple(features["stage1"].shape), tuple(features["stage4"].shape)
    ((1, 25, 33, 32), (1, 4, 5, 256))
    """
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "MixTransformer is built channels_last; call "
            "`keras.config.set_image_data_format('channels_last')` first. Received: "
            f"image_data_format={keras.config.image_data_format()!r}"
        )
    overrides = {
        "hidden_sizes": hidden_sizes,
        "depths": depths,
        "num_heads": num_heads,
        "sr_ratios": sr_ratios,
        "mlp_ratios": mlp_ratios,
        "patch_sizes": patch_sizes,
        "strides": strides,
    }
    structure = architecture(variant, **overrides)
    named = variant_of(structure) if variant is None else variant
    if named is not None and architecture(named) != structure:
        named = None
    drop_path_rate = check_float("drop_path_rate", drop_path_rate, 0.0, 1.0)
    if drop_path_rate >= 1.0:
        raise ValueError(
            f"Expected `drop_path_rate` in [0, 1). Received: drop_path_rate={drop_path_rate}"
        )
    epsilon = check_float("epsilon", epsilon, 0.0, None, inclusive=False)
    if bn_momentum is not None:
        check_float("bn_momentum", bn_momentum, 0.0, 1.0)
    true_strides = tuple(math.prod(structure["strides"][: i + 1]) for i in range(NUM_STAGES))
    label = named or "the custom Mix Transformer"
    if output_stride is not None and output_stride != true_strides[-1]:
        raise ValueError(
            f"The Mix Transformer ({label}) has no dilated form: its features have true "
            f"strides {true_strides}, so its output stride is {true_strides[-1]}. Expected "
            f"`output_stride` to be {true_strides[-1]} (or None). Received: "
            f"output_stride={output_stride!r}"
        )
    if input_shape is None:
        input_shape = (None, None, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            f"Expected `input_shape` to be (height, width, channels). Received: "
            f"input_shape={input_shape!r}"
        )
    smallest = minimum_size(structure)
    for size in input_shape[:2]:
        if size is not None and size < smallest:
            raise ValueError(
                f"Expected an input of at least {smallest}x{smallest} pixels for {label}: each "
                "stage's key/value reduction (`sr_ratios`) needs a row. Received: "
                f"input_shape={input_shape!r}"
            )
    weights = _check_weights(weights, named, structure, input_shape)
    if weights is not None:
        # kseg.convert imports the backbones, so not at this module's import. The
        # checkpoint is read (and its config checked) before anything is built.
        from kseg.convert import huggingface

        state, source = huggingface.mix_transformer_state(weights, structure, named)

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    outputs, specs = {}, []
    total = sum(structure["depths"])
    block_index = 0
    for stage in range(NUM_STAGES):
        width = structure["hidden_sizes"][stage]
        prefix = f"stage{stage + 1}"
        x = OverlapPatchEmbedding(
            width,
            structure["patch_sizes"][stage],
            structure["strides"][stage],
            epsilon=epsilon,
            name=f"{prefix}_patch_embed",
        )(x)
        for block in range(structure["depths"][stage]):
            # Linear decay rule of the paper's code and of Hugging Face's
            # SegformerModel: block n of N drops with rate * n / (N - 1).
            rate = drop_path_rate * block_index / max(total - 1, 1)
            block_index += 1
            x = _block(
                x,
                f"{prefix}_block{block + 1}",
                width,
                structure["num_heads"][stage],
                structure["sr_ratios"][stage],
                structure["mlp_ratios"][stage],
                rate,
                epsilon,
            )
        x = keras.layers.LayerNormalization(epsilon=epsilon, name=f"{prefix}_norm")(x)
        key = f"stage{stage + 1}"
        outputs[key] = x
        specs.append(FeatureSpec(key, f"{prefix}_norm", width, true_strides[stage]))

    model = keras.Model(inputs, outputs, name=name or named or "mix_transformer")
    if weights is not None:
        huggingface.load_mix_transformer(model, state, source)
    info = BackboneInfo(
        family="mit",
        variant=named or "custom",
        output_stride=true_strides[-1],
        features=tuple(specs),
        low_level="stage1",
        aux="stage3",
        high_level="stage4",
        preprocessing="torch",
    )
    return as_backbone(model, info)


def _block(x, prefix, width, heads, sr_ratio, mlp_ratio, drop_path, epsilon):
    """One pre-norm transformer block of the Mix Transformer (see `MixTransformer`)."""
    y = keras.layers.LayerNormalization(epsilon=epsilon, name=f"{prefix}_norm1")(x)
    y = EfficientSelfAttention(width, heads, sr_ratio, epsilon=epsilon, name=f"{prefix}_attention")(
        y
    )
    y = DropPath(drop_path, name=f"{prefix}_drop_path1")(y)
    x = keras.layers.Add(name=f"{prefix}_add1")([x, y])
    y = keras.layers.LayerNormalization(epsilon=epsilon, name=f"{prefix}_norm2")(x)
    y = MixFFN(width, mlp_ratio, name=f"{prefix}_mlp")(y)
    y = DropPath(drop_path, name=f"{prefix}_drop_path2")(y)
    return keras.layers.Add(name=f"{prefix}_add2")([x, y])


def _check_weights(weights, named, structure, input_shape):
    if weights is None or isinstance(weights, collections.abc.Mapping):
        checked = weights
    elif isinstance(weights, str) and weights == "imagenet":
        if named is None:
            raise ValueError(
                "`weights='imagenet'` exists for the variants mit_b0 ... mit_b5 only; this "
                "structure is none of them. Pass the path of a checkpoint of this structure, "
                f"or None. Received: weights={weights!r}"
            )
        checked = weights
    elif isinstance(weights, (str, os.PathLike)) and os.path.exists(weights):
        checked = os.fspath(weights)
    else:
        raise ValueError(
            "Expected `weights` to be None, 'imagenet', the path of a Hugging Face folder "
            "(config.json and model.safetensors or pytorch_model.bin) or of a weights file, "
            f"or a state dict; no such file or folder. Received: weights={weights!r}"
        )
    if checked is not None and input_shape[-1] != 3:
        raise ValueError(
            "Pretrained `weights` need 3 input channels (RGB): build the backbone for 3 "
            "channels and adapt it with `kseg.backbones.with_input_channels` (the builders "
            f"do so for a backbone name). Received: input_shape={tuple(input_shape)}"
        )
    return checked


if MixTransformer.__doc__:  # None under `python -OO`
    MixTransformer.__doc__ = MixTransformer.__doc__.replace("    {table}\n", _TABLE)
