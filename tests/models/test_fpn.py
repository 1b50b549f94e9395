"""FPN: which features it reads, its map alignment at any size, reload, and its errors.

Its logits are compared with segmentation_models.pytorch's FPN (add and cat) in
tests/convert/test_smp.py.
"""

import math

import keras
import numpy as np
import pytest

import kseg
from tests.helpers import batch_norms, infer


def _tiny(input_shape=(None, None, 3), output_stride=32):
    return kseg.backbones.ResNet(
        (1, 1, 1, 1), width=4, input_shape=input_shape, output_stride=output_stride
    )


def _fpn(backbone=None, **kwargs):
    kwargs = {"pyramid_filters": 16, "segmentation_filters": 32, **kwargs}
    return kseg.models.FPN(3, backbone=_tiny() if backbone is None else backbone, **kwargs)


def test_fpn_by_name_gives_float32_logits_at_an_odd_size_and_reloads(tmp_path):
    model = kseg.models.FPN(
        3, backbone="resnet18", pyramid_filters=16, segmentation_filters=32, bn_momentum=0.8
    )
    assert model.name == "fpn" and model.builder == "FPN"
    assert {layer.momentum for layer in batch_norms(model)} == {0.8}  # the backbone's
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


def test_pyramid_reads_the_stride_4_to_32_features_and_ends_at_stride_4():
    h, w = 65, 97
    backbone = _tiny((h, w, 3))
    model = _fpn(backbone, input_shape=(h, w, 3), merge_policy="cat")
    for level, (key, stride) in {5: ("stage4", 32), 4: ("stage3", 16), 3: ("stage2", 8)}.items():
        lateral = model.get_layer(f"lateral{level}")
        assert lateral.input._keras_history.operation is backbone
        size = (math.ceil(h / stride), math.ceil(w / stride))
        assert tuple(lateral.input.shape[1:]) == (
            *size,
            kseg.backbones.feature_info(backbone).channels(key),
        )
    p2 = model.get_layer("topdown2_add").output
    assert tuple(p2.shape[1:]) == (math.ceil(h / 4), math.ceil(w / 4), 16)
    # Level k has max(k - 2, 1) blocks; every chain ends at P2's size.
    for level, blocks in {5: 3, 4: 2, 3: 1, 2: 1}.items():
        model.get_layer(f"segmentation{level}_conv{blocks}")
        with pytest.raises(ValueError):
            model.get_layer(f"segmentation{level}_conv{blocks + 1}")
    assert tuple(model.get_layer("merge").output.shape[1:]) == (*p2.shape[1:3], 4 * 32)
    assert tuple(model.output.shape[1:]) == (h, w, 3)


def test_top_down_upsampling_doubles_and_drops_the_extra_row():
    # P5 of a 65x97 image is 3x4, P4 5x7: nearest x2 (6x8) without its last row and column.
    h, w = 65, 97
    model = _fpn(_tiny((h, w, 3)), input_shape=(h, w, 3))
    probe = keras.Model(
        model.input,
        [model.get_layer("lateral5").output, model.get_layer("topdown4_upsample").output],
    )
    x = np.random.default_rng(0).uniform(0, 255, (1, h, w, 3)).astype("float32")
    p5, up = infer(probe, x)
    doubled = np.repeat(np.repeat(p5, 2, axis=1), 2, axis=2)
    np.testing.assert_array_equal(up, doubled[:, :5, :7])


def test_fpn_errors():
    with pytest.raises(ValueError, match=r"multiple of 32.*segmentation_filters=48"):
        _fpn(segmentation_filters=48)
    with pytest.raises(ValueError, match=r"merge_policy='mean'"):
        _fpn(merge_policy="mean")
    with pytest.raises(ValueError, match=r"dropout=1.0"):
        _fpn(dropout=1.0)
    with pytest.raises(ValueError, match=r"output_stride=32.*output stride 16"):
        _fpn(_tiny(output_stride=16))
