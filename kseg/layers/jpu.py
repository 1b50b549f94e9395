"""Joint pyramid upsampling (JPU), the neck of FastFCN and GINet."""

import keras
from keras import ops

from kseg._common import check_float, check_int, standardize_data_format
from kseg.layers.conv import ConvBNAct, SequenceOfLayers
from kseg.layers.resize import ResizeLike


class _SeparableConvBNReLU(SequenceOfLayers):
    """FastFCN's `SeparableConv2d` + BN + ReLU, one JPU branch.

    `depthwise kxk (dilated, no bias) -> BN -> pointwise 1x1 (no bias) -> BN
    -> ReLU`: there is no activation between the two convolutions (unlike
    `ConvBNAct(separable=True)`, which follows TF DeepLab). Built and
    serialised by `JointPyramidUpsampling`.
    """

    def __init__(self, filters, dilation_rate, bn_momentum, bn_epsilon, data_format, **kwargs):
        super().__init__(**kwargs)
        axis = -1 if data_format == "channels_last" else 1
        bn = dict(axis=axis, momentum=bn_momentum, epsilon=bn_epsilon, dtype=self.dtype_policy)
        self.depthwise = keras.layers.DepthwiseConv2D(
            3,
            padding="same",
            dilation_rate=dilation_rate,
            use_bias=False,
            depthwise_initializer="he_normal",
            data_format=data_format,
            name="depthwise",
            dtype=self.dtype_policy,
        )
        self.depthwise_bn = keras.layers.BatchNormalization(name="depthwise_bn", **bn)
        self.pointwise = keras.layers.Conv2D(
            filters,
            1,
            use_bias=False,
            kernel_initializer="he_normal",
            data_format=data_format,
            name="pointwise",
            dtype=self.dtype_policy,
        )
        self.pointwise_bn = keras.layers.BatchNormalization(name="pointwise_bn", **bn)
        self.act = keras.layers.Activation("relu", name="act", dtype=self.dtype_policy)
        self._layers_in_order = [
            self.depthwise,
            self.depthwise_bn,
            self.pointwise,
            self.pointwise_bn,
            self.act,
        ]


@keras.saving.register_keras_serializable(package="kseg")
class JointPyramidUpsampling(keras.layers.Layer):
    """Joint pyramid upsampling over three backbone stages.

    Wu et al., "FastFCN: Rethinking Dilated Convolution in the Backbone for
    Semantic Segmentation", 2019, as GINet uses it (PaddleSeg's `JPU`,
    SPEC 3.4). Each of the three inputs (stages 2, 3 and 4 of a ResNet) goes
    through a 3x3 ConvBNReLU to `width` channels (`conv2`, `conv3`, `conv4`);
    the second and third maps are resized to the first one's size (bilinear,
    `align_corners`; `resize3`, `resize4`) and the three are concatenated
    (`3 * width` channels, in input order: stage 2 first; FastFCN and
    PaddleSeg concatenate stage 4 first, so weights ported from them need
    the branches' depthwise and pointwise input channels reordered). Then one depthwise-separable
    branch per dilation rate (`dilation{d}`) maps the concatenation to `width`
    channels: depthwise 3x3 with that dilation (padding equal to it) -> BN ->
    pointwise 1x1 -> BN -> ReLU, with no activation between the two
    convolutions (FastFCN's `SeparableConv2d` + BN + ReLU, PaddleSeg's
    `SeparableConvBNReLU`; sub-layers `depthwise`, `depthwise_bn`,
    `pointwise`, `pointwise_bn`, `act`). The branches are concatenated: the
    output has `len(dilations) * width` channels at the size of the first
    input. No convolution has a bias.

    At output stride 8 the three stages have the same size and the resizes
    are identities; JPU was designed for an undilated backbone (output stride
    32), where it recovers the resolution of stage 2.

    Args:
        width: int, channels of every convolution. Defaults to `512`.
        dilations: sequence of distinct positive ints, the dilation rates of
            the separable branches. Defaults to `(1, 2, 4, 8)`.
        align_corners: bool, `align_corners` of the bilinear resizes.
            Defaults to `True` (the reference).
        bn_momentum: float, Keras BN momentum (torch 0.1 == Keras 0.9).
            Defaults to `0.9`.
        bn_epsilon: float, BN epsilon. Defaults to `1e-5`.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        A list of three 4D tensors, finest first, each
        `(batch, height_i, width_i, channels_i)` (channels_last) or
        `(batch, channels_i, height_i, width_i)` (channels_first).

    Output shape:
        4D tensor with the first input's spatial size and
        `len(dilations) * width` channels.

    Example:

    >>> c2 = np.random.rand(1, 16, 16, 8).astype("float32")
    >>> c3 = np.random.rand(1, 8, 8, 16).astype("float32")
    >>> c4 = np.random.rand(1, 4, 4, 32).astype("float32")
    >>> kseg.layers.JointPyramidUpsampling(width=4)([c2, c3, c4]).shape
    (1, 16, 16, 16)
    """

    def __init__(
        self,
        width=512,
        dilations=(1, 2, 4, 8),
        align_corners=True,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.width = check_int("width", width, 1)
        if isinstance(dilations, int) or not isinstance(dilations, (list, tuple)):
            raise TypeError(
                "Expected `dilations` to be a list or tuple of positive integers. "
                f"Received: dilations={dilations!r}"
            )
        if len(dilations) == 0:
            raise ValueError(
                "Expected `dilations` to hold at least one rate, for example (1, 2, 4, 8). "
                f"Received: dilations={dilations!r}"
            )
        self.dilations = tuple(check_int("dilations", d, 1) for d in dilations)
        if len(set(self.dilations)) != len(self.dilations):
            raise ValueError(f"Expected distinct dilation rates. Received: dilations={dilations!r}")
        self.align_corners = bool(align_corners)
        self.bn_momentum = check_float("bn_momentum", bn_momentum, 0.0, 1.0)
        self.bn_epsilon = check_float("bn_epsilon", bn_epsilon, 0.0, None, inclusive=False)
        self.data_format = standardize_data_format(data_format)
        self._channel_axis = -1 if self.data_format == "channels_last" else 1
        common = dict(
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            data_format=self.data_format,
            dtype=self.dtype_policy,
        )
        self.convs = [ConvBNAct(self.width, 3, name=f"conv{i}", **common) for i in (2, 3, 4)]
        self.resizes = [
            ResizeLike(
                align_corners=self.align_corners,
                data_format=self.data_format,
                name=f"resize{i}",
                dtype=self.dtype_policy,
            )
            for i in (3, 4)
        ]
        self.branches = [
            _SeparableConvBNReLU(self.width, d, name=f"dilation{d}", **common)
            for d in self.dilations
        ]

    def _check_inputs(self, shapes):
        if not isinstance(shapes, (list, tuple)) or len(shapes) != 3:
            count = len(shapes) if isinstance(shapes, (list, tuple)) else "a single tensor"
            raise ValueError(
                "Expected a list of 3 feature maps (stages 2, 3 and 4, finest first). "
                f"Received: {count} input(s)"
            )

    def build(self, input_shape):
        self._check_inputs(input_shape)
        for conv, shape in zip(self.convs, input_shape):
            conv.build(tuple(shape))
        first = list(input_shape[0])
        first[self._channel_axis] = 3 * self.width
        for branch in self.branches:
            branch.build(tuple(first))

    def call(self, inputs, training=None):
        self._check_inputs(inputs)
        maps = [conv(x, training=training) for conv, x in zip(self.convs, inputs)]
        ref = maps[0]
        maps = [ref] + [resize([m, ref]) for resize, m in zip(self.resizes, maps[1:])]
        x = ops.concatenate(maps, axis=self._channel_axis)
        return ops.concatenate(
            [branch(x, training=training) for branch in self.branches], axis=self._channel_axis
        )

    def compute_output_shape(self, input_shape):
        self._check_inputs(input_shape)
        shape = list(input_shape[0])
        shape[self._channel_axis] = len(self.dilations) * self.width
        return tuple(shape)

    def get_config(self):
        return {
            **super().get_config(),
            "width": self.width,
            "dilations": list(self.dilations),
            "align_corners": self.align_corners,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "data_format": self.data_format,
        }
