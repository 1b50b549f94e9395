"""Convolution output sizes and theoretical receptive fields of Keras models."""

import dataclasses
import math

import keras

__all__ = [
    "conv_output_size",
    "ReceptiveFieldRecord",
    "receptive_field",
    "format_receptive_field",
    "print_receptive_field",
]


def _check_nonneg_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected `{name}` to be an integer. Received: {name}={value!r}")
    if value < minimum:
        raise ValueError(f"Expected `{name}` to be an integer >= {minimum}. Received: {name}={value}")
    return value


def conv_output_size(input_size, kernel_size, stride=1, padding=0, dilation=1, ceil_mode=False):
    """Spatial output length of a convolution or pooling along one axis.

    `out = floor((in + 2p - d(k - 1) - 1) / s) + 1` (the formula of torch's
    `Conv2d` / `MaxPool2d` documentation). With `ceil_mode=True` the floor is a
    ceiling, as in Caffe pooling and torch `ceil_mode=True`; like torch, the last
    window must then start inside the input or the left padding, otherwise it
    is dropped.

    Args:
        input_size: int, input length (>= 1).
        kernel_size: int (>= 1).
        stride: int (>= 1). Defaults to `1`.
        padding: int, zeros added on each side (>= 0). Defaults to `0`.
        dilation: int (>= 1). Defaults to `1`.
        ceil_mode: bool, round up instead of down. Defaults to `False`.

    Returns:
        The output length, an int.

    Example:

    >>> conv_output_size(65, 3, stride=2, padding=1)
    33
    >>> conv_output_size(224, 3, stride=1, padding=12, dilation=12)
    224
    """
    n = _check_nonneg_int("input_size", input_size, 1)
    k = _check_nonneg_int("kernel_size", kernel_size, 1)
    s = _check_nonneg_int("stride", stride, 1)
    p = _check_nonneg_int("padding", padding, 0)
    d = _check_nonneg_int("dilation", dilation, 1)
    span = n + 2 * p - d * (k - 1) - 1
    if span < 0:
        raise ValueError(
            "The dilated kernel is larger than the padded input: "
            f"effective kernel {d * (k - 1) + 1} > padded input {n + 2 * p}. "
            f"Received: input_size={n}, kernel_size={k}, padding={p}, dilation={d}"
        )
    if ceil_mode:
        out = -(-span // s) + 1
        # torch: the last window has to start inside the input or left padding.
        if (out - 1) * s >= n + p:
            out -= 1
        return out
    return span // s + 1


@dataclasses.dataclass(frozen=True)
class ReceptiveFieldRecord:
    """The geometry of one layer and the receptive field of its output.

    Every field that depends on the axis is a tuple with one value per spatial
    axis. `receptive_field` is `math.inf` on an axis where the output sees the
    whole input (global or adaptive pooling, image pooling).

    Attributes:
        name: layer name (nested layers of sub-models as `outer/inner`).
        layer_type: class name of the layer.
        kernel: kernel (or pool) size, 1 for layers that keep the geometry.
        stride: stride (`1/s` for transposed convolutions and upsampling).
        dilation: dilation rate.
        effective_kernel: `d (k - 1) + 1`.
        jump: distance in input pixels between two adjacent output pixels
            (the cumulative stride).
        receptive_field: size of the input region that one output pixel sees.
        output_shape: the layer's output shape when known, else None.
    """

    name: str
    layer_type: str
    kernel: tuple
    stride: tuple
    dilation: tuple
    effective_kernel: tuple
    jump: tuple
    receptive_field: tuple
    output_shape: tuple = None


def _tuple(value, n):
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,) * n


def _geometry(layer, n):
    """Returns (kind, kernel, stride, dilation) for one layer.

    kind is "conv", "transpose", "global", "merge" or "identity".
    """
    ones = (1,) * n
    L = keras.layers
    # Late import: kseg.layers imports keras only, and importing it here keeps
    # kseg.utils importable on its own.
    from kseg import layers as kl

    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        return "transpose", _tuple(layer.kernel_size, n), _tuple(layer.strides, n), _tuple(
            layer.dilation_rate, n
        )
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D, L.DepthwiseConv2D, L.SeparableConv2D)):
        return "conv", _tuple(layer.kernel_size, n), _tuple(layer.strides, n), _tuple(
            layer.dilation_rate, n
        )
    if isinstance(layer, kl.ConvBNAct):
        return "conv", _tuple(layer.kernel_size, n), _tuple(layer.strides, n), _tuple(
            layer.dilation_rate, n
        )
    pools = (
        L.MaxPooling1D,
        L.MaxPooling2D,
        L.MaxPooling3D,
        L.AveragePooling1D,
        L.AveragePooling2D,
        L.AveragePooling3D,
    )
    if isinstance(layer, pools):
        return "conv", _tuple(layer.pool_size, n), _tuple(layer.strides, n), ones
    global_types = (
        L.GlobalAveragePooling1D,
        L.GlobalAveragePooling2D,
        L.GlobalAveragePooling3D,
        L.GlobalMaxPooling1D,
        L.GlobalMaxPooling2D,
        L.GlobalMaxPooling3D,
        kl.AdaptiveAveragePooling2D,
        kl.PyramidPoolingModule,
    )
    if isinstance(layer, global_types):
        return "global", ones, ones, ones
    if isinstance(layer, kl.ASPP):
        if layer.mode == "v3" and layer.image_pooling:
            return "global", ones, ones, ones
        rate = max(layer.atrous_rates)
        return "conv", (3,) * n, ones, (rate,) * n
    if isinstance(layer, (L.UpSampling1D, L.UpSampling2D, L.UpSampling3D)):
        size = getattr(layer, "size", 1)
        return "transpose", ones, _tuple(size, n), ones
    if isinstance(layer, kl.DeepLabV3PlusDecoder):
        return "decoder", (3,) * n, ones, ones
    # Generic kseg-style layers that expose their geometry.
    if all(hasattr(layer, a) for a in ("kernel_size", "strides", "dilation_rate")):
        try:
            return "conv", _tuple(layer.kernel_size, n), _tuple(layer.strides, n), _tuple(
                layer.dilation_rate, n
            )
        except TypeError:
            pass
    return "identity", ones, ones, ones


def _input_list(layer):
    try:
        inputs = layer.input
    except (AttributeError, ValueError):
        raise ValueError(
            f"Cannot follow the inputs of layer '{layer.name}': it is called more than once "
            "or is not connected. `receptive_field` supports Sequential and functional "
            "models whose layers are each called once."
        ) from None
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def _output_shape(layer):
    try:
        out = layer.output
    except (AttributeError, ValueError):
        return None
    if isinstance(out, (list, tuple)):
        return None
    return tuple(out.shape)


def _apply(layer, in_states, n, prefix):
    """Geometry step for one layer. Returns (record, (rf, jump))."""
    rf = tuple(max(s[0][a] for s in in_states) for a in range(n))
    jump = tuple(min(s[1][a] for s in in_states) for a in range(n))
    kind, kernel, stride, dilation = _geometry(layer, n)
    eff = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    if kind == "conv":
        rf = tuple(r + (e - 1) * j for r, e, j in zip(rf, eff, jump))
        jump = tuple(j * s for j, s in zip(jump, stride))
    elif kind == "transpose":
        jump = tuple(j / s for j, s in zip(jump, stride))
        rf = tuple(r + (e - 1) * j for r, e, j in zip(rf, eff, jump))
        stride = tuple(1 / s if s != 1 else 1 for s in stride)
    elif kind == "global":
        rf = (math.inf,) * n
    elif kind == "decoder":
        # [high_level, low_level]: the output lives on the low-level grid and
        # goes through `num_convs` 3x3 convolutions there.
        jump = tuple(in_states[-1][1])
        for _ in range(layer.num_convs):
            rf = tuple(r + (e - 1) * j for r, e, j in zip(rf, eff, jump))
    record = ReceptiveFieldRecord(
        name=prefix + layer.name,
        layer_type=type(layer).__name__,
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        effective_kernel=eff,
        jump=_clean(jump),
        receptive_field=_clean(rf),
        output_shape=_output_shape(layer),
    )
    return record, (rf, jump)


def _clean(values):
    return tuple(int(v) if (v != math.inf and float(v).is_integer()) else v for v in values)


def _walk(model, in_states, n, prefix):
    """Walks `model`; returns (records, states of the model outputs)."""
    records = []
    if isinstance(model, keras.Sequential):
        state = in_states[0]
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if isinstance(layer, keras.Model):
                sub, states = _walk(layer, [state], n, prefix + layer.name + "/")
                records += sub
                state = states[0]
                continue
            rec, state = _apply(layer, [state], n, prefix)
            records.append(rec)
        return records, [state]

    states = {id(t): s for t, s in zip(model.inputs, in_states)}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        ins = [states[id(t)] for t in _input_list(layer)]
        if isinstance(layer, keras.Model):
            sub, outs = _walk(layer, ins, n, prefix + layer.name + "/")
            records += sub
        else:
            rec, out = _apply(layer, ins, n, prefix)
            records.append(rec)
            outs = [out]
        layer_outs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
        if isinstance(layer.output, dict):
            layer_outs = list(layer.output.values())
        for t, s in zip(layer_outs, outs * len(layer_outs) if len(outs) == 1 else outs):
            states[id(t)] = s
    return records, [states[id(t)] for t in keras.tree.flatten(model.outputs)]


def receptive_field(model, input_shape=None):
    """Theoretical receptive field of every layer of a Keras model.

    Walks the layers in topological order and keeps, per spatial axis, the
    receptive field `r` and the jump `j` (distance in input pixels between two
    neighbouring output pixels; the cumulative stride). A layer with kernel
    `k`, dilation `d` and stride `s` gives
    `r_out = r_in + (d (k - 1)) j_in` and `j_out = j_in s` (Araujo et al.,
    "Computing Receptive Fields of Convolutional Neural Networks", Distill
    2019). Dilation therefore widens the receptive field without changing the
    jump, which is how DeepLab keeps a large field at output stride 8.

    Handled layers: Keras convolutions (including depthwise, separable and
    transposed, the latter with stride `1/s`), max/average pooling,
    `UpSampling*` (stride `1/s`), `kseg.layers.ConvBNAct`, `ASPP` (its widest
    atrous branch; the whole image with image pooling), and
    `DeepLabV3PlusDecoder` (its 3x3 convolutions on the low-level grid).
    Global pooling, `AdaptiveAveragePooling2D` and `PyramidPoolingModule` are
    reported as seeing the whole image (`math.inf`). Every other layer
    (activations, BN, `ZeroPadding2D`, cropping, resizing to another tensor,
    ...) keeps the geometry. Where several branches merge, the record takes
    the largest receptive field and the smallest jump among its inputs.
    Nested models are walked and named `outer/inner`. Padding does not change
    the receptive field, only where it is centred, which is not reported.

    Args:
        model: a built Keras `Sequential` or functional model. Each layer
            must be called once.
        input_shape: optional input shape without the batch axis, used to
            build a `Sequential` model that has not been built yet.

    Returns:
        A list of `ReceptiveFieldRecord`, one per layer, in topological order.

    Example:

    >>> model = keras.Sequential([keras.Input((None, None, 3))] +
    ...                          [keras.layers.Conv2D(8, 3) for _ in range(3)])
    >>> receptive_field(model)[-1].receptive_field
    (7, 7)
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected `model` to be a keras.Model. Received: model={model!r}")
    if input_shape is not None and not model.built:
        model.build((None,) + tuple(input_shape))
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            "Expected a built model with known inputs. Build it first, for example with "
            "`keras.Input(shape)` as its first layer or `receptive_field(model, "
            f"input_shape=...)`. Received: model={model.name!r}"
        )
    n = len(inputs[0].shape) - 2
    start = ((1,) * n, (1,) * n)
    records, _ = _walk(model, [start] * len(inputs), n, "")
    return records


def _fmt(values):
    def one(v):
        if v == math.inf:
            return "whole"
        if isinstance(v, float):
            return f"{v:g}"
        return str(v)

    if len(set(values)) == 1:
        return one(values[0])
    return "x".join(one(v) for v in values)


def format_receptive_field(records):
    """Formats the output of `receptive_field` (or a model) as a text table.

    Columns: layer, type, kernel, dilation, effective kernel, stride, jump
    (cumulative stride) and receptive field. A square value is written once
    (`7`), otherwise per axis (`7x5`); "whole" marks the whole image.
    """
    if isinstance(records, keras.Model):
        records = receptive_field(records)
    header = ("layer", "type", "kernel", "dilation", "eff. kernel", "stride", "jump", "RF")
    rows = [header]
    for r in records:
        rows.append(
            (
                r.name,
                r.layer_type,
                _fmt(r.kernel),
                _fmt(r.dilation),
                _fmt(r.effective_kernel),
                _fmt(r.stride),
                _fmt(r.jump),
                _fmt(r.receptive_field),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_receptive_field(model_or_records, print_fn=print):
    """Prints `format_receptive_field(model_or_records)` with `print_fn`."""
    print_fn(format_receptive_field(model_or_records))
