"""UNet++ against segmentation_models.pytorch's `UnetPlusPlus` (random weights, copied)."""

import numpy as np
import pytest

import kseg
from kseg.convert import _smp_decoders
from kseg.convert.state_dict import StrictCopy, read_state_dict
from kseg.models.unetplusplus import node_filters
from tests.helpers import infer, to_numpy
from tests.models.conftest import convnext_like
from tests.torch_refs import (
    assert_matches,
    import_reference,
    nhwc,
    random_images,
    randomize_batchnorm,
    reference_logits,
)

FILTERS = (32, 16, 16, 8, 8)


@pytest.fixture(scope="module")
def smp():
    return import_reference("segmentation_models_pytorch")


@pytest.fixture(scope="module")
def reference(smp):
    """smp's UnetPlusPlus on ResNet-18 (random weights, random BN statistics), built once."""
    import torch

    torch.manual_seed(0)
    model = smp.UnetPlusPlus("resnet18", encoder_weights=None, classes=3, decoder_channels=FILTERS)
    return randomize_batchnorm(model)


def _convert(reference):
    """The kseg model of an smp UnetPlusPlus's config, holding its weights."""
    model = _smp_decoders.build_from_config(reference.config, "UnetPlusPlus")
    copy = StrictCopy(read_state_dict(reference.state_dict()), "smp UnetPlusPlus")
    _smp_decoders.copy_encoder(copy, model)
    _smp_decoders.copy_unetplusplus(copy, model, head="segmentation_head.0")
    return copy.finish(model)


@pytest.fixture(scope="module")
def model(reference):
    """The kseg model of the reference (`resnet18` by name)."""
    return _convert(reference)


def test_logits_equal_smp(reference, model):
    x = random_images(64, 96, batch=2)
    expected = reference_logits(reference, x)
    got = infer(model, x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.large
@pytest.mark.parametrize("encoder", ["resnet34", "resnet50"])
def test_smp_defaults_on_full_size_encoders(smp, encoder):
    # smp's default encoder and decoder widths (256, 128, 64, 32, 16); ResNet-50 as v1.5.
    import torch

    torch.manual_seed(0)
    reference = randomize_batchnorm(smp.UnetPlusPlus(encoder, encoder_weights=None, classes=3))
    x = random_images(64, 96)
    expected = reference_logits(reference, x)
    # The full-width decoder's logits reach ~10^2 (UNet++): 1e-4 of their scale.
    assert_matches(infer(_convert(reference), x), expected)


def test_the_layout_of_smp_by_name_at_an_odd_size(model):
    # smp's arithmetic: the inner nodes keep the width of their level's encoder feature
    # (ResNet-18: 64, 64, 128, 256 at strides 2 ... 16), the main path the decoder widths.
    widths = node_filters((64, 64, 128, 256, 512), FILTERS)
    for (i, j), filters in widths.items():
        assert model.get_layer(f"decoder_x{i}_{j}_conv2").filters == filters
    assert model.get_layer("resnet18").feature_info.output_stride == 32
    logits = infer(model, random_images(45, 61))
    assert logits.shape == (1, 45, 61, 3) and np.all(np.isfinite(logits))


def test_a_backbone_without_a_stride_2_feature_as_smp(smp):
    """smp gives such encoders a zero-channel stride-2 feature: the level's inner nodes
    are empty, and its main-path node upsamples without a skip."""
    import torch

    h, w = 64, 96
    backbone = convnext_like(h, w)
    filters = (16, 8, 8, 4, 4)
    model = kseg.models.UNetPlusPlus(
        3, input_shape=(h, w, 3), backbone=backbone, decoder_filters=filters
    )
    for j in (1, 2, 3):
        with pytest.raises(ValueError):
            model.get_layer(f"decoder_x0_{j}_conv1")
    torch.manual_seed(1)
    decoder = smp.decoders.unetplusplus.decoder.UnetPlusPlusDecoder(
        encoder_channels=(3, 0, 6, 10, 12, 14), decoder_channels=filters
    )
    head = smp.base.SegmentationHead(filters[-1], 3, kernel_size=3)
    randomize_batchnorm(decoder)
    state = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    state.update({f"segmentation_head.{k}": v for k, v in head.state_dict().items()})
    copy = StrictCopy(read_state_dict(state), "smp UnetPlusPlusDecoder")
    _smp_decoders.copy_unetplusplus(copy, model, head="segmentation_head.0")
    copy.keep(backbone)
    copy.finish(model)

    x = random_images(h, w, batch=2)
    feats = to_numpy(backbone(model.get_layer("normalize")(x)))
    features = [torch.zeros(2, 3, h, w), torch.zeros(2, 0, h // 2, w // 2)]
    features += [torch.from_numpy(feats[f"level{i}"].transpose(0, 3, 1, 2)) for i in (2, 3, 4, 5)]
    with torch.no_grad():
        expected = nhwc(head.eval()(decoder.eval()(features)))
    assert_matches(infer(model, x), expected)


def test_errors():
    backbone = kseg.backbones.ResNet((1, 1, 1, 1), width=4, output_stride=16)
    with pytest.raises(ValueError, match="output_stride=32"):
        kseg.models.UNetPlusPlus(2, backbone=backbone)
    with pytest.raises(ValueError, match="5 entries"):
        kseg.models.UNetPlusPlus(2, backbone="resnet18", decoder_filters=(8, 8, 8, 8))
    config = {"encoder_name": "resnet18", "classes": 2, "decoder_attention_type": "scse"}
    with pytest.raises(ValueError, match="decoder_attention_type"):
        _smp_decoders.build_from_config(config, "UnetPlusPlus")
    with pytest.raises(ValueError, match="encoder_name='mit_b0'"):
        _smp_decoders.build_from_config({"encoder_name": "mit_b0", "classes": 2}, "UnetPlusPlus")
