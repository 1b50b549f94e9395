import keras
import numpy as np
import pytest

import kseg
from kseg.models.deeplab import default_atrous_rates
from tests.helpers import run_model_test
from tests.models.conftest import tiny_resnet
from tests.models.vgg16_files import vgg16_file, vgg16_values


def test_deeplab_v1_parameter_count():
    # DeepLab v1 LargeFOV, VGG-16, K = 21 (SPEC 4.5).
    assert kseg.models.DeepLabV1(num_classes=21).count_params() == 20_505_429


def test_deeplab_v1_layout():
    model = kseg.models.DeepLabV1(num_classes=3, fc_filters=8)
    assert model.get_layer("fc6").dilation_rate == (12, 12)
    assert model.get_layer("fc6").kernel.shape == (3, 3, 512, 8)
    run_model_test(model, (1, 37, 45, 3), 3, train=False)


def test_atrous_rates_follow_the_output_stride():
    assert default_atrous_rates(16) == (6, 12, 18)
    assert default_atrous_rates(8) == (12, 24, 36)


def test_deeplab_v2_sums_four_branches():
    model = kseg.models.DeepLabV2(num_classes=3, backbone=tiny_resnet(8))
    aspp = model.get_layer("aspp")
    assert tuple(aspp.atrous_rates) == (6, 12, 18, 24)
    run_model_test(model, (1, 37, 45, 3), 3)


def test_deeplab_v3_with_aux_head():
    model = kseg.models.DeepLabV3(
        num_classes=3, backbone=tiny_resnet(16, multi_grid=(1, 2, 4)), aspp_filters=8, aux_head=True
    )
    assert tuple(model.get_layer("aspp").atrous_rates) == (6, 12, 18)
    out = run_model_test(model, (2, 37, 45, 3), 3)
    assert set(out) == {"main", "aux"}


def test_deeplab_v3plus_tiny():
    model = kseg.models.DeepLabV3Plus(
        num_classes=4,
        backbone=tiny_resnet(8),
        aspp_filters=8,
        low_level_filters=4,
        decoder_filters=8,
        separable=True,
    )
    assert tuple(model.get_layer("aspp").atrous_rates) == (12, 24, 36)
    run_model_test(model, (1, 37, 45, 3), 4)


def test_deeplab_v3plus_smp_layout():
    # segmentation_models.pytorch's decoder: separable convs with nothing between the
    # depthwise and pointwise parts, a separable conv after the ASPP, one fusion conv.
    model = kseg.models.DeepLabV3Plus(
        num_classes=3,
        backbone=tiny_resnet(16),
        aspp_filters=8,
        low_level_filters=4,
        decoder_filters=8,
        separable=False,
        decoder_separable=True,
        separable_inner_bn_act=False,
        aspp_conv=True,
        decoder_convs=1,
        align_corners=True,
    )
    assert not model.get_layer("aspp").branches[1].separable
    conv = model.get_layer("aspp_conv")
    assert conv.separable and conv.depthwise_bn is None and conv.depthwise_act is None
    decoder = model.get_layer("decoder")
    assert decoder.num_convs == 1 and decoder.separable
    assert decoder.fusion_convs[0].depthwise_bn is None
    args = model.arguments
    assert (args["decoder_separable"], args["separable_inner_bn_act"]) == (True, False)
    assert (args["aspp_conv"], args["decoder_convs"]) == (True, 1)
    run_model_test(model, (1, 37, 45, 3), 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"decoder_separable": "yes"}, r"Received: decoder_separable='yes'"),
        ({"separable_inner_bn_act": 0}, r"Received: separable_inner_bn_act=0"),
        ({"aspp_conv": None}, r"Received: aspp_conv=None"),
        ({"decoder_convs": 0}, r"Received: decoder_convs=0"),
    ],
)
def test_deeplab_v3plus_bad_decoder_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kseg.models.DeepLabV3Plus(num_classes=2, backbone=tiny_resnet(16), aspp_filters=4, **kwargs)


def test_deeplab_v3plus_full_size_builds_by_name():
    # The user's first line: the default layout with a ResNet-50 at output stride 16.
    model = kseg.models.DeepLabV3Plus(num_classes=21)
    backbone = model.get_layer("resnet50")
    assert kseg.backbones.feature_info(backbone).output_stride == 16
    assert model.output.shape == (None, None, None, 21)


@pytest.mark.parametrize("output_stride", [16, pytest.param(8, marks=pytest.mark.large)])
def test_deeplab_v3plus_on_the_aligned_xception65_as_the_paper_builds_it(output_stride):
    """Chen et al. 2018: Xception-65, separable ASPP and decoder, the stride-4 low-level feature."""
    model = kseg.models.DeepLabV3Plus(
        num_classes=21, backbone="xception65", separable=True, output_stride=output_stride
    )
    xception = model.get_layer("xception65")
    info = kseg.backbones.feature_info(xception)
    assert (info.output_stride, info.low_level, info.high_level) == (
        output_stride,
        "level2",
        "level5",
    )
    assert model.get_layer("normalize").mode == "tf"
    rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
    assert tuple(model.get_layer("aspp").atrous_rates) == rates
    # 97x131 input: the ASPP reads 2048 channels at the output stride, the decoder the
    # 256-channel feature at stride 4 (ceil sizes), and the logits have the input size.
    features = xception.compute_output_spec(keras.KerasTensor((1, 97, 131, 3)))
    assert tuple(features["level5"].shape) == (
        1,
        -(-97 // output_stride),
        -(-131 // output_stride),
        2048,
    )
    assert tuple(features["level2"].shape) == (1, 25, 33, 256)
    assert model.compute_output_spec(keras.KerasTensor((1, 97, 131, 3))).shape == (1, 97, 131, 21)


def test_bad_backbone_arguments():
    with pytest.raises(ValueError, match="backbone='resnet9'"):
        kseg.models.DeepLabV3Plus(num_classes=2, backbone="resnet9")
    with pytest.raises(TypeError, match="backbone"):
        kseg.models.DeepLabV3(num_classes=2, backbone=3)
    with pytest.raises(ValueError, match="backbone_weights"):
        kseg.models.DeepLabV3(num_classes=2, backbone=tiny_resnet(), backbone_weights="imagenet")
    with pytest.raises(ValueError, match="num_classes"):
        kseg.models.DeepLabV3(num_classes=0)
    vgg = kseg.backbones.VGG16()
    with pytest.raises(ValueError, match="resnet"):
        kseg.models.DeepLabV3(num_classes=2, backbone=vgg)


# DeepLab v1 initialised from VGG-16's classifier (Chen et al., ICLR 2015, section 4.1).


@pytest.fixture(scope="module")
def vgg16_files(tmp_path_factory):
    return {
        "top": vgg16_file(tmp_path_factory, include_top=True),
        "notop": vgg16_file(tmp_path_factory, include_top=False),
        "values": vgg16_values(),
    }


def test_deeplab_v1_fc6_fc7_are_vgg16_fc1_fc2_decimated(vgg16_files):
    values = vgg16_files["values"]
    model = kseg.models.DeepLabV1(num_classes=3, backbone_weights=vgg16_files["top"])
    conv = model.get_layer("vgg16").get_layer("block5_conv3").get_weights()[0]
    np.testing.assert_array_equal(conv, values["block5_conv3"][0])
    fc1_kernel, fc1_bias = values["fc1"]
    fc2_kernel, fc2_bias = values["fc2"]
    kernel6, bias6 = model.get_layer("fc6").get_weights()
    kernel7, bias7 = model.get_layer("fc7").get_weights()
    assert kernel6.shape == (3, 3, 512, 1024) and kernel7.shape == (1, 1, 1024, 1024)
    # fc1's input index of tap (row, col), channel c is (row * 7 + col) * 512 + c.
    for a, row in enumerate((0, 3, 6)):
        for b, col in enumerate((0, 3, 6)):
            rows = (row * 7 + col) * 512 + np.arange(512)
            np.testing.assert_array_equal(kernel6[a, b], fc1_kernel[rows][:, 0:4096:4])
    np.testing.assert_array_equal(bias6, fc1_bias[[4 * k for k in range(1024)]])
    kept = np.arange(0, 4096, 4)
    np.testing.assert_array_equal(kernel7[0, 0], fc2_kernel[np.ix_(kept, kept)])
    np.testing.assert_array_equal(bias7, fc2_bias[kept])


def test_deeplab_v1_weights_without_top_warn_or_raise(vgg16_files):
    values = vgg16_files["values"]
    with pytest.warns(UserWarning, match="has no classifier top .* fc6 and fc7 keep their random"):
        model = kseg.models.DeepLabV1(num_classes=3, backbone_weights=vgg16_files["notop"])
    conv = model.get_layer("vgg16").get_layer("block1_conv1").get_weights()[0]
    np.testing.assert_array_equal(conv, values["block1_conv1"][0])
    with pytest.raises(ValueError, match="has no classifier top .*Received: load_fc=True"):
        kseg.models.DeepLabV1(num_classes=3, backbone_weights=vgg16_files["notop"], load_fc=True)


def test_deeplab_v1_other_fc_widths_warn_or_raise(vgg16_files):
    with pytest.warns(UserWarning, match=r"shapes .*1024.* keep their random initialisation"):
        model = kseg.models.DeepLabV1(
            num_classes=3, fc_filters=8, backbone_weights=vgg16_files["notop"]
        )
    conv = model.get_layer("vgg16").get_layer("block1_conv1").get_weights()[0]
    np.testing.assert_array_equal(conv, vgg16_files["values"]["block1_conv1"][0])
    with pytest.raises(ValueError, match=r"fc_filters=1024.*Received: load_fc=True"):
        kseg.models.DeepLabV1(
            num_classes=3, fc_filters=8, backbone_weights=vgg16_files["notop"], load_fc=True
        )
    with pytest.raises(ValueError, match="which is None. Received: load_fc=True"):
        kseg.models.DeepLabV1(num_classes=3, fc_filters=8, load_fc=True)
