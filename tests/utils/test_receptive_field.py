import math

import keras
import pytest

from kseg.layers import ASPP, ConvBNAct, DeepLabV3PlusDecoder, PyramidPoolingModule
from kseg.utils import (
    conv_output_size,
    format_receptive_field,
    print_receptive_field,
    receptive_field,
)

L = keras.layers


@pytest.mark.parametrize(
    "args, kwargs, expected",
    [
        ((224, 3), {"padding": 1}, 224),
        ((65, 3), {"stride": 2, "padding": 1}, 33),
        ((64, 3), {"stride": 2, "padding": 1}, 32),
        ((17, 3), {"dilation": 4, "padding": 4}, 17),
        ((17, 3), {"dilation": 4}, 9),
        ((224, 7), {"stride": 2, "padding": 3}, 112),
        # FCN: conv1_1 pad 100 -> 500 + 200 - 2 = 698.
        ((500, 3), {"padding": 100}, 698),
        # Caffe / ceil-mode pooling: (7 - 2) / 2 -> 2.5 -> 3 (+1) = 4.
        ((7, 2), {"stride": 2, "ceil_mode": True}, 4),
        ((7, 2), {"stride": 2}, 3),
        # DeepLab-LargeFOV pool1: 3x3/2 pad 1 ceil on 321 -> 161.
        ((321, 3), {"stride": 2, "padding": 1, "ceil_mode": True}, 161),
        # torch drops a last window that would start in the right padding:
        # in 5, k 2, s 2, p 1, ceil -> ceil(4 / 2) + 1 = 3, window 2 starts at 4 < 5 + 1.
        ((5, 2), {"stride": 2, "padding": 1, "ceil_mode": True}, 3),
        ((6, 2), {"stride": 2, "padding": 1, "ceil_mode": True}, 4),
    ],
)
def test_conv_output_size(args, kwargs, expected):
    assert conv_output_size(*args, **kwargs) == expected


def test_conv_output_size_matches_torch():
    torch = pytest.importorskip("torch")
    for n in (5, 6, 7, 13):
        for k, s, p, d in ((2, 2, 1, 1), (3, 2, 1, 1), (3, 3, 1, 1), (3, 1, 2, 2)):
            for ceil in (False, True):
                if p > k // 2 or d * (k - 1) + 1 > n + 2 * p:
                    continue
                x = torch.zeros(1, 1, n, n)
                y = torch.nn.functional.max_pool2d(
                    x, k, s, padding=p, dilation=d, ceil_mode=ceil
                )
                assert conv_output_size(n, k, s, p, d, ceil) == y.shape[-1], (n, k, s, p, d, ceil)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"input_size": 0}, ValueError, "input_size"),
        ({"stride": 0}, ValueError, "stride"),
        ({"dilation": -1}, ValueError, "dilation"),
        ({"padding": -1}, ValueError, "padding"),
        ({"kernel_size": 2.0}, TypeError, "kernel_size"),
        ({"input_size": 3, "kernel_size": 5}, ValueError, "larger than the padded input"),
    ],
)
def test_conv_output_size_errors(kwargs, error, match):
    args = {"input_size": 10, "kernel_size": 3, **kwargs}
    with pytest.raises(error, match=match):
        conv_output_size(**args)


def _sequential(*layers, shape=(None, None, 3)):
    return keras.Sequential([keras.Input(shape)] + list(layers))


def test_three_3x3_convs_give_7():
    model = _sequential(*[L.Conv2D(2, 3, padding="same") for _ in range(3)])
    rfs = [r.receptive_field for r in receptive_field(model)]
    assert rfs == [(3, 3), (5, 5), (7, 7)]


def test_dilation_after_stride():
    # 3x3/2 -> RF 3, jump 2; then 3x3 with dilation 2 (effective 5): 3 + 4 * 2 = 11.
    model = _sequential(L.Conv2D(2, 3, strides=2), L.Conv2D(2, 3, dilation_rate=2))
    first, second = receptive_field(model)
    assert first.jump == (2, 2) and first.receptive_field == (3, 3)
    assert second.effective_kernel == (5, 5)
    assert second.jump == (2, 2)
    assert second.receptive_field == (11, 11)


def test_functional_with_pooling_padding_and_conv_bn_act():
    inputs = keras.Input((None, None, 3))
    x = L.ZeroPadding2D(1)(inputs)
    x = L.MaxPooling2D(3, strides=2)(x)  # RF 3, jump 2
    x = ConvBNAct(2, 3, dilation_rate=3)(x)  # + (7 - 1) * 2 = 15
    x = L.ReLU()(x)
    x = L.Conv2D(2, (1, 3))(x)  # H: +0, W: + 2 * 2 = 19
    model = keras.Model(inputs, x)
    records = receptive_field(model)
    names = [r.layer_type for r in records]
    assert names == ["ZeroPadding2D", "MaxPooling2D", "ConvBNAct", "ReLU", "Conv2D"]
    assert records[0].receptive_field == (1, 1)
    assert records[2].receptive_field == (15, 15)
    assert records[3].receptive_field == (15, 15)
    assert records[4].receptive_field == (15, 19)


def test_branches_take_largest_field_and_global_pool_is_whole():
    inputs = keras.Input((None, None, 3))
    a = L.Conv2D(2, 3, padding="same")(inputs)
    b = L.Conv2D(2, 3, padding="same", dilation_rate=4)(inputs)
    merged = L.Concatenate()([a, b])
    g = L.GlobalAveragePooling2D(keepdims=True)(merged)
    model = keras.Model(inputs, [merged, g])
    records = {r.layer_type: r for r in receptive_field(model)}
    assert records["Concatenate"].receptive_field == (9, 9)
    assert records["GlobalAveragePooling2D"].receptive_field == (math.inf, math.inf)


def test_upsampling_and_transpose_halve_the_jump():
    model = _sequential(
        L.Conv2D(2, 2, strides=2),  # RF 2, jump 2
        L.Conv2D(2, 2, strides=2),  # RF 4, jump 4
        L.UpSampling2D(2),  # jump 2
        L.Conv2D(2, 3, padding="same"),  # RF 4 + 2 * 2 = 8
        L.Conv2DTranspose(2, 2, strides=2),  # jump 1, RF 8 + 1 = 9
    )
    records = receptive_field(model)
    assert records[2].jump == (2, 2)
    assert records[3].receptive_field == (8, 8)
    assert records[4].jump == (1, 1)
    assert records[4].receptive_field == (9, 9)


def test_nested_model_is_walked():
    inner = _sequential(L.Conv2D(2, 3), L.Conv2D(2, 3))
    outer = _sequential(L.Conv2D(3, 3, strides=2), inner, L.Conv2D(2, 3))
    records = receptive_field(outer)
    # 3 (j2) -> 7 -> 11 -> 15
    assert [r.receptive_field[0] for r in records] == [3, 7, 11, 15]
    assert records[1].name.startswith(inner.name + "/")


def test_kseg_context_layers():
    inputs = keras.Input((None, None, 3))
    low = ConvBNAct(2, 3, name="low")(inputs)  # RF 3, jump 1
    x = ConvBNAct(2, 3, strides=2, padding=1, name="stem")(inputs)  # RF 3, jump 2
    # Widest atrous branch: 3x3 with rate 4 (effective 9): 3 + 8 * 2 = 19.
    a = ASPP(filters=2, atrous_rates=(2, 4), image_pooling=False, name="aspp")(x)
    g = ASPP(filters=2, atrous_rates=(2,), name="aspp_pool")(x)
    p = PyramidPoolingModule(bins=(1, 2), filters=1, name="ppm")(x)
    # Decoder: max(19, 3) + two 3x3 convs on the low-level grid (jump 1) = 23.
    d = DeepLabV3PlusDecoder(filters=2, low_level_filters=1, name="decoder")([a, low])
    model = keras.Model(inputs, [d, g, p])
    records = {r.name: r for r in receptive_field(model)}
    assert records["stem"].receptive_field == (3, 3) and records["stem"].jump == (2, 2)
    assert records["aspp"].effective_kernel == (9, 9)
    assert records["aspp"].receptive_field == (19, 19)
    assert records["aspp_pool"].receptive_field == (math.inf, math.inf)
    assert records["ppm"].receptive_field == (math.inf, math.inf)
    assert records["decoder"].jump == (1, 1)
    assert records["decoder"].receptive_field == (23, 23)
    assert "whole" in format_receptive_field(model)


def test_vgg16_conv5_3_is_196():
    model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    records = {r.name: r for r in receptive_field(model)}
    assert records["block1_conv2"].receptive_field == (5, 5)
    assert records["block3_conv3"].receptive_field == (40, 40)
    assert records["block5_conv3"].receptive_field == (196, 196)
    assert records["block5_conv3"].jump == (16, 16)
    assert records["block5_pool"].receptive_field == (212, 212)


def test_unbuilt_sequential_with_input_shape():
    model = keras.Sequential([L.Conv2D(2, 5), L.Conv2D(2, 3, dilation_rate=2)])
    records = receptive_field(model, input_shape=(16, 16, 3))
    assert records[-1].receptive_field == (9, 9)
    assert records[-1].output_shape == (None, 8, 8, 2)


def test_format_table():
    model = _sequential(L.Conv2D(2, 3, strides=2, name="c1"), L.Conv2D(2, 3, dilation_rate=2, name="c2"))
    text = format_receptive_field(receptive_field(model))
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["layer", "type"]
    assert lines[2].split() == ["c1", "Conv2D", "3", "1", "3", "2", "2", "3"]
    assert lines[3].split() == ["c2", "Conv2D", "3", "2", "5", "1", "2", "11"]
    printed = []
    print_receptive_field(model, print_fn=printed.append)
    assert printed == [text]


def test_errors():
    with pytest.raises(TypeError, match="model"):
        receptive_field("vgg")
    with pytest.raises(ValueError, match="input_shape"):
        receptive_field(keras.Sequential([L.Conv2D(2, 3)]))
