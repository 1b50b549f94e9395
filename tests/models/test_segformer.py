"""SegFormer: the builder's layout, names, defaults, saving and training.

Its logits against `transformers`' SegformerForSemanticSegmentation are tested
in tests/convert/test_huggingface.py, mixed precision in
tests/models/test_mixed_precision.py.
"""

import keras
import numpy as np
import pytest

import kseg
from kseg.backbones import feature_info
from kseg.models import registry
from kseg.models.segformer import DECODER_FILTERS
from tests.helpers import compile_for_fit, infer

TINY = dict(hidden_sizes=(8, 16, 24, 32), depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4))
# SegFormer-B0 with the 150 ADE20K classes has 3,752,694 parameters in transformers 5.25
# (SegformerForSemanticSegmentation(SegformerConfig(num_labels=150)), counted there).
B0_ADE20K_PARAMETERS = 3_752_694


def _tiny_segformer(**kwargs):
    backbone = kseg.backbones.MixTransformer(**TINY)
    return kseg.models.SegFormer(num_classes=3, backbone=backbone, decoder_filters=8, **kwargs)


def test_tiny_segformer_trains_saves_and_names_its_layers(tmp_path):
    model = _tiny_segformer()
    assert model.builder == "SegFormer"
    assert model.get_layer("normalize").mode == "torch"
    names = [layer.name for layer in model.layers]
    assert names[:3] == ["image", "normalize", "mix_transformer"]
    head = [n for n in names[3:] if n not in ("classifier", "logits")]
    assert head and all(n.startswith("decode_head") for n in head)
    # Concatenated deepest first, as transformers and mmsegmentation.
    concat = model.get_layer("decode_head_concat")
    sources = [t._keras_history.operation.name for t in concat.input]
    assert sources == [
        "decode_head_resize_c4",
        "decode_head_resize_c3",
        "decode_head_resize_c2",
        "decode_head_linear_c1",
    ]
    fuse = model.get_layer("decode_head_fuse")
    assert not fuse.conv.use_bias and fuse.bn.momentum == 0.9 and fuse.bn.epsilon == 1e-5
    assert isinstance(model.get_layer("decode_head_dropout"), keras.layers.SpatialDropout2D)
    norms = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.LayerNormalization)
    ]
    assert norms and all("norm" in layer.name for layer in norms)

    # As `run_model_test`, with one compiled forward pass on JAX instead of an eager one
    # (which compiles each of the transformer's many operations). 37x65: two keys and
    # values in every stage.
    x = np.random.default_rng(0).uniform(0, 255, (2, 37, 65, 3)).astype("float32")
    logits = infer(model, x)
    assert logits.shape == (2, 37, 65, 3) and logits.dtype == "float32"
    assert np.all(np.isfinite(logits))
    path = tmp_path / "segformer.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert feature_info(reloaded.get_layer("mix_transformer")) == feature_info(
        model.get_layer("mix_transformer")
    )
    assert reloaded.arguments["decoder_filters"] == 8
    np.testing.assert_allclose(infer(reloaded, x), logits, rtol=1e-5, atol=1e-5)

    labels = np.random.default_rng(1).integers(0, 3, (2, 37, 65)).astype("int32")
    compile_for_fit(
        model,
        optimizer=keras.optimizers.SGD(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(x, labels, epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    for weight in model.weights:
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(weight))), weight.path


def test_layer_configs_round_trip():
    model = _tiny_segformer(dropout=0.0)
    assert "decode_head_dropout" not in [layer.name for layer in model.layers]
    for layer in model.get_layer("mix_transformer").layers:
        config = layer.get_config()
        assert type(layer).from_config(config).get_config() == config


def test_decoder_widths_are_the_papers():
    # Xie et al. 2021, section 4.1: C = 256 for MiT-B0 and B1, 768 for B2-B5.
    assert DECODER_FILTERS == {
        "mit_b0": 256,
        "mit_b1": 256,
        **{f"mit_b{i}": 768 for i in range(2, 6)},
    }


@pytest.mark.large
def test_b0_by_name_has_transformers_parameter_count():
    model = kseg.models.SegFormer(num_classes=150)
    assert model.get_layer("decode_head_fuse").conv.filters == 256
    assert model.count_params() - 2 * 256 == B0_ADE20K_PARAMETERS  # BN moving statistics


def test_registry_and_refusals():
    assert registry.MODELS["segformer"].builder is kseg.models.SegFormer
    assert registry.backbone_names("segformer") == tuple(f"mit_b{i}" for i in range(6))
    with pytest.raises(ValueError, match="one of \\('mit_b0'"):
        kseg.models.SegFormer(num_classes=3, backbone="resnet50")
    with pytest.raises(ValueError, match="num_classes"):
        kseg.models.SegFormer(num_classes=0)
