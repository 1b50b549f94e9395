"""Which backbone feature feeds each head, the head sizes, and images of any channel count.

Every decoder aligns sizes with `ResizeLike`, so a head wired to the wrong
stage would still give logits of the right shape. These tests walk the built
functional graph instead: on a 64x96 input every stride is visible in the
static shapes, and a feature is named by its true stride and channel width,
taken from the backbones' documented tables (written out here, not read from
the code under test).

The graph is built by the same code whatever the backend, so these tests run in
the TensorFlow session only (the cheapest to build in); each model's outputs are
tested on every backend in its own test file.
"""

import math

import keras
import numpy as np
import pytest

import kseg
from tests.helpers import BACKEND, to_numpy

pytestmark = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="the built graph does not depend on the backend"
)

H, W = 64, 96


def _tiny_resnet(output_stride, channels=3, multi_grid=None):
    last = 1 if multi_grid is None else len(multi_grid)
    return kseg.backbones.ResNet(
        blocks=(1, 1, 1, last),
        width=4,
        output_stride=output_stride,
        multi_grid=multi_grid,
        input_shape=(None, None, channels),
    )


def _resnet_feature(stage, output_stride, width=4):
    """`(rows, cols, channels)` of a ResNet stage on the 64x96 input.

    Stage i has `4 * width * 2**(i - 1)` channels and stride `2**(i + 1)`,
    capped at the output stride; the map has `ceil(size / stride)` rows.
    """
    stride = min(2 ** (stage + 1), output_stride)
    return (math.ceil(H / stride), math.ceil(W / stride), 4 * width * 2 ** (stage - 1))


def _producer(tensor):
    return tensor._keras_history[0]


def _inputs(layer):
    return keras.tree.flatten(layer.input)


def _backbone_sources(model, layer_name, backbone):
    """Shapes of the backbone outputs that reach `layer_name` through the graph."""
    found, seen = set(), set()
    stack = _inputs(model.get_layer(layer_name))
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        op = _producer(tensor)
        if op is backbone:
            found.add(tuple(tensor.shape[1:]))
        elif not isinstance(op, keras.layers.InputLayer):
            stack.extend(_inputs(op))
    return found


def _direct(model, layer_name, backbone, index=0):
    """Shape of input `index` of `layer_name`, which must be a backbone output."""
    tensor = _inputs(model.get_layer(layer_name))[index]
    assert _producer(tensor) is backbone, f"{layer_name} input {index} is not a backbone output"
    return tuple(tensor.shape[1:])


def _backbone(model):
    (backbone,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return backbone


# --- ResNet-based heads --------------------------------------------------------------------


def _resnet_model(family, output_stride):
    shape = (H, W, 3)
    bb = _tiny_resnet(output_stride, multi_grid=(1, 2, 4) if family == "DeepLabV3" else None)
    kwargs = {"num_classes": 3, "input_shape": shape, "backbone": bb}
    if family == "PSPNet":
        return kseg.models.PSPNet(**kwargs, fusion_filters=8, aux_head=True)
    if family == "DeepLabV2":
        return kseg.models.DeepLabV2(**kwargs)
    if family == "DeepLabV3":
        return kseg.models.DeepLabV3(**kwargs, aspp_filters=8, aux_head=True)
    if family == "DeepLabV3Plus":
        return kseg.models.DeepLabV3Plus(
            **kwargs, aspp_filters=8, low_level_filters=4, decoder_filters=8
        )
    if family == "GCUNet":
        return kseg.models.GCUNet(**kwargs, unit_filters=8, fusion_filters=8, aux_head=True)
    if family == "GloReNet":
        return kseg.models.GloReNet(**kwargs, reduce_filters=8, num_state=4, num_node=4, aux_head=True)
    return kseg.models.GINet(
        **kwargs, jpu_width=8, reduce_filters=8, num_state=8, num_node=4, aux_head=True
    )


# (family, output stride, {layer: (index, stage) fed directly}, {layer: stages upstream})
RESNET_WIRING = [
    ("PSPNet", 8, {"ppm": (0, 4), "aux_conv": (0, 3)}, {"classifier": {4}, "aux_logits": {3}}),
    ("DeepLabV2", 8, {"aspp": (0, 4)}, {"logits": {4}}),
    (
        "DeepLabV3",
        16,
        {"aspp": (0, 4), "aux_conv": (0, 3)},
        {"classifier": {4}, "aux_logits": {3}},
    ),
    ("DeepLabV3Plus", 16, {"aspp": (0, 4), "decoder": (1, 1)}, {"classifier": {1, 4}}),
    ("DeepLabV3Plus", 8, {"aspp": (0, 4), "decoder": (1, 1)}, {"classifier": {1, 4}}),
    (
        "GCUNet",
        8,
        {"gcu_2": (0, 4), "gcu_32": (0, 4), "gcu_concat": (0, 4), "aux_conv": (0, 3)},
        {"classifier": {4}, "aux_logits": {3}},
    ),
    (
        "GloReNet",
        8,
        {"reduce": (0, 4), "aux_conv": (0, 3)},
        {"classifier": {4}, "aux_logits": {3}},
    ),
    # GINet: the JPU neck reads stages 2-4; its inner layout is not pinned here.
    ("GINet", 8, {"aux_conv": (0, 3)}, {"conv5": {2, 3, 4}, "aux_logits": {3}}),
]


@pytest.mark.parametrize(
    "family, output_stride, direct, upstream",
    RESNET_WIRING,
    ids=[f"{w[0]}-os{w[1]}" for w in RESNET_WIRING],
)
def test_resnet_heads_read_the_right_stage(family, output_stride, direct, upstream):
    model = _resnet_model(family, output_stride)
    backbone = _backbone(model)
    for layer, (index, stage) in direct.items():
        assert _direct(model, layer, backbone, index) == _resnet_feature(stage, output_stride), (
            layer
        )
    for layer, stages in upstream.items():
        expected = {_resnet_feature(s, output_stride) for s in stages}
        assert _backbone_sources(model, layer, backbone) == expected, layer


def test_ginet_without_jpu_reads_stage4_only():
    model = kseg.models.GINet(
        num_classes=3,
        input_shape=(H, W, 3),
        backbone=_tiny_resnet(8),
        use_jpu=False,
        reduce_filters=8,
        num_state=8,
        num_node=4,
    )
    assert _direct(model, "conv5", _backbone(model)) == _resnet_feature(4, 8)


def test_deeplabv3plus_decoder_gets_the_aspp_output():
    model = _resnet_model("DeepLabV3Plus", 16)
    high, low = _inputs(model.get_layer("decoder"))
    assert _producer(high) is model.get_layer("aspp")
    assert tuple(high.shape[1:]) == (4, 6, 8)  # stride 16, ASPP width
    assert tuple(low.shape[1:]) == (16, 24, 16)  # stride 4, stage 1 of width 4


# --- VGG-based models ----------------------------------------------------------------------


def _fcn_sizes(n):
    """FCN's VGG: conv1_1 padded by 100 (n + 198 after block 1), then 2x2/2 ceil-mode pools."""
    sizes, n = {}, n + 198
    for block in range(1, 6):
        n = math.ceil(n / 2)
        sizes[f"pool{block}"] = n
    return sizes


@pytest.mark.parametrize(
    "name, skips", [("FCN32s", ()), ("FCN16s", ("pool4",)), ("FCN8s", ("pool4", "pool3"))]
)
def test_fcn_score_layers_read_the_right_pools(name, skips):
    # Wiring only: fc6/fc7 are not pinned here (their initialisation is being reworked).
    model = getattr(kseg.models, name)(num_classes=3, input_shape=(H, W, 3), fc_filters=8)
    backbone = _backbone(model)
    rows, cols = _fcn_sizes(H), _fcn_sizes(W)
    width = {"pool3": 256, "pool4": 512, "pool5": 512}

    def feature(pool):
        return (rows[pool], cols[pool], width[pool])

    assert _backbone_sources(model, "score_fr", backbone) == {feature("pool5")}
    for skip in skips:
        assert _direct(model, f"score_{skip}", backbone) == feature(skip)
    expected = {feature("pool5")} | {feature(s) for s in skips}
    assert _backbone_sources(model, "logits", backbone) == expected


def test_deeplab_v1_head_reads_block5():
    # Wiring only (fc6/fc7 are being reworked). The deeplab_v1 VGG has 3x3/2 pad-1 ceil-mode
    # pools 1-3 (n -> ceil((n - 1) / 2) + 1) and stride-1 pools 4-5: 64x96 -> 9x13, 512 wide.
    def size(n):
        for _ in range(3):
            n = math.ceil((n - 1) / 2) + 1
        return n

    model = kseg.models.DeepLabV1(num_classes=3, input_shape=(H, W, 3), fc_filters=8)
    assert (size(H), size(W)) == (9, 13)
    assert _backbone_sources(model, "logits", _backbone(model)) == {(9, 13, 512)}


def test_segnet_unpools_each_stage_with_its_own_indices():
    model = kseg.models.SegNet(num_classes=3, input_shape=(H, W, 3))
    backbone = _backbone(model)
    widths = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
    for stage in range(1, 6):
        stride = 2 ** (stage - 1)  # block `stage` before its pool
        before = (H // stride, W // stride, widths[stage])
        x, indices, size_ref = _inputs(model.get_layer(f"unpool{stage}"))
        pool = model.get_layer(f"pool{stage}_argmax")
        assert _producer(indices) is pool and indices._keras_history[2] == 1
        assert _direct(model, f"pool{stage}_argmax", backbone) == before
        assert _producer(size_ref) is backbone and tuple(size_ref.shape[1:]) == before
        assert tuple(indices.shape[1:]) == (H // (2 * stride), W // (2 * stride), widths[stage])
        assert tuple(x.shape[1:3]) == (H // (2 * stride), W // (2 * stride))
    # The decoder starts from the last pool's values, not its indices.
    x = _inputs(model.get_layer("unpool5"))[0]
    assert _producer(x) is model.get_layer("pool5_argmax") and x._keras_history[2] == 0


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_unet_skips_come_from_the_matching_level(padding):
    filters, depth = 4, 3
    model = kseg.models.UNet(
        num_classes=2, input_shape=(H, W, 1), base_filters=filters, depth=depth, padding=padding
    )
    for level in range(depth):
        skip, up = _inputs(model.get_layer(f"crop{level}"))
        assert _producer(skip) is model.get_layer(f"down{level}_conv2")
        assert _producer(up) is model.get_layer(f"up{level}")
        assert skip.shape[-1] == up.shape[-1] == filters * 2**level
        if padding == "same":  # 64x96 needs no padding: the skip is at stride 2**level
            assert tuple(skip.shape[1:3]) == (H // 2**level, W // 2**level)
    bottom = _inputs(model.get_layer("bottom_conv1"))[0]
    assert _producer(bottom) is model.get_layer(f"pool{depth - 1}")
    assert bottom.shape[-1] == filters * 2 ** (depth - 1)


# --- Head parameter counts (SPEC 4 and 5), from the layer formulas --------------------------


def _conv(k, cin, cout, bias=False):
    return k * k * cin * cout + (cout if bias else 0)


def _bn(c):
    return 4 * c  # gamma, beta, moving mean, moving variance


def _conv_bn(k, cin, cout):
    return _conv(k, cin, cout) + _bn(cout)


def _aux(k):
    # FCN head on stage 3 (1024 channels): 3x3 ConvBNReLU to 256, 1x1 to K.
    return _conv_bn(3, 1024, 256) + _conv(1, 256, k, bias=True)


def _aspp_v3(cin=2048, width=256):
    # 1x1, three 3x3 atrous, image pooling 1x1: ConvBNReLU each; 1x1 projection of 5 * width.
    return 2 * _conv_bn(1, cin, width) + 3 * _conv_bn(3, cin, width) + _conv_bn(1, 5 * width, width)


def _expected_head(family, k):
    if family == "PSPNet":  # PPM 4 x (1x1 to 512), fusion 3x3 4096 -> 512, classifier
        return 4 * _conv_bn(1, 2048, 512) + _conv_bn(3, 4096, 512) + _conv(1, 512, k, True)
    if family == "DeepLabV2":  # four 3x3 2048 -> K with bias, summed
        return 4 * _conv(3, 2048, k, bias=True)
    if family == "DeepLabV3":
        return _aspp_v3() + _conv(1, 256, k, True)
    if family == "DeepLabV3Plus":  # low-level 1x1 256 -> 48, two 3x3 to 256 on 304, classifier
        decoder = _conv_bn(1, 256, 48) + _conv_bn(3, 304, 256) + _conv_bn(3, 256, 256)
        return _aspp_v3() + decoder + _conv(1, 256, k, True)
    if family == "GCUNet":  # GCU: 2 d V + d d_out (SPEC 1.3), fusion on 2048 + 4 * 512
        units = sum(2 * 2048 * v + 2048 * 512 for v in (2, 4, 8, 32))
        return units + _conv_bn(3, 4096, 512) + _conv(1, 512, k, True)
    if family == "GloReNet":
        # reduce 1x1 2048 -> 512; GloRe(512, S128, N64): state and projection 1x1 with bias,
        # node conv with bias, state conv and extension without, BN on 512 (SPEC 2.3: 185,600
        # with torch's 2-per-channel BN count).
        glore = (
            _conv(1, 512, 128, True)
            + _conv(1, 512, 64, True)
            + (64 * 64 + 64)
            + 128 * 128
            + 128 * 512
            + _bn(512)
        )
        assert glore - 2 * 512 == 185_600
        return _conv_bn(1, 2048, 512) + glore + _conv(1, 512, k, True)
    raise AssertionError(family)


HEADS = ["PSPNet", "DeepLabV2", "DeepLabV3", "DeepLabV3Plus", "GCUNet", "GloReNet"]


@pytest.mark.parametrize("family", HEADS)
def test_head_parameter_counts(family):
    k = 19
    builder = getattr(kseg.models, family)
    aux = family not in ("DeepLabV2", "DeepLabV3Plus")
    model = builder(num_classes=k, **({"aux_head": True} if aux else {}))
    backbone = _backbone(model)
    expected = _expected_head(family, k) + (_aux(k) if aux else 0)
    assert model.count_params() - backbone.count_params() == expected


def test_segnet_decoder_parameter_count():
    # Decoder 3x3 convs with bias, then BN; final 3x3 to K with bias (SPEC 4.8).
    k, widths, cin, expected = (
        11,
        (512, 512, 512, 512, 512, 256, 256, 256, 128, 128, 64, 64),
        512,
        0,
    )
    for cout in widths:
        expected += _conv(3, cin, cout, bias=True) + _bn(cout)
        cin = cout
    expected += _conv(3, 64, k, bias=True)
    model = kseg.models.SegNet(num_classes=k)
    assert model.count_params() - _backbone(model).count_params() == expected


# --- Any channel count ---------------------------------------------------------------------

VGG_BUILDERS = {
    "FCN32s": {"fc_filters": 8},
    "FCN16s": {"fc_filters": 8},
    "FCN8s": {"fc_filters": 8},
    "DeepLabV1": {"fc_filters": 8},
    "SegNet": {},
}
RESNET_BUILDERS = {
    "PSPNet": {"fusion_filters": 8, "aux_head": True},
    "DeepLabV2": {},
    "DeepLabV3": {"aspp_filters": 8},
    "DeepLabV3Plus": {"aspp_filters": 8, "low_level_filters": 4, "decoder_filters": 8},
    "GCUNet": {"unit_filters": 8, "fusion_filters": 8},
    "GloReNet": {"reduce_filters": 8, "num_state": 4, "num_node": 4},
    "GINet": {"jpu_width": 8, "reduce_filters": 8, "num_state": 8, "num_node": 4},
}


def _any_channel_model(name, channels):
    shape = (None, None, channels)
    if name == "UNet":
        return kseg.models.UNet(num_classes=2, input_shape=shape, base_filters=2, depth=2)
    if name in VGG_BUILDERS:
        return getattr(kseg.models, name)(num_classes=2, input_shape=shape, **VGG_BUILDERS[name])
    return getattr(kseg.models, name)(
        num_classes=2,
        input_shape=shape,
        backbone=_tiny_resnet(8, channels),
        **RESNET_BUILDERS[name],
    )


@pytest.mark.parametrize("channels", [1, 4])
@pytest.mark.parametrize("name", ["UNet", *VGG_BUILDERS, *RESNET_BUILDERS])
def test_every_builder_takes_any_channel_count(name, channels):
    model = _any_channel_model(name, channels)
    assert model.get_layer("normalize").output.shape[-1] == channels
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, channels)).astype("float32")
    out = model(x)
    logits = to_numpy(out["main"] if isinstance(out, dict) else out)
    assert logits.shape == (1, 32, 32, 2)
    assert np.all(np.isfinite(logits))


def test_four_channel_pspnet_by_name_builds_and_explains_what_rgb_settings_need():
    shape = (None, None, 4)
    # "auto" normalisation has no ImageNet statistics for 4 channels: it divides by 255.
    model = kseg.models.PSPNet(num_classes=2, input_shape=shape)
    assert model.get_layer("normalize").mode == "unit"
    assert model.input.shape[-1] == 4
    with pytest.raises(ValueError, match="normalization='unit'"):
        kseg.models.PSPNet(num_classes=2, input_shape=shape, normalization="caffe")
    # Pretrained weights are adapted to 4 channels (tests/backbones/test_channels.py); the
    # RGB backbone they load into is built first, so a bad file is named as for RGB.
    with pytest.raises(ValueError, match="no such file"):
        kseg.models.PSPNet(num_classes=2, input_shape=shape, backbone_weights="/no/such.h5")
    with pytest.raises(ValueError, match=r"input_shape=\(None, None, 4\)"):
        kseg.models.PSPNet(num_classes=2, input_shape=shape, backbone=_tiny_resnet(8))
    model = kseg.models.DeepLabV3(
        num_classes=2,
        input_shape=shape,
        backbone=_tiny_resnet(16, 4),
        aspp_filters=8,
        normalization={"mean": [120, 110, 100, 90], "std": 60},
    )
    normalize = model.get_layer("normalize")
    assert normalize.mode == "custom" and normalize.mean == [120, 110, 100, 90]


def test_grey_presets_use_the_average_statistics():
    model = kseg.models.UNet(
        num_classes=2, input_shape=(None, None, 1), base_filters=2, depth=1, normalization="torch"
    )
    x = np.full((1, 8, 8, 1), 200.0, "float32")
    np.testing.assert_allclose(
        to_numpy(model.get_layer("normalize")(x)), (200.0 - 114.495) / 57.63, rtol=1e-5
    )
