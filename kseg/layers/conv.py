"""Convolution, batch normalisation and activation in one block."""

import keras

from kseg._backend import check_conv_data_format
from kseg._common import (
    check_choice,
    check_float,
    check_int,
    normalize_tuple,
    standardize_data_format,
)


def _normalize_padding(padding):
    """Returns "same", "valid" or a pair of non-negative ints."""
    if isinstance(padding, str):
        return check_choice("padding", padding.lower(), ("same", "valid"))
    try:
        return normalize_tuple("padding", padding, 2, minimum=0)
    except (TypeError, ValueError):
        raise ValueError(
            "Expected `padding` to be 'same', 'valid', a non-negative integer or a tuple "
            f"of 2 non-negative integers. Received: padding={padding!r}"
        ) from None


def _get_activation(activation):
    """Validates `activation` (None, a name or a Keras activation) and returns it."""
    if activation is None:
        return None
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError):
        raise ValueError(
            "Expected `activation` to be None or the name of a Keras activation "
            f"(for example 'relu'). Received: activation={activation!r}"
        ) from None
    if callable(activation):
        return keras.activations.serialize(activation)
    return activation


class SequenceOfLayers(keras.layers.Layer):
    """A layer that runs its sub-layers `self._layers_in_order` one after another.

    Subclasses create the sub-layers in `__init__` and list them in
    `_layers_in_order`; BatchNormalization layers get the `training` flag.
    """

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self._layers_in_order:
            layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))

    def call(self, inputs, training=None):
        x = inputs
        for layer in self._layers_in_order:
            if isinstance(layer, keras.layers.BatchNormalization):
                x = layer(x, training=training)
            else:
                x = layer(x)
        return x

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self._layers_in_order:
            shape = tuple(layer.compute_output_shape(shape))
        return shape


@keras.saving.register_keras_serializable(package="kseg")
class ConvBNAct(SequenceOfLayers):
    """Convolution followed by batch normalisation and an activation.

    The plain form is `conv -> BN -> activation`, the "ConvBNReLU" block used by
    every reference in DeepLab, PSPNet and their ports. With `separable=True`
    the convolution is split as in TF DeepLab's `_split_separable_conv2d`
    (tensorflow/models `research/deeplab/core/utils.py`, used by
    `refine_by_decoder` and the separable ASPP in `model.py`):
    `depthwise kxk (dilated) -> BN -> act -> pointwise 1x1 -> BN -> act`
    (also mmseg's `DepthwiseSeparableConvModule`). With
    `separable_inner_bn_act=False` it follows segmentation_models.pytorch's
    `SeparableConv2d`: `depthwise -> pointwise -> BN -> act`, with nothing
    between the two convolutions.

    Padding: `"same"` is symmetric for stride 1 with any dilation (it equals
    torch `padding=dilation * (k - 1) // 2`). With stride 2 Keras' `"same"`
    pads more at the bottom/right for even inputs, whereas torch pads
    symmetrically; pass an integer `padding` to pad symmetrically with zeros
    and then run a `"valid"` convolution, as torch does.

    Sub-layers have fixed names so weights can be copied from a reference:
    `pad` (only for integer padding), `conv`, `bn`, `act` in the plain form;
    `pad`, `depthwise`, `depthwise_bn`, `depthwise_act`, `pointwise`,
    `pointwise_bn`, `act` in the separable form (absent parts are not created).

    Args:
        filters: int, number of output channels.
        kernel_size: int or pair of ints, size of the (depthwise) kernel.
            Defaults to `3`.
        strides: int or pair of ints. Defaults to `1`.
        dilation_rate: int or pair of ints, atrous rate (>= 1). Defaults to `1`.
        padding: `"same"`, `"valid"`, or an int / pair of ints for explicit
            symmetric zero padding followed by a `"valid"` convolution.
            Defaults to `"same"`.
        separable: bool, depthwise-separable convolution. Defaults to `False`.
        use_bn: bool, add batch normalisation. Defaults to `True`.
        activation: None or the name of a Keras activation. Defaults to
            `"relu"`.
        use_bias: bool or None. None means "bias only without BN", the rule of
            every reference (SPEC section 6.5). Defaults to `None`.
        bn_momentum: float, Keras BN momentum (torch momentum 0.1 is Keras
            0.9; SPEC section 6.3). Defaults to `0.9`.
        bn_epsilon: float, BN epsilon (torch default, SPEC section 6.3).
            Defaults to `1e-5`.
        separable_inner_bn_act: bool, in the separable form put BN and the
            activation between the depthwise and pointwise convolutions (TF
            DeepLab, mmseg) or not (segmentation_models.pytorch). In the
            latter form the depthwise convolution has no bias. Defaults to
            `True`.
        kernel_initializer: initializer of every convolution kernel. Defaults
            to `"he_normal"` (mmseg and PaddleSeg use Kaiming normal init for
            their ConvModule / ConvBNReLU).
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        4D tensor `(batch, height, width, channels)` for channels_last or
        `(batch, channels, height, width)` for channels_first.

    Output shape:
        4D tensor with `filters` channels and spatial sizes
        `floor((in + 2p - d(k-1) - 1) / s) + 1` (`ceil(in / s)` for `"same"`).

    Example:

    >>> x = np.random.rand(2, 17, 23, 16).astype("float32")
    >>> kseg.layers.ConvBNAct(8, 3, dilation_rate=2)(x).shape
    (2, 17, 23, 8)
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        dilation_rate=1,
        padding="same",
        separable=False,
        use_bn=True,
        activation="relu",
        use_bias=None,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        separable_inner_bn_act=True,
        kernel_initializer="he_normal",
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = check_int("filters", filters, 1)
        self.kernel_size = normalize_tuple("kernel_size", kernel_size, 2, 1)
        self.strides = normalize_tuple("strides", strides, 2, 1)
        self.dilation_rate = normalize_tuple("dilation_rate", dilation_rate, 2, 1)
        self.padding = _normalize_padding(padding)
        self.separable = bool(separable)
        self.use_bn = bool(use_bn)
        self.activation = _get_activation(activation)
        self.use_bias = (not self.use_bn) if use_bias is None else bool(use_bias)
        self.bn_momentum = check_float("bn_momentum", bn_momentum, 0.0, 1.0)
        self.bn_epsilon = check_float("bn_epsilon", bn_epsilon, 0.0, None, inclusive=False)
        self.separable_inner_bn_act = bool(separable_inner_bn_act)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.data_format = check_conv_data_format(standardize_data_format(data_format))
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                "`strides > 1` together with `dilation_rate > 1` is not supported by "
                "Keras convolutions. Received: "
                f"strides={self.strides}, dilation_rate={self.dilation_rate}"
            )
        self._channel_axis = -1 if self.data_format == "channels_last" else 1

        conv_padding = "same" if self.padding == "same" else "valid"
        self.pad = None
        if isinstance(self.padding, tuple):
            self.pad = keras.layers.ZeroPadding2D(
                self.padding, data_format=self.data_format, name="pad", dtype=self.dtype_policy
            )
        common = dict(
            strides=self.strides,
            padding=conv_padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
            dtype=self.dtype_policy,
        )
        self._layers_in_order = [self.pad] if self.pad is not None else []
        if not self.separable:
            self.conv = keras.layers.Conv2D(
                self.filters,
                self.kernel_size,
                use_bias=self.use_bias,
                kernel_initializer=self._make_initializer(),
                name="conv",
                **common,
            )
            self.bn = self._make_bn("bn") if self.use_bn else None
            self._layers_in_order += [self.conv, self.bn]
        else:
            inner = self.separable_inner_bn_act
            self.depthwise = keras.layers.DepthwiseConv2D(
                self.kernel_size,
                use_bias=self.use_bias and inner,
                depthwise_initializer=self._make_initializer(),
                name="depthwise",
                **common,
            )
            self.depthwise_bn = self._make_bn("depthwise_bn") if (inner and self.use_bn) else None
            self.depthwise_act = (
                keras.layers.Activation(
                    self.activation, name="depthwise_act", dtype=self.dtype_policy
                )
                if (inner and self.activation is not None)
                else None
            )
            self.pointwise = keras.layers.Conv2D(
                self.filters,
                1,
                use_bias=self.use_bias,
                kernel_initializer=self._make_initializer(),
                data_format=self.data_format,
                name="pointwise",
                dtype=self.dtype_policy,
            )
            self.pointwise_bn = self._make_bn("pointwise_bn") if self.use_bn else None
            self._layers_in_order += [
                self.depthwise,
                self.depthwise_bn,
                self.depthwise_act,
                self.pointwise,
                self.pointwise_bn,
            ]
        self.act = (
            keras.layers.Activation(self.activation, name="act", dtype=self.dtype_policy)
            if self.activation is not None
            else None
        )
        self._layers_in_order.append(self.act)
        self._layers_in_order = [la for la in self._layers_in_order if la is not None]

    def _make_initializer(self):
        # A fresh instance per convolution, so that seeded initializers do not
        # give every kernel the same values.
        return keras.initializers.get(keras.initializers.serialize(self.kernel_initializer))

    def _make_bn(self, name):
        return keras.layers.BatchNormalization(
            axis=self._channel_axis,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            name=name,
            dtype=self.dtype_policy,
        )

    def get_config(self):
        padding = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "dilation_rate": list(self.dilation_rate),
            "padding": padding,
            "separable": self.separable,
            "use_bn": self.use_bn,
            "activation": self.activation,
            "use_bias": self.use_bias,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "separable_inner_bn_act": self.separable_inner_bn_act,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "data_format": self.data_format,
        }
