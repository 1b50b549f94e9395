import pytest

import kseg
from tests.helpers import run_model_test
from tests.models.conftest import tiny_resnet


def test_pspnet_tiny_with_aux():
    model = kseg.models.PSPNet(
        num_classes=3, backbone=tiny_resnet(8), fusion_filters=8, aux_head=True
    )
    ppm = model.get_layer("ppm")
    assert tuple(ppm.bins) == (1, 2, 3, 6)
    # PPM output: 128 backbone channels + 4 branches of 128 / 4.
    assert model.get_layer("fusion").input.shape[-1] == 256
    out = run_model_test(model, (1, 37, 45, 3), 3)
    assert set(out) == {"main", "aux"}


def test_pspnet_smp_layout_cuts_the_backbone_and_round_trips():
    # segmentation_models.pytorch's PSPNet: the pyramid on stage 2 (stride 8), the bin-1
    # branch without BN, the pyramid before the feature, a 1x1 fusion, a 3x3 classifier.
    model = kseg.models.PSPNet(
        num_classes=3,
        backbone=tiny_resnet(8),
        fusion_filters=8,
        feature="stage2",
        global_bn=False,
        pyramid_first=True,
        fusion_kernel_size=1,
        classifier_kernel_size=3,
        align_corners=True,
    )
    backbone = next(la for la in model.layers if isinstance(la, kseg.backbones.Backbone))
    info = kseg.backbones.feature_info(backbone)
    assert info.keys() == ("stem", "stage1", "stage2") and info.high_level == "stage2"
    assert info.aux is None and info.output_stride == 8
    names = {la.name for la in backbone.layers}
    assert "conv3_block1_out" in names and not any(n.startswith("conv4_") for n in names)
    ppm = model.get_layer("ppm")
    assert ppm.input_position == "last" and ppm.convs[0].bn is None
    # stage 2 of the tiny ResNet: 32 channels, + 4 branches of 8.
    assert model.get_layer("fusion").input.shape[-1] == 64
    assert model.get_layer("fusion").kernel_size == (1, 1)
    assert model.get_layer("classifier").kernel_size == (3, 3)
    args = model.arguments
    assert (args["feature"], args["global_bn"], args["pyramid_first"]) == ("stage2", False, True)
    assert (args["fusion_kernel_size"], args["classifier_kernel_size"]) == (1, 3)
    run_model_test(model, (1, 37, 45, 3), 3)


def test_pspnet_without_batch_norm():
    model = kseg.models.PSPNet(
        num_classes=2, backbone=tiny_resnet(8), fusion_filters=4, batch_norm=False
    )
    fusion = model.get_layer("fusion")
    assert fusion.bn is None and fusion.conv.use_bias
    assert all(c.bn is None for c in model.get_layer("ppm").convs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"feature": "stage5"}, r"`feature`.*Received: feature='stage5'"),
        ({"feature": "stage2", "aux_head": True}, r"'aux' feature"),
        ({"batch_norm": 1}, r"Received: batch_norm=1"),
        ({"global_bn": "no"}, r"Received: global_bn='no'"),
        ({"pyramid_first": None}, r"Received: pyramid_first=None"),
        ({"fusion_kernel_size": 0}, r"Received: fusion_kernel_size=0"),
        ({"classifier_kernel_size": 0}, r"Received: classifier_kernel_size=0"),
    ],
)
def test_pspnet_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kseg.models.PSPNet(num_classes=2, backbone=tiny_resnet(8), fusion_filters=4, **kwargs)
