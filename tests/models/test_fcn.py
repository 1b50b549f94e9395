import warnings

import numpy as np
import pytest

import kseg
from tests.helpers import run_model_test, to_numpy
from tests.models.vgg16_files import vgg16_file, vgg16_values

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


@pytest.fixture(scope="module")
def vgg16_top(tmp_path_factory):
    return vgg16_file(tmp_path_factory, include_top=True), vgg16_values()


def test_vgg16_top_weights_make_fc6_and_fc7_the_convolutional_fc1_and_fc2(vgg16_top):
    path, values = vgg16_top
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*fc6.*")
        model = kseg.models.FCN8s(num_classes=2, backbone_weights=path)
    for name in ("block1_conv1", "block5_conv3"):
        got = model.get_layer("vgg16").get_layer(name).get_weights()
        np.testing.assert_array_equal(got[0], values[name][0], err_msg=name)
        np.testing.assert_array_equal(got[1], values[name][1], err_msg=name)

    # fc6 at each position is VGG-16's fc1 (Dense + ReLU) applied to the 7x7x512
    # window of pool5 flattened as keras.applications' Flatten does (row-major HWC).
    pool5 = np.random.default_rng(5).uniform(0.0, 1.0, (1, 9, 8, 512)).astype("float32")
    out6 = to_numpy(model.get_layer("fc6")(pool5))
    assert out6.shape == (1, 3, 2, 4096)
    kernel, bias = (v.astype(np.float64) for v in values["fc1"])
    for i, j in ((0, 0), (2, 1), (1, 0)):
        window = pool5[0, i : i + 7, j : j + 7, :].reshape(-1).astype(np.float64)
        want = np.maximum(window @ kernel + bias, 0.0)
        assert want.max() > 0
        np.testing.assert_allclose(out6[0, i, j], want, rtol=0, atol=1e-4 * want.max())

    # fc7 (1x1) is fc2 on each position's 4096-vector.
    fc7_in = np.random.default_rng(6).uniform(0.0, 1.0, (1, 2, 1, 4096)).astype("float32")
    out7 = to_numpy(model.get_layer("fc7")(fc7_in))
    kernel, bias = (v.astype(np.float64) for v in values["fc2"])
    for i in range(2):
        want = np.maximum(fc7_in[0, i, 0].astype(np.float64) @ kernel + bias, 0.0)
        np.testing.assert_allclose(out7[0, i, 0], want, rtol=0, atol=1e-4 * want.max())


def test_load_fc_false_loads_only_the_convolutions(vgg16_top):
    path, values = vgg16_top
    model = kseg.models.FCN32s(num_classes=2, backbone_weights=path, load_fc=False)
    got = model.get_layer("vgg16").get_layer("block5_conv3").get_weights()[0]
    np.testing.assert_array_equal(got, values["block5_conv3"][0])
    fc6 = to_numpy(model.get_layer("fc6").kernel).reshape(-1, 4096)
    assert not np.allclose(fc6[:100], values["fc1"][0][:100])


def test_grey_images_take_the_rgb_weights_with_the_first_kernel_summed(vgg16_top):
    """One input channel: block1_conv1 sums its RGB slices (smp's rule), the rest is copied."""
    path, values = vgg16_top
    model = kseg.models.FCN32s(
        num_classes=2, input_shape=(None, None, 1), backbone_weights=path, load_fc=False
    )
    vgg = model.get_layer("vgg16")
    first = to_numpy(vgg.get_layer("block1_conv1").kernel)
    kernel = values["block1_conv1"][0]  # (3, 3, 3, 64), read in BGR order
    np.testing.assert_allclose(first[:, :, 0], kernel.sum(axis=2), rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(vgg.get_layer("block5_conv3").kernel), values["block5_conv3"][0])
    # The weights' caffe statistics, as their grey average.
    assert model.get_layer("normalize").mode == "caffe"


def test_load_fc_needs_backbone_weights_and_a_valid_value():
    with pytest.raises(ValueError, match="backbone_weights`, which is None. Received: load_fc"):
        kseg.models.FCN8s(num_classes=2, fc_filters=8, load_fc=True)
    with pytest.raises(ValueError, match="Received: load_fc='yes'"):
        kseg.models.FCN8s(num_classes=2, fc_filters=8, load_fc="yes")
