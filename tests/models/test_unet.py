import math

import keras
import numpy as np
import pytest

import kseg
from kseg.backbones import feature_info
from kseg.models.unet import _tile_geometry
from tests.helpers import infer, run_model_test, to_numpy, torch_or_skip
from tests.models.conftest import convnext_like
from tests.torch_refs import assert_matches


def test_original_parameter_count():
    # Original U-Net: 1 input channel, 2 classes, valid convs, no BN (SPEC 5).
    model = kseg.models.UNet(num_classes=2, input_shape=(None, None, 1))
    assert model.count_params() == 31_030_658


@pytest.mark.parametrize("channels", [1, 4])
def test_grey_and_multispectral_inputs_run(channels):
    # The paper's setting is 1 channel; the normalisation must keep the channel count.
    model = kseg.models.UNet(
        num_classes=2, input_shape=(None, None, channels), base_filters=2, depth=2
    )
    x = np.random.default_rng(0).uniform(0, 255, (1, 37, 45, channels)).astype("float32")
    logits = to_numpy(model(x))
    assert logits.shape == (1, 37, 45, 2) and np.all(np.isfinite(logits))


def test_original_tile_geometry():
    # 572 -> 388 in the paper: margin 92 and valid sizes 572 + 16k.
    margin, multiple, residue = _tile_geometry(4, "valid")
    assert (margin, multiple, 572 % multiple) == (92, 16, residue)


def _reference_valid_output_size(size, depth):
    """Output size of a valid U-Net, or None when a pool would see an odd size."""
    for _ in range(depth):
        size -= 4
        if size % 2:
            return None
        size //= 2
    size -= 4
    for _ in range(depth):
        size = size * 2 - 4
    return size


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_tile_geometry_covers_the_image(depth):
    margin, multiple, residue = _tile_geometry(depth, "valid")
    for size in range(1, 80):
        need = size + 2 * margin
        padded = need + (residue - need) % multiple
        out = _reference_valid_output_size(padded, depth)
        assert out is not None and out >= size


@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": "valid"},
        {"padding": "same", "batch_norm": True, "upsampling": "bilinear"},
    ],
)
def test_logits_at_input_size(kwargs):
    model = kseg.models.UNet(num_classes=3, base_filters=4, depth=2, **kwargs)
    run_model_test(model, (1, 37, 45, 3), 3)


def test_same_unet_on_a_size_that_needs_no_padding():
    model = kseg.models.UNet(num_classes=2, base_filters=2, depth=2, padding="same")
    assert to_numpy(model(np.zeros((1, 32, 32, 3), "float32"))).shape == (1, 32, 32, 2)


def test_valid_unet_is_translation_consistent_with_the_paper_geometry():
    """The crop keeps output pixel j aligned with input pixel j.

    A valid-conv U-Net's output at (i, j) depends only on a window centred on
    input pixel (i, j) (plus the mirrored margin). Changing one input pixel far
    from the border must therefore change the logits around that same pixel.
    """
    model = kseg.models.UNet(num_classes=1, base_filters=2, depth=1)
    x = np.zeros((1, 40, 40, 3), "float32")
    base = to_numpy(model(x))
    x[0, 20, 20] = 255.0
    diff = np.abs(to_numpy(model(x)) - base)[0, ..., 0]
    rows, cols = np.nonzero(diff > 0)
    assert rows.min() <= 20 <= rows.max() and cols.min() <= 20 <= cols.max()
    assert abs((rows.min() + rows.max()) / 2 - 20) <= 1
    assert abs((cols.min() + cols.max()) / 2 - 20) <= 1


def test_errors():
    with pytest.raises(ValueError, match="padding"):
        kseg.models.UNet(num_classes=2, padding="full")
    with pytest.raises(ValueError, match="depth"):
        kseg.models.UNet(num_classes=2, depth=0)
    model = kseg.models.UNet(num_classes=2, base_filters=2, depth=4)
    with pytest.raises(ValueError, match="tile_padding='constant'"):
        model(np.zeros((1, 40, 40, 3), "float32"))


# --- U-Net on a backbone (segmentation_models / smp layout) ---------------------------------

FILTERS = (16, 8, 8, 4, 4)
# The tiny ResNet's skip at strides 16, 8, 4, 2 (its stage widths 4, 16, 32, 64, 128 tell
# the features apart), and None for the last block.
RESNET_SKIPS = ("stage3", "stage2", "stage1", "stem", None)


def _resnet(input_shape=None, output_stride=32, channels=3):
    shape = input_shape or (None, None, channels)
    return kseg.backbones.ResNet(
        (1, 1, 1, 1), width=4, input_shape=shape, output_stride=output_stride
    )


def _encoder_unet(num_classes=3, backbone=None, **kwargs):
    backbone = _resnet() if backbone is None else backbone
    return kseg.models.UNet(num_classes, backbone=backbone, decoder_filters=FILTERS, **kwargs)


def _randomize_decoder(model, seed=0):
    """Non-trivial BN statistics and affine terms in every decoder block."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name.startswith("decoder_block") and getattr(layer, "bn", None) is not None:
            c = layer.filters
            layer.bn.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.bn.beta.assign(rng.uniform(-0.1, 0.1, c).astype("float32"))
            layer.bn.moving_mean.assign(rng.uniform(-0.1, 0.1, c).astype("float32"))
            layer.bn.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype("float32"))


def _torch_decoder(torch, model, features, skips, image_size):
    """The decoder written in PyTorch with the Keras weights: smp's `UnetDecoder` on `features`.

    Each block: nearest resize to the skip's size (the image's for the last), `cat([x, skip])`,
    two Conv2d(3x3, padding 1, no bias) + BatchNorm2d (eval) + ReLU; then a 3x3 conv with bias.
    """
    nn, functional = torch.nn, torch.nn.functional

    def tensor(array):
        return torch.from_numpy(np.ascontiguousarray(array))

    def conv_bn_relu(layer):
        kernel = to_numpy(layer.conv.kernel)
        conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], 3, padding=1, bias=False)
        bn = nn.BatchNorm2d(kernel.shape[3], eps=1e-5)
        with torch.no_grad():
            conv.weight.copy_(tensor(kernel.transpose(3, 2, 0, 1)))
            bn.weight.copy_(tensor(to_numpy(layer.bn.gamma)))
            bn.bias.copy_(tensor(to_numpy(layer.bn.beta)))
            bn.running_mean.copy_(tensor(to_numpy(layer.bn.moving_mean)))
            bn.running_var.copy_(tensor(to_numpy(layer.bn.moving_variance)))
        return nn.Sequential(conv, bn, nn.ReLU()).eval()

    def nchw(key):
        return tensor(features[key].transpose(0, 3, 1, 2))

    with torch.no_grad():
        x = nchw("stage4")
        for i, key in enumerate(skips, start=1):
            if key is None:
                x = functional.interpolate(x, size=image_size, mode="nearest")
            else:
                skip = nchw(key)
                x = functional.interpolate(x, size=tuple(skip.shape[-2:]), mode="nearest")
                x = torch.cat([x, skip], dim=1)
            for j in (1, 2):
                x = conv_bn_relu(model.get_layer(f"decoder_block{i}_conv{j}"))(x)
        head = model.get_layer("logits")
        kernel = to_numpy(head.kernel)
        conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], 3, padding=1)
        conv.weight.copy_(tensor(kernel.transpose(3, 2, 0, 1)))
        conv.bias.copy_(tensor(to_numpy(head.bias)))
        return conv(x).numpy().transpose(0, 2, 3, 1)


def test_encoder_unet_matches_a_torch_decoder_on_an_odd_size():
    torch = torch_or_skip()
    backbone = _resnet()
    model = _encoder_unet(3, backbone)
    _randomize_decoder(model)
    x = np.random.default_rng(0).uniform(0, 255, (2, 45, 61, 3)).astype("float32")
    normalized = model.get_layer("normalize")(x)
    features = to_numpy(backbone(normalized, training=False))
    expected = _torch_decoder(torch, model, features, RESNET_SKIPS, (45, 61))
    assert_matches(infer(model, x), expected)


def _concat_inputs(model, block):
    up, skip = keras.tree.flatten(model.get_layer(f"decoder_block{block}_concat").input)
    return up, skip


def test_decoder_reads_the_stride_16_8_4_2_features():
    h, w = 45, 61
    backbone = _resnet((h, w, 3))
    info = feature_info(backbone)
    model = _encoder_unet(2, backbone, input_shape=(h, w, 3))
    for block, key in enumerate(RESNET_SKIPS[:4], start=1):
        stride = 2 ** (5 - block)
        up, skip = _concat_inputs(model, block)
        assert skip._keras_history[0] is backbone
        expected = (math.ceil(h / stride), math.ceil(w / stride), info.channels(key))
        assert tuple(skip.shape[1:]) == expected, (block, key)
        # The upsampled map comes first (smp and sm concatenate [x, skip]).
        assert up._keras_history[0] is model.get_layer(f"decoder_block{block}_upsample")
        assert tuple(up.shape[1:3]) == expected[:2]
        assert up.shape[-1] == (info.channels("stage4") if block == 1 else FILTERS[block - 2])
    # The last block has no skip and brings the map to the input size.
    with pytest.raises(ValueError):
        model.get_layer("decoder_block5_concat")
    assert tuple(model.get_layer("decoder_block5_upsample").output.shape[1:3]) == (h, w)
    assert tuple(model.output.shape[1:]) == (h, w, 2)


def test_encoder_without_a_stride_2_feature():
    # keras.applications' ConvNeXt has no stride-2 feature; the stand-in has the same layout.
    assert kseg.backbones.applications.TABLE["convnexttiny"][2][0] is None
    h, w = 45, 61
    backbone = convnext_like(h, w)
    model = _encoder_unet(2, backbone, input_shape=(h, w, 3))
    for block, key in enumerate(("level4", "level3", "level2"), start=1):
        stride = 2 ** (5 - block)
        skip = _concat_inputs(model, block)[1]
        assert tuple(skip.shape[1:]) == (
            h // stride,
            w // stride,
            feature_info(backbone).channels(key),
        )
    with pytest.raises(ValueError):
        model.get_layer("decoder_block4_concat")  # stride 2: upsampled, no skip
    assert tuple(model.get_layer("decoder_block4_upsample").output.shape[1:3]) == (
        2 * (h // 4),
        2 * (w // 4),
    )
    x = np.random.default_rng(0).uniform(0, 255, (1, h, w, 3)).astype("float32")
    logits = infer(model, x)
    assert logits.shape == (1, h, w, 2) and np.all(np.isfinite(logits))


@pytest.mark.large
def test_convnext_tiny_encoder_builds():
    model = kseg.models.UNet(2, backbone="convnexttiny", decoder_filters=FILTERS)
    spec = model.compute_output_spec(keras.KerasTensor((1, 45, 61, 3)))
    assert tuple(spec.shape) == (1, 45, 61, 2)
    with pytest.raises(ValueError):
        model.get_layer("decoder_block4_concat")


@pytest.mark.parametrize("batch_norm", [None, False])
def test_encoder_unet_parameter_count(batch_norm):
    backbone = _resnet()
    info = feature_info(backbone)
    k = 5
    model = _encoder_unet(k, backbone, batch_norm=batch_norm)
    with_bn = batch_norm is None  # the default: BN after every decoder conv (smp, sm)
    expected, cin = 0, info.channels("stage4")
    for key, filters in zip(RESNET_SKIPS, FILTERS):
        for c in (cin + (info.channels(key) if key else 0), filters):
            # 3x3 conv, then BN (4 per channel) or, without BN, a bias.
            expected += 9 * c * filters + (4 * filters if with_bn else filters)
        cin = filters
    expected += 9 * cin * k + k  # the 3x3 classifier with bias
    assert model.count_params() == backbone.count_params() + expected


def test_encoder_unet_runs_trains_and_reloads():
    model = _encoder_unet(3)
    run_model_test(model, (2, 37, 45, 3), 3)


def test_application_encoder_by_name():
    model = kseg.models.UNet(2, backbone="mobilenetv2", decoder_filters=FILTERS)
    assert model.name == "unet"
    assert model.get_layer("normalize").mode == "tf"  # "auto": MobileNetV2's preprocessing
    for block, key in enumerate(("level4", "level3", "level2", "level1"), start=1):
        skip = _concat_inputs(model, block)[1]
        assert skip.shape[-1] == feature_info(model.get_layer("mobilenetv2")).channels(key)
    x = np.random.default_rng(0).uniform(0, 255, (1, 33, 47, 3)).astype("float32")
    logits = infer(model, x)
    assert logits.shape == (1, 33, 47, 2) and np.all(np.isfinite(logits))


def test_normalization_auto_per_kind():
    assert kseg.models.UNet(2, base_filters=2, depth=1).get_layer("normalize").mode == "unit"
    assert _encoder_unet(2).get_layer("normalize").mode == "caffe"  # keras.applications' ResNet
    grey = _encoder_unet(2, _resnet(channels=1), input_shape=(None, None, 1))
    assert grey.get_layer("normalize").mode == "unit"


def test_encoder_unet_errors():
    with pytest.raises(ValueError, match=r"'resnet50'.*'mobilenetv2'.*backbone='resnet9'"):
        kseg.models.UNet(2, backbone="resnet9")
    for arg, value in (
        ("base_filters", 8),
        ("depth", 3),
        ("padding", "same"),
        ("upsampling", "bilinear"),
        ("tile_padding", "constant"),
    ):
        with pytest.raises(ValueError, match=rf"{arg}={value!r}"):
            _encoder_unet(2, **{arg: value})
    with pytest.raises(ValueError, match=r"decoder_filters=\(8, 8\)"):
        kseg.models.UNet(2, decoder_filters=(8, 8))
    with pytest.raises(ValueError, match="backbone_weights='imagenet'"):
        kseg.models.UNet(2, backbone_weights="imagenet")
    with pytest.raises(ValueError, match="5 entries"):
        kseg.models.UNet(2, backbone=_resnet(), decoder_filters=(8, 8, 8, 8))
    with pytest.raises(ValueError, match="3-channel images"):
        kseg.models.UNet(
            2, input_shape=(None, None, 1), backbone=_resnet(), decoder_filters=FILTERS
        )
    with pytest.raises(ValueError, match="output_stride=32"):
        _encoder_unet(2, _resnet(output_stride=16))
