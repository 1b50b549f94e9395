"""Pyramid pooling module (PSPNet)."""

import keras
from keras import ops

from kseg._common import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    standardize_data_format,
)
from kseg.layers.conv import ConvBNAct
from kseg.layers.pooling import AdaptiveAveragePooling2D
from kseg.layers.resize import ResizeLike


@keras.saving.register_keras_serializable(package="kseg")
class PyramidPoolingModule(keras.layers.Layer):
    """Pyramid pooling module of PSPNet.

    Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017 (hszhao/semseg
    `model/pspnet.py`; SPEC 4.4). For every bin size `b`: adaptive average
    pooling to `b x b` with torch's overlapping bins (`pool{b}`), a 1x1
    ConvBNReLU to `filters` channels (`conv{b}`), and bilinear resizing back
    to the input size (`resize{b}`). The output is the concatenation of the
    input and the branch maps, `C + len(bins) * filters` channels.

    The order of the concatenation matters when weights are copied from a
    reference: `"ascending"` gives `[X, P1, P2, P3, P6]` (hszhao/semseg and
    mmseg), `"descending"` gives `[X, P6, P3, P2, P1]` (PaddleSeg, which
    reverses the branch list). The order is by bin size, whatever the order of
    `bins`. `input_position="last"` puts the input after the branch maps,
    `[P1, P2, P3, P6, X]` (segmentation_models.pytorch).

    segmentation_models.pytorch's `PSPModule` also leaves the BatchNorm out of
    the branch of bin size 1 (its convolution has a bias instead), since
    BatchNorm cannot train on one value per channel with a batch of one:
    `global_bn=False`.

    The 3x3 ConvBNReLU that fuses the concatenation (the "bottleneck") belongs
    to the model's head, not to this layer, so that its width and dropout stay
    with the model.

    Args:
        bins: sequence of distinct positive ints, the pooled grid sizes.
            Defaults to `(1, 2, 3, 6)`.
        filters: int or None, channels of each branch. None means
            `C // len(bins)` (hszhao/semseg `reduction_dim`), 512 for a
            2048-channel input. Defaults to `None`.
        align_corners: bool, `align_corners` of the bilinear resizes.
            hszhao/semseg uses True (with input sizes 8k + 1), mmseg and
            PaddleSeg False. Defaults to `False`.
        concat_order: `"ascending"` or `"descending"`, see above. Defaults to
            `"ascending"`.
        bn_momentum: float, Keras BN momentum (torch 0.1 == Keras 0.9).
            Defaults to `0.9`.
        bn_epsilon: float, BN epsilon. Defaults to `1e-5`.
        use_bn: bool, BatchNorm in the branch convolutions; without it they
            have a bias. Defaults to `True`.
        global_bn: bool, BatchNorm in the branch of bin size 1 too (when
            `use_bn`); False gives that branch a bias and no BatchNorm, see
            above. Defaults to `True`.
        input_position: `"first"` or `"last"`, where the input goes in the
            concatenation. Defaults to `"first"`.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        4D tensor `(batch, height, width, channels)` (channels_last) or
        `(batch, channels, height, width)` (channels_first), with a known
        number of channels.

    Output shape:
        The input shape with `channels + len(bins) * filters` channels.

    Example:

    >>> x = np.random.rand(1, 17, 23, 16).astype("float32")
    >>> kseg.layers.PyramidPoolingModule()(x).shape
    (1, 17, 23, 32)
    """

    def __init__(
        self,
        bins=(1, 2, 3, 6),
        filters=None,
        align_corners=False,
        concat_order="ascending",
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        use_bn=True,
        global_bn=True,
        input_position="first",
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(bins, int) or not isinstance(bins, (list, tuple)):
            raise TypeError(
                "Expected `bins` to be a list or tuple of positive integers. "
                f"Received: bins={bins!r}"
            )
        if len(bins) == 0:
            raise ValueError(
                "Expected `bins` to hold at least one bin size, for example (1, 2, 3, 6). "
                f"Received: bins={bins!r}"
            )
        self.bins = tuple(check_int("bins", b, 1) for b in bins)
        if len(set(self.bins)) != len(self.bins):
            raise ValueError(f"Expected distinct bin sizes. Received: bins={bins!r}")
        self.filters = None if filters is None else check_int("filters", filters, 1)
        self.align_corners = bool(align_corners)
        self.concat_order = check_choice("concat_order", concat_order, ("ascending", "descending"))
        self.bn_momentum = check_float("bn_momentum", bn_momentum, 0.0, 1.0)
        self.bn_epsilon = check_float("bn_epsilon", bn_epsilon, 0.0, None, inclusive=False)
        self.use_bn = check_bool("use_bn", use_bn)
        self.global_bn = check_bool("global_bn", global_bn)
        self.input_position = check_choice("input_position", input_position, ("first", "last"))
        self.data_format = standardize_data_format(data_format)
        self._channel_axis = -1 if self.data_format == "channels_last" else 1
        # Branch indices in concatenation order (by bin size).
        self._order = sorted(
            range(len(self.bins)),
            key=lambda i: self.bins[i],
            reverse=self.concat_order == "descending",
        )
        # One entry per bin, in the order of `bins`.
        self.pools = [
            AdaptiveAveragePooling2D(
                b, data_format=self.data_format, name=f"pool{b}", dtype=self.dtype_policy
            )
            for b in self.bins
        ]
        self.resizes = [
            ResizeLike(
                interpolation="bilinear",
                align_corners=self.align_corners,
                data_format=self.data_format,
                name=f"resize{b}",
                dtype=self.dtype_policy,
            )
            for b in self.bins
        ]
        self.convs = []
        # The branch convolutions need the input channels when `filters` is
        # None, so they are created here only when the width is known.
        if self.filters is not None:
            self._make_convs(self.filters)

    def _make_convs(self, filters):
        self.convs = [
            ConvBNAct(
                filters,
                1,
                use_bn=self.use_bn and (self.global_bn or b != 1),
                bn_momentum=self.bn_momentum,
                bn_epsilon=self.bn_epsilon,
                data_format=self.data_format,
                name=f"conv{b}",
                dtype=self.dtype_policy,
            )
            for b in self.bins
        ]

    def _branch_filters(self, channels):
        if self.filters is not None:
            return self.filters
        if channels is None:
            raise ValueError(
                "PyramidPoolingModule needs the number of input channels to derive "
                "`filters` = channels // len(bins); pass `filters` explicitly or give the "
                "input a known channel size."
            )
        filters = channels // len(self.bins)
        if filters < 1:
            raise ValueError(
                f"The input has fewer channels ({channels}) than there are bins "
                f"({len(self.bins)}), so channels // len(bins) is 0; pass `filters` explicitly. "
                f"Received: bins={self.bins}"
            )
        return filters

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        filters = self._branch_filters(input_shape[self._channel_axis])
        if not self.convs:
            self._make_convs(filters)
        spatial = (1, 2) if self.data_format == "channels_last" else (2, 3)
        for b, conv in zip(self.bins, self.convs):
            shape = list(input_shape)
            for axis in spatial:
                shape[axis] = b
            conv.build(tuple(shape))

    def call(self, inputs, training=None):
        maps = []
        for i in self._order:
            y = self.pools[i](inputs)
            y = self.convs[i](y, training=training)
            maps.append(self.resizes[i]([y, inputs]))
        maps = [inputs, *maps] if self.input_position == "first" else [*maps, inputs]
        return ops.concatenate(maps, axis=self._channel_axis)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        channels = shape[self._channel_axis]
        filters = self._branch_filters(channels)
        shape[self._channel_axis] = channels + len(self.bins) * filters
        return tuple(shape)

    def get_config(self):
        return {
            **super().get_config(),
            "bins": list(self.bins),
            "filters": self.filters,
            "align_corners": self.align_corners,
            "concat_order": self.concat_order,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "use_bn": self.use_bn,
            "global_bn": self.global_bn,
            "input_position": self.input_position,
            "data_format": self.data_format,
        }
