import numpy as np
import pytest

import kseg
from tests.helpers import run_model_test, to_numpy

# Parameter counts of the reference FCN layouts (SPEC 4.6 / 5; voc-fcn*s with K = 21).
# FCN-16s: FCN-32s' trunk and score_fr (134,346,581) + score_pool4 (10,773)
#   + upscore2 4x4x21x21 (7,056) + upscore16 32x32x21x21 (451,584).
EXPECTED = {"FCN8s": 134_489_759, "FCN16s": 134_815_994, "FCN32s": 136_152_917}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count_matches_reference(name):
    model = getattr(kseg.models, name)(num_classes=21)
    assert model.count_params() == EXPECTED[name]


def test_logits_at_input_size_and_round_trip():
    model = kseg.models.FCN8s(num_classes=3, fc_filters=16)
    run_model_test(model, (1, 37, 45, 3), 3)


def _bilinear_kernel(size):
    # FCN's get_upsampling_weight (SPEC 4.6), one 2-D filter.
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.arange(size)
    filt = 1 - np.abs(og - center) / factor
    return filt[:, None] * filt[None, :]


def test_transposed_convs_start_bilinear_on_the_diagonal():
    model = kseg.models.FCN8s(num_classes=3, fc_filters=8)
    for name, size in (("upscore_pool4_in", 4), ("upscore_pool3_in", 4), ("upscore8", 16)):
        layer = model.get_layer(name)
        assert layer.strides == (size // 2, size // 2) and not layer.use_bias
        kernel = to_numpy(layer.kernel)  # (kh, kw, out, in)
        expected = np.zeros((size, size, 3, 3), "float32")
        for c in range(3):
            expected[:, :, c, c] = _bilinear_kernel(size)
        np.testing.assert_allclose(kernel, expected, atol=1e-7)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        assert not np.any(to_numpy(model.get_layer(name).kernel))


def test_wrong_backbone_variant_is_rejected():
    backbone = kseg.backbones.VGG16(variant="classic")
    with pytest.raises(ValueError, match="variant 'fcn'"):
        kseg.models.FCN8s(num_classes=2, backbone=backbone)
