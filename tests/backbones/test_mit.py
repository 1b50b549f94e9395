"""The Mix Transformer encoder: its variants, feature sizes, names, refusals and uses.

Its numbers against `transformers` (every feature map of a random checkpoint) are
tested in tests/convert/test_huggingface.py.
"""

import keras
import numpy as np
import pytest

import kseg
from kseg.backbones import feature_info, mit
from tests.helpers import infer

# Small and with distinct widths, heads and depths per stage.
TINY = dict(hidden_sizes=(8, 16, 24, 32), depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4))

# Xie et al., "SegFormer" (NeurIPS 2021), appendix Table 6: widths C_i and depths L_i.
PAPER = {
    "mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "mit_b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}
# transformers 5.25's SegformerModel of each variant, parameters counted there.
TRANSFORMERS_PARAMETERS = {
    "mit_b0": 3_319_392,
    "mit_b1": 13_151_424,
    "mit_b2": 24_196_288,
    "mit_b3": 44_072_128,
    "mit_b4": 60_842_688,
    "mit_b5": 81_443_008,
}

_MODELS = {}


def _tiny(**kwargs):
    """One tiny encoder per argument set, shared by the tests."""
    key = tuple(sorted(kwargs.items()))
    if key not in _MODELS:
        _MODELS[key] = kseg.backbones.MixTransformer(**TINY, **kwargs)
    return _MODELS[key]


def _rows(h, kernels=(7, 3, 3, 3), strides=(4, 2, 2, 2)):
    """torch's conv arithmetic with padding k // 2: floor((h + 2p - k) / s) + 1, per stage."""
    out = []
    for k, s in zip(kernels, strides):
        h = (h + 2 * (k // 2) - k) // s + 1
        out.append(h)
    return out


def test_the_variants_are_the_papers():
    for name, (widths, depths) in PAPER.items():
        structure = mit.architecture(name)
        assert structure["hidden_sizes"] == widths and structure["depths"] == depths
        assert structure["num_heads"] == (1, 2, 5, 8)
        assert structure["sr_ratios"] == (8, 4, 2, 1)
        assert structure["mlp_ratios"] == (4, 4, 4, 4)
        assert structure["patch_sizes"] == (7, 3, 3, 3)
        assert structure["strides"] == (4, 2, 2, 2)
        assert mit.variant_of(structure) == name
    assert kseg.backbones.registry.MIT.keys() == PAPER.keys()
    assert mit.minimum_size(mit.architecture("mit_b0")) == 29


def test_features_sizes_channels_strides_and_roles():
    model = _tiny()
    info = feature_info(model)
    assert (info.family, info.variant, info.output_stride) == ("mit", "custom", 32)
    assert (info.low_level, info.aux, info.high_level) == ("stage1", "stage3", "stage4")
    assert info.preprocessing == "torch"
    assert info.keys() == ("stage1", "stage2", "stage3", "stage4")
    assert [s.stride for s in info.features] == [4, 8, 16, 32]
    assert [s.channels for s in info.features] == list(TINY["hidden_sizes"])
    assert model.name == "mix_transformer"
    images = np.random.default_rng(0).standard_normal((2, 33, 47, 3)).astype("float32")
    features = infer(model, images)
    for index, (h, w) in enumerate(zip(_rows(33), _rows(47)), start=1):
        assert features[f"stage{index}"].shape == (2, h, w, TINY["hidden_sizes"][index - 1])
        assert np.all(np.isfinite(features[f"stage{index}"]))


def test_every_layer_norm_is_named_norm_and_drop_path_grows_linearly():
    model = _tiny(drop_path_rate=0.3)
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    norms = [layer for layer in layers if isinstance(layer, keras.layers.LayerNormalization)]
    # Per stage: the patch embedding's, the stage's, and per block two (plus the
    # key/value reduction's where sr_ratio > 1: stages 1-3).
    blocks = sum(TINY["depths"])
    assert len(norms) == 4 + 4 + 2 * blocks + sum(TINY["depths"][:3])
    assert all("norm" in layer.name for layer in norms)
    paths = [w.path for layer in norms for w in layer.weights]
    assert paths and all("norm" in path for path in paths)
    assert all(layer.epsilon == 1e-5 for layer in norms)
    rates = [layer.rate for layer in layers if isinstance(layer, kseg.layers.DropPath)]
    expected = [0.3 * i / (blocks - 1) for i in range(blocks) for _ in (1, 2)]
    np.testing.assert_allclose(rates, expected)


def test_refusals_name_what_to_do():
    with pytest.raises(ValueError, match=r"true strides \(4, 8, 16, 32\).*output_stride=8"):
        kseg.backbones.MixTransformer("mit_b0", output_stride=8)
    with pytest.raises(ValueError, match="at least 29x29"):
        kseg.backbones.MixTransformer("mit_b0", input_shape=(28, 64, 3))
    with pytest.raises(ValueError, match="mit_b0 ... mit_b5 only"):
        kseg.backbones.MixTransformer(weights="imagenet", **TINY)
    with pytest.raises(ValueError, match="no such file or folder"):
        kseg.backbones.MixTransformer(weights="/no/such/checkpoint", **TINY)
    with pytest.raises(ValueError, match="multiple of the stage's `num_heads`"):
        kseg.backbones.MixTransformer(hidden_sizes=(8, 16, 24, 30), num_heads=(1, 2, 2, 4))
    with pytest.raises(ValueError, match="4 values"):
        kseg.backbones.MixTransformer(depths=(1, 1, 1))
    with pytest.raises(ValueError, match="variant"):
        kseg.backbones.MixTransformer("mit_b9")
    keras.config.set_image_data_format("channels_first")
    with pytest.raises(ValueError, match="channels_last"):
        kseg.backbones.MixTransformer("mit_b0")


def test_dilated_builders_refuse_it_with_its_strides():
    # Refused before anything is built.
    for builder, kwargs in (
        (kseg.models.PSPNet, {}),
        (kseg.models.DeepLabV3, {"output_stride": 16}),
        (kseg.models.DeepLabV3Plus, {"output_stride": 8}),
    ):
        with pytest.raises(ValueError, match=r"no dilated form.*\(4, 8, 16, 32\)"):
            builder(num_classes=3, backbone="mit_b2", **kwargs)


def test_unet_decodes_it_at_output_stride_32():
    backbone = _tiny()
    model = kseg.models.UNet(3, backbone=backbone, decoder_filters=(16, 8, 8, 4, 4))
    # Skips at strides 16, 8 and 4; none at 2 (the encoder has no stride-2 feature).
    assert [layer.name for layer in model.layers if layer.name.endswith("_concat")] == [
        "decoder_block1_concat",
        "decoder_block2_concat",
        "decoder_block3_concat",
    ]
    x = np.random.default_rng(0).uniform(0, 255, (1, 37, 45, 3)).astype("float32")
    logits = infer(model, x)
    assert logits.shape == (1, 37, 45, 3) and np.all(np.isfinite(logits))


def test_pretrained_weights_adapt_to_grey_images():
    # `with_input_channels` sums the patch embedding's RGB kernel: a grey image gives the
    # RGB encoder's features of that image repeated three times.
    rgb = _tiny()
    grey = kseg.backbones.with_input_channels(rgb, 1)
    assert feature_info(grey) == feature_info(rgb)
    x = np.random.default_rng(2).standard_normal((1, 33, 33, 1)).astype("float32")
    got = infer(grey, x)
    expected = infer(rgb, np.repeat(x, 3, axis=-1))
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-4)


@pytest.mark.large
@pytest.mark.parametrize("name", sorted(PAPER))
def test_parameter_counts_equal_transformers(name):
    model = kseg.backbones.MixTransformer(name)
    assert model.name == name and feature_info(model).variant == name
    assert model.count_params() == TRANSFORMERS_PARAMETERS[name]
