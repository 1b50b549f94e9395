"""UPerNet against segmentation_models.pytorch's `UPerNet` and transformers' `UperNetHead`.

smp's model (random weights) checks the layout its options give: written with
`save_pretrained` and read by `kseg.convert.from_smp` (the full-size cases:
built and copied with `kseg.convert._smp_decoders`' functions directly). transformers' UperNet
head and FCN auxiliary head, which follow mmsegmentation's `UPerHead`, check
the default layout on the features of a small kseg backbone.
"""

import numpy as np
import pytest

import kseg
from kseg.convert import _smp_decoders
from kseg.convert.state_dict import StrictCopy, read_state_dict
from kseg.models.upernet import pyramid_features
from tests.helpers import infer, to_numpy
from tests.torch_refs import (
    assert_matches,
    import_reference,
    nhwc,
    random_images,
    randomize_batchnorm,
    reference_logits,
)


def _smp_upernet(encoder, **kwargs):
    """smp's UPerNet with random weights, BN statistics and LayerNorm terms."""
    import torch

    smp = import_reference("segmentation_models_pytorch")
    torch.manual_seed(0)
    model = smp.UPerNet(encoder, encoder_weights=None, classes=3, **kwargs)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for norm in model.decoder.feature_norms:  # torch initialises them to 1 and 0
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=generator) + 0.5)
            norm.bias.copy_(torch.rand(norm.bias.shape, generator=generator) * 0.2 - 0.1)
    return randomize_batchnorm(model)


@pytest.fixture(scope="module")
def reference():
    """smp's UPerNet on ResNet-18, 32 wide, built once."""
    return _smp_upernet("resnet18", decoder_channels=32)


def _convert(reference):
    """The kseg model of an smp UPerNet's config, holding its weights."""
    model = _smp_decoders.build_from_config(reference.config, "UPerNet")
    copy = StrictCopy(read_state_dict(reference.state_dict()), "smp UPerNet")
    _smp_decoders.copy_encoder(copy, model)
    _smp_decoders.copy_upernet(copy, model, head="segmentation_head.0")
    return copy.finish(model)


@pytest.fixture(scope="module")
def model(reference, tmp_path_factory):
    """The reference's `save_pretrained` folder through `from_smp` (`resnet18` by name)."""
    folder = tmp_path_factory.mktemp("smp_upernet")
    reference.save_pretrained(str(folder))
    return kseg.convert.from_smp(folder)


def test_logits_equal_smp(reference, model):
    x = random_images(64, 96, batch=2)
    expected = reference_logits(reference, x)
    got = infer(model, x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.large
@pytest.mark.parametrize("encoder", ["resnet34", "resnet50"])
def test_smp_defaults_on_full_size_encoders(encoder):
    # smp's default encoder and decoder width (256); ResNet-50 as v1.5.

    reference = _smp_upernet(encoder)
    x = random_images(64, 96)
    expected = reference_logits(reference, x)
    # The full-width decoder's logits reach ~10^2 (UNet++): 1e-4 of their scale.
    assert_matches(infer(_convert(reference), x), expected)


def test_smp_layout_by_name_at_an_odd_size(model):
    arguments = model.arguments
    assert arguments["backbone"] == "resnet18"
    smp_options = {"decoder_filters": 32, "feature_norm": True, "dropout": 0.0}
    assert {k: arguments[k] for k in smp_options} == smp_options
    assert arguments["logits_align_corners"] is True and arguments["align_corners"] is False
    logits = infer(model, random_images(45, 61))
    assert logits.shape == (1, 45, 61, 3) and np.all(np.isfinite(logits))


def _tiny_resnet():
    # Stage widths 16, 32, 64, 128 at strides 4 ... 32.
    return kseg.backbones.ResNet((1, 1, 1, 1), width=4)


def _transformers_heads(channels, hidden, num_classes):
    """transformers' UperNetHead and UperNetFCNHead (random weights and BN statistics)."""
    import torch

    upernet = import_reference("transformers.models.upernet.modeling_upernet")
    config = upernet.UperNetConfig(
        hidden_size=hidden, num_labels=num_classes, pool_scales=[1, 2, 3, 6]
    )
    torch.manual_seed(2)
    head = upernet.UperNetHead(config, in_channels=list(channels))
    aux = upernet.UperNetFCNHead(config, in_channels=list(channels))
    return randomize_batchnorm(head), randomize_batchnorm(aux)


def _copy_transformers(copy, model):
    """transformers' UperNet keys (`head.*`, `aux.*`) for a kseg UPerNet with an aux head."""

    def conv_module(layer, key):
        copy.conv(layer.conv, f"{key}.conv")
        copy.bn(layer.bn, f"{key}.batch_norm")

    for index, branch in enumerate(model.get_layer("ppm").convs):
        conv_module(branch, f"head.psp_modules.{index}.1")
    conv_module(model.get_layer("ppm_bottleneck"), "head.bottleneck")
    for level in (1, 2, 3):
        conv_module(model.get_layer(f"lateral{level}"), f"head.lateral_convs.{level - 1}")
        conv_module(model.get_layer(f"fpn_conv{level}"), f"head.fpn_convs.{level - 1}")
    conv_module(model.get_layer("fpn_bottleneck"), "head.fpn_bottleneck")
    copy.conv(model.get_layer("classifier"), "head.classifier")
    conv_module(model.get_layer("aux_conv"), "aux.convs.0")
    copy.conv(model.get_layer("aux_classifier"), "aux.classifier")


def test_default_layout_with_aux_head_equals_transformers_upernet(tmp_path):
    """The default (mmseg) layout, 512 wide in the paper, 16 here: no feature norm,
    dropout (inactive here), logits resized with align_corners=False; the auxiliary FCN
    head on stage 3 (stride 16), as mmseg's configs. At an odd size, which transformers
    takes; then through a `.keras` file."""
    import keras
    import torch

    backbone = _tiny_resnet()
    model = kseg.models.UPerNet(3, backbone=backbone, decoder_filters=16, aux_head=True)
    assert sorted(model.output) == ["aux", "main"]
    assert model.get_layer("aux_conv").input.shape[-1] == 64  # stage 3
    info = kseg.backbones.feature_info(backbone)
    keys = pyramid_features(info)
    assert keys == ("stage1", "stage2", "stage3", "stage4")
    head, aux = _transformers_heads([info.channels(k) for k in keys], 16, 3)
    state = {f"head.{k}": v for k, v in head.state_dict().items()}
    state.update({f"aux.{k}": v for k, v in aux.state_dict().items()})
    copy = StrictCopy(read_state_dict(state), "transformers UperNet heads")
    _copy_transformers(copy, model)
    copy.keep(backbone)
    copy.finish(model)

    h, w = 45, 61
    x = random_images(h, w, batch=2)
    feats = to_numpy(backbone(model.get_layer("normalize")(x)))
    features = [torch.from_numpy(feats[k].transpose(0, 3, 1, 2)) for k in keys]
    expected = {}
    with torch.no_grad():
        for name, module in (("main", head), ("aux", aux)):
            logits = module(features)
            logits = torch.nn.functional.interpolate(
                logits, size=(h, w), mode="bilinear", align_corners=False
            )
            expected[name] = nhwc(logits)
    got = infer(model, x)
    for name in ("main", "aux"):
        assert got[name].shape == (2, h, w, 3) and got[name].dtype == np.float32
        assert_matches(got[name], expected[name])

    path = str(tmp_path / "upernet.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    again = infer(reloaded, x)
    for name in ("main", "aux"):
        np.testing.assert_allclose(again[name], got[name], rtol=1e-5, atol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="strides 4, 8, 16 and 32"):
        kseg.models.UPerNet(
            2, backbone=kseg.backbones.ResNet((1, 1, 1, 1), width=4, output_stride=16)
        )
    with pytest.raises(ValueError, match="decoder_filters"):
        kseg.models.UPerNet(2, backbone=_tiny_resnet(), decoder_filters=0)
    with pytest.raises(ValueError, match="upsampling"):
        _smp_decoders.build_from_config(
            {"encoder_name": "resnet18", "classes": 2, "upsampling": 8}, "UPerNet"
        )
    with pytest.raises(ValueError, match="arch='Linknet'"):
        _smp_decoders.build_from_config({"encoder_name": "resnet18", "classes": 2}, "Linknet")
