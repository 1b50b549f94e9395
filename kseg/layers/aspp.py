"""Atrous spatial pyramid pooling (DeepLab v2 and v3)."""

import keras
from keras import ops

from kseg._backend import check_conv_data_format
from kseg._common import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    standardize_data_format,
)
from kseg.layers.conv import ConvBNAct
from kseg.layers.resize import ResizeLike

_DEFAULT_RATES = {"v2": (6, 12, 18, 24), "v3": (6, 12, 18)}


def _normalize_rates(atrous_rates, mode):
    if atrous_rates is None:
        return _DEFAULT_RATES[mode]
    if isinstance(atrous_rates, int) or not isinstance(atrous_rates, (list, tuple)):
        raise TypeError(
            "Expected `atrous_rates` to be a list or tuple of positive integers. "
            f"Received: atrous_rates={atrous_rates!r}"
        )
    if len(atrous_rates) == 0 and mode == "v2":
        raise ValueError(
            "Expected `atrous_rates` to hold at least one rate in mode 'v2' (its branches are "
            f"the atrous convolutions), for example (6, 12, 18, 24). Received: "
            f"atrous_rates={atrous_rates!r}"
        )
    return tuple(check_int("atrous_rates", r, 1) for r in atrous_rates)


@keras.saving.register_keras_serializable(package="kseg")
class ASPP(keras.layers.Layer):
    """Atrous spatial pyramid pooling, as in DeepLab v3 (`"v3"`) or v2 (`"v2"`).

    `mode="v3"` (Chen et al., "Rethinking Atrous Convolution for Semantic Image
    Segmentation", 2017; TF DeepLab `model.py`; SPEC 4.2) runs in parallel on
    the input: a 1x1 ConvBNReLU (`aspp0`); one 3x3 ConvBNReLU per atrous rate
    with dilation = rate (`aspp1`, `aspp2`, ...; depthwise-separable with
    `separable=True`, as in DeepLab v3+); and image pooling (`image_pooling`):
    global mean -> 1x1 ConvBNReLU -> bilinear resize to the feature size. The
    maps are concatenated in that order, projected by a 1x1 ConvBNReLU
    (`projection`) and passed through dropout (`dropout`). Every branch has
    `filters` channels, and so has the output.

    `mode="v2"` (Chen et al., "DeepLab: Semantic Image Segmentation with Deep
    Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI
    2017; SPEC 4.1, ASPP-L of kazuto1011/deeplab-pytorch) applies one 3x3
    convolution with bias per rate straight to `filters` channels (the number
    of classes) and sums them (`branch0`, `branch1`, ...). There is no BN,
    activation, image pooling or dropout; kernels are initialised from
    N(0, 0.01^2) and biases with zeros. The arguments `image_pooling`,
    `dropout`, `separable`, `pool_align_corners`, `bn_momentum` and
    `bn_epsilon` are ignored in this mode.

    The default rates depend on the mode: `(6, 12, 18)` for v3 (output stride
    16; use `(12, 24, 36)` at output stride 8, SPEC 4.2) and
    `(6, 12, 18, 24)` for v2 (ASPP-L).

    Args:
        filters: int, channels of every branch and of the output (v3), or the
            number of classes (v2). Defaults to `256`.
        atrous_rates: sequence of positive ints, or None for the mode's
            default (see above). Defaults to `None`. In mode v3 it may be
            empty: the 1x1 and image-pooling branches alone, the "no ASPP"
            head of DeepLab v3 on MobileNetV2 in its mobile setting
            (Sandler et al., CVPR 2018, section 6.3 and Table 7).
        mode: `"v3"` or `"v2"`. Defaults to `"v3"`.
        image_pooling: bool, add the image-pooling branch (v3). Defaults to
            `True`.
        dropout: float in [0, 1), rate of the dropout after the projection
            (v3). TF DeepLab keeps 0.9 and PaddleSeg uses 0.1; torchvision and
            segmentation_models.pytorch use 0.5. Defaults to `0.1`.
        separable: bool, depthwise-separable atrous branches (v3+, TF DeepLab
            `aspp_with_separable_conv`). Defaults to `False`.
        pool_align_corners: bool, `align_corners` of the resize of the pooled
            map (TF DeepLab uses True, torchvision / mmseg False). The pooled
            map is 1x1, so both give the same broadcast; the argument is kept
            for parity with the reference configurations. Defaults to `False`.
        bn_momentum: float, Keras BN momentum (torch 0.1 == Keras 0.9; TF
            DeepLab uses 0.9997). Defaults to `0.9`.
        bn_epsilon: float, BN epsilon. Defaults to `1e-5`.
        separable_inner_bn_act: bool, with `separable=True`: BN and ReLU
            between the depthwise and pointwise convolutions of the atrous
            branches (TF DeepLab, mmseg), or nothing between them
            (segmentation_models.pytorch's `SeparableConv2d`; see
            `kseg.layers.ConvBNAct`). Defaults to `True`.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        4D tensor `(batch, height, width, channels)` (channels_last) or
        `(batch, channels, height, width)` (channels_first). Any height and
        width, including odd and `None` sizes.

    Output shape:
        The input shape with `filters` channels.

    Example:

    >>> x = np.random.rand(1, 17, 23, 64).astype("float32")
    >>> kseg.layers.ASPP(filters=32, atrous_rates=(2, 4))(x).shape
    (1, 17, 23, 32)
    """

    def __init__(
        self,
        filters=256,
        atrous_rates=None,
        mode="v3",
        image_pooling=True,
        dropout=0.1,
        separable=False,
        pool_align_corners=False,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        separable_inner_bn_act=True,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = check_int("filters", filters, 1)
        self.mode = check_choice("mode", mode, ("v2", "v3"))
        self.atrous_rates = _normalize_rates(atrous_rates, self.mode)
        self.image_pooling = bool(image_pooling)
        self.dropout = check_float("dropout", dropout, 0.0, 1.0)
        if self.dropout >= 1.0:
            raise ValueError(f"Expected `dropout` in [0, 1). Received: dropout={dropout}")
        self.separable = bool(separable)
        self.pool_align_corners = bool(pool_align_corners)
        self.bn_momentum = check_float("bn_momentum", bn_momentum, 0.0, 1.0)
        self.bn_epsilon = check_float("bn_epsilon", bn_epsilon, 0.0, None, inclusive=False)
        self.separable_inner_bn_act = check_bool("separable_inner_bn_act", separable_inner_bn_act)
        self.data_format = check_conv_data_format(standardize_data_format(data_format))
        self._channel_axis = -1 if self.data_format == "channels_last" else 1
        self._spatial_axes = (1, 2) if self.data_format == "channels_last" else (2, 3)

        if self.mode == "v2":
            self.branches = [
                keras.layers.Conv2D(
                    self.filters,
                    3,
                    padding="same",
                    dilation_rate=rate,
                    use_bias=True,
                    # N(0, 0.01^2) weights and zero bias (SPEC 4.1, K1).
                    kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
                    bias_initializer="zeros",
                    data_format=self.data_format,
                    name=f"branch{i}",
                    dtype=self.dtype_policy,
                )
                for i, rate in enumerate(self.atrous_rates)
            ]
            return

        conv_kwargs = dict(
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            data_format=self.data_format,
            dtype=self.dtype_policy,
        )
        self.branches = [ConvBNAct(self.filters, 1, name="aspp0", **conv_kwargs)]
        for i, rate in enumerate(self.atrous_rates, start=1):
            self.branches.append(
                ConvBNAct(
                    self.filters,
                    3,
                    dilation_rate=rate,
                    separable=self.separable,
                    separable_inner_bn_act=self.separable_inner_bn_act,
                    name=f"aspp{i}",
                    **conv_kwargs,
                )
            )
        self.pool_conv = None
        self.pool_resize = None
        if self.image_pooling:
            self.pool_conv = ConvBNAct(self.filters, 1, name="image_pooling", **conv_kwargs)
            self.pool_resize = ResizeLike(
                interpolation="bilinear",
                align_corners=self.pool_align_corners,
                data_format=self.data_format,
                name="image_pooling_resize",
                dtype=self.dtype_policy,
            )
        self.projection = ConvBNAct(self.filters, 1, name="projection", **conv_kwargs)
        self.dropout_layer = keras.layers.Dropout(
            self.dropout, name="dropout", dtype=self.dtype_policy
        )

    def _pooled_shape(self, input_shape):
        shape = list(input_shape)
        for axis in self._spatial_axes:
            shape[axis] = 1
        return tuple(shape)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        for branch in self.branches:
            branch.build(input_shape)
        if self.mode == "v2":
            return
        if self.image_pooling:
            self.pool_conv.build(self._pooled_shape(input_shape))
        concat_shape = list(input_shape)
        n_branches = len(self.branches) + int(self.image_pooling)
        concat_shape[self._channel_axis] = self.filters * n_branches
        self.projection.build(tuple(concat_shape))

    def call(self, inputs, training=None):
        if self.mode == "v2":
            out = self.branches[0](inputs)
            for branch in self.branches[1:]:
                out = ops.add(out, branch(inputs))
            return out
        maps = [branch(inputs, training=training) for branch in self.branches]
        if self.image_pooling:
            pooled = ops.mean(inputs, axis=self._spatial_axes, keepdims=True)
            pooled = self.pool_conv(pooled, training=training)
            maps.append(self.pool_resize([pooled, inputs]))
        x = ops.concatenate(maps, axis=self._channel_axis)
        x = self.projection(x, training=training)
        return self.dropout_layer(x, training=training)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        shape[self._channel_axis] = self.filters
        return tuple(shape)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "atrous_rates": list(self.atrous_rates),
            "mode": self.mode,
            "image_pooling": self.image_pooling,
            "dropout": self.dropout,
            "separable": self.separable,
            "pool_align_corners": self.pool_align_corners,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "separable_inner_bn_act": self.separable_inner_bn_act,
            "data_format": self.data_format,
        }
