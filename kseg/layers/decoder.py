"""DeepLab v3+ decoder."""

import keras
from keras import ops

from kseg._common import (
    check_bool,
    check_float,
    check_int,
    standardize_data_format,
)
from kseg.layers.conv import ConvBNAct
from kseg.layers.resize import ResizeLike


@keras.saving.register_keras_serializable(package="kseg")
class DeepLabV3PlusDecoder(keras.layers.Layer):
    """Decoder of DeepLab v3+: fuses the ASPP output with a low-level feature.

    Chen et al., "Encoder-Decoder with Atrous Separable Convolution for
    Semantic Image Segmentation", ECCV 2018 (TF DeepLab `refine_by_decoder`;
    SPEC 4.3). Called on `[high_level, low_level]`: the low-level feature (the
    stride-4 map) goes through a 1x1 ConvBNReLU to `low_level_filters`
    channels (`low_level_projection`); the high-level feature (the ASPP
    output) is resized bilinearly to the low-level size (`resize`); the two
    are concatenated high-level first, as in TF DeepLab, mmseg and
    segmentation_models.pytorch, and fused by `num_convs` 3x3 ConvBNReLU to
    `filters` channels (`decoder_conv0`, `decoder_conv1`, ...), separable
    with `separable=True` (TF DeepLab `decoder_use_separable_conv`).

    The output stays at the low-level resolution; the model adds the 1x1
    classifier and the final resize. Any input sizes work, including odd ones
    and a high-level map that is not an exact fraction of the low-level one.

    Args:
        filters: int, channels of the fusion convolutions and of the output.
            Defaults to `256`.
        low_level_filters: int, channels of the low-level projection.
            Defaults to `48`.
        separable: bool, depthwise-separable fusion convolutions. Defaults to
            `False`.
        align_corners: bool, `align_corners` of the bilinear resize. TF
            DeepLab and segmentation_models.pytorch use True, mmseg False.
            Defaults to `False`.
        num_convs: int, number of 3x3 fusion convolutions (2 in the paper,
            TF DeepLab and mmseg; 1 in segmentation_models.pytorch). Defaults
            to `2`.
        bn_momentum: float, Keras BN momentum (torch 0.1 == Keras 0.9).
            Defaults to `0.9`.
        bn_epsilon: float, BN epsilon. Defaults to `1e-5`.
        separable_inner_bn_act: bool, with `separable=True`: BN and ReLU
            between the depthwise and pointwise convolutions (TF DeepLab,
            mmseg), or nothing between them (segmentation_models.pytorch's
            `SeparableConv2d`; see `kseg.layers.ConvBNAct`). Defaults to
            `True`.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        A list `[high_level, low_level]` of 4D tensors in `data_format`.

    Output shape:
        4D tensor with the batch and spatial sizes of `low_level` and
        `filters` channels.

    Example:

    >>> high = np.random.rand(1, 5, 6, 32).astype("float32")
    >>> low = np.random.rand(1, 17, 23, 16).astype("float32")
    >>> kseg.layers.DeepLabV3PlusDecoder(filters=8, low_level_filters=4)([high, low]).shape
    (1, 17, 23, 8)
    """

    def __init__(
        self,
        filters=256,
        low_level_filters=48,
        separable=False,
        align_corners=False,
        num_convs=2,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        separable_inner_bn_act=True,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = check_int("filters", filters, 1)
        self.low_level_filters = check_int("low_level_filters", low_level_filters, 1)
        self.separable = bool(separable)
        self.align_corners = bool(align_corners)
        self.num_convs = check_int("num_convs", num_convs, 1)
        self.bn_momentum = check_float("bn_momentum", bn_momentum, 0.0, 1.0)
        self.bn_epsilon = check_float("bn_epsilon", bn_epsilon, 0.0, None, inclusive=False)
        self.separable_inner_bn_act = check_bool("separable_inner_bn_act", separable_inner_bn_act)
        self.data_format = standardize_data_format(data_format)
        self._channel_axis = -1 if self.data_format == "channels_last" else 1

        conv_kwargs = dict(
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            data_format=self.data_format,
            dtype=self.dtype_policy,
        )
        self.low_level_projection = ConvBNAct(
            self.low_level_filters, 1, name="low_level_projection", **conv_kwargs
        )
        self.resize = ResizeLike(
            interpolation="bilinear",
            align_corners=self.align_corners,
            data_format=self.data_format,
            name="resize",
            dtype=self.dtype_policy,
        )
        self.fusion_convs = [
            ConvBNAct(
                self.filters,
                3,
                separable=self.separable,
                separable_inner_bn_act=self.separable_inner_bn_act,
                name=f"decoder_conv{i}",
                **conv_kwargs,
            )
            for i in range(self.num_convs)
        ]

    def _check_inputs(self, shapes):
        if not isinstance(shapes, (list, tuple)) or len(shapes) != 2:
            raise ValueError(
                "DeepLabV3PlusDecoder expects a list of two tensors [high_level, low_level]. "
                f"Received: inputs={shapes!r}"
            )
        for name, shape in zip(("high_level", "low_level"), shapes):
            if len(shape) != 4:
                raise ValueError(
                    f"Expected `{name}` to have rank 4. Received: {name}.shape={tuple(shape)}"
                )

    def build(self, input_shape):
        self._check_inputs(input_shape)
        high_shape, low_shape = (tuple(s) for s in input_shape)
        self.low_level_projection.build(low_shape)
        shape = list(low_shape)
        high_c = high_shape[self._channel_axis]
        shape[self._channel_axis] = None if high_c is None else high_c + self.low_level_filters
        shape = tuple(shape)
        for conv in self.fusion_convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)

    def call(self, inputs, training=None):
        if isinstance(inputs, (list, tuple)):
            self._check_inputs([tuple(t.shape) for t in inputs])
        else:
            self._check_inputs(tuple(inputs.shape))
        high, low = inputs
        low = self.low_level_projection(low, training=training)
        high = self.resize([high, low])
        x = ops.concatenate([high, low], axis=self._channel_axis)
        # Eager backends would hold both maps through the fusion convolutions.
        del high, low
        for conv in self.fusion_convs:
            x = conv(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        self._check_inputs(input_shape)
        shape = list(input_shape[1])
        shape[self._channel_axis] = self.filters
        return tuple(shape)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "low_level_filters": self.low_level_filters,
            "separable": self.separable,
            "align_corners": self.align_corners,
            "num_convs": self.num_convs,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "separable_inner_bn_act": self.separable_inner_bn_act,
            "data_format": self.data_format,
        }
