"""Linknet: its blocks, which features it adds, its map alignment at any size, and its errors.

Its logits are compared with segmentation_models.pytorch's Linknet in
tests/convert/test_smp.py.
"""

import math

import keras
import numpy as np
import pytest

import kseg
from kseg.backbones import feature_info
from tests.helpers import batch_norms, infer

# The tiny ResNet's features added at strides 16, 8, 4 and 2, then none.
SKIPS = ("stage3", "stage2", "stage1", "stem", None)


def _tiny(input_shape=(None, None, 3), output_stride=32):
    return kseg.backbones.ResNet(
        (1, 1, 1, 1), width=4, input_shape=input_shape, output_stride=output_stride
    )


def test_linknet_by_name_gives_float32_logits_at_an_odd_size_and_reloads(tmp_path):
    model = kseg.models.Linknet(3, backbone="resnet18", bn_momentum=0.8)
    assert model.name == "linknet" and model.builder == "Linknet"
    assert {layer.momentum for layer in batch_norms(model)} == {0.8}  # backbone and decoder
    assert len(batch_norms(model)) == len(batch_norms(model.get_layer("resnet18"))) + 15
    assert model.get_layer("normalize").mode == "torch"  # "auto": torchvision's ResNet-18
    # Compiled inference, not run_model_test's eager calls: on JAX an eager call compiles
    # each layer on its own; the layers' training is tested with them.
    x = np.random.default_rng(0).uniform(0, 255, (1, 65, 97, 3)).astype("float32")
    logits = infer(model, x)
    assert logits.shape == (1, 65, 97, 3) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(infer(reloaded, x), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_blocks_add_the_stride_16_8_4_2_features(batch_norm):
    h, w = 65, 97
    backbone = _tiny((h, w, 3))
    info = feature_info(backbone)
    model = kseg.models.Linknet(
        2, backbone=backbone, input_shape=(h, w, 3), final_filters=8, batch_norm=batch_norm
    )
    expected, channels = 0, info.channels("stage4")
    for i, key in enumerate(SKIPS, start=1):
        stride = 2 ** (5 - i)
        out = 8 if key is None else info.channels(key)
        inner = channels // 4
        if key is None:
            with pytest.raises(ValueError):
                model.get_layer(f"decoder_block{i}_add")
        else:
            skip = model.get_layer(f"decoder_block{i}_add").input[1]
            assert skip._keras_history.operation is backbone
            assert tuple(skip.shape[1:]) == (math.ceil(h / stride), math.ceil(w / stride), out)
        # 1x1 reduce, 4x4 transposed conv (with bias), 1x1 expand; BN (4 per channel) after
        # each, or a bias on the 1x1 convolutions without it.
        per_channel = 4 if batch_norm else 1
        expected += channels * inner + per_channel * inner
        expected += 16 * inner * inner + inner + (4 * inner if batch_norm else 0)
        expected += inner * out + per_channel * out
        channels = out
    expected += channels * 2 + 2  # the 1x1 classifier
    assert model.count_params() == backbone.count_params() + expected
    assert tuple(model.output.shape[1:]) == (h, w, 2)


def test_the_doubled_map_is_cropped_to_the_feature():
    # Stage 4 of a 65x97 image is 3x4, stage 3 5x7: the transposed conv gives 6x8, and the
    # nearest resize to 5x7 drops its last row and column.
    h, w = 65, 97
    model = kseg.models.Linknet(2, backbone=_tiny((h, w, 3)), input_shape=(h, w, 3))
    names = ("decoder_block1_upsample_relu", "decoder_block1_resize")
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    x = np.random.default_rng(0).uniform(0, 255, (1, h, w, 3)).astype("float32")
    doubled, resized = infer(probe, x)
    assert doubled.shape[1:3] == (6, 8)
    np.testing.assert_array_equal(resized, doubled[:, :5, :7])


def test_linknet_errors():
    with pytest.raises(ValueError, match=r"output_stride=32.*output stride 16"):
        kseg.models.Linknet(2, backbone=_tiny(output_stride=16))
    with pytest.raises(ValueError, match=r"final_filters=0"):
        kseg.models.Linknet(2, backbone=_tiny(), final_filters=0)
