"""The aligned Xception-65 of DeepLab v3+ against timm's `xception65`, and its weight loading."""

import keras
import numpy as np
import pytest

from kseg.backbones import feature_info
from kseg.backbones.xception import Xception65
from kseg.convert.state_dict import load_timm_xception, read_state_dict
from tests.torch_refs import assert_matches, import_reference, nhwc, randomize_batchnorm

# Odd sizes, so that every stride-2 step has to round as torch does.
SMALL = (33, 47)
SIZE = (97, 131)
KEYS = ("level1", "level2", "level3", "level4", "level5")
# timm 1.0's xception65 without its classifier, as stated when the backbone was asked
# for; the test also counts timm's own parameters.
TIMM_PARAMETERS = 37_867_312

_MODELS = {}


def _model(output_stride):
    """One randomly initialised backbone per output stride, shared by the tests.

    The output stride 32 one takes single-channel images: without weights any
    channel count builds.
    """
    if output_stride not in _MODELS:
        channels = 1 if output_stride == 32 else 3
        _MODELS[output_stride] = Xception65(
            input_shape=(None, None, channels), output_stride=output_stride
        )
    return _MODELS[output_stride]


def _run(model, images):
    """The backbone's features as numpy arrays.

    JAX runs the model fastest as one compiled program (`predict`, 2.9 s against
    4.6 s eagerly on this model at 33x47), TensorFlow eagerly (1.5 s against
    10.4 s to trace and run `predict`).
    """
    if keras.backend.backend() == "jax":
        return model.predict(images, verbose=0)
    return {k: keras.ops.convert_to_numpy(v) for k, v in model(images, training=False).items()}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((1, *SMALL, 3)).astype("float32")


def _reference(output_stride=32, seed=1):
    """timm's xception65 with its classifier, random weights and non-trivial BN."""
    timm = import_reference("timm")
    import torch

    torch.manual_seed(seed)
    model = timm.create_model("xception65", output_stride=output_stride)
    return randomize_batchnorm(model, seed=seed)


def _timm_features(reference, images):
    """timm's feature taps (the modules its `feature_info` names), keyed level1..level5."""
    import torch

    taps, handles = {}, []
    for index, info in enumerate(reference.feature_info):
        key = KEYS[index]

        def hook(module, args, output, key=key):
            taps[key] = nhwc(output.clone())

        handles.append(reference.get_submodule(info["module"]).register_forward_hook(hook))
    try:
        with torch.no_grad():
            reference(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    finally:
        for handle in handles:
            handle.remove()
    return taps


def _assert_features_match(model, reference, images):
    info = feature_info(model)
    assert [spec.channels for spec in info.features] == [
        entry["num_chs"] for entry in reference.feature_info
    ]
    assert [spec.stride for spec in info.features] == [
        entry["reduction"] for entry in reference.feature_info
    ]
    expected = _timm_features(reference, images)
    got = _run(model, images)
    assert sorted(got) == sorted(expected) == sorted(KEYS)
    for key in KEYS:
        assert_matches(got[key], expected[key])


def test_parameter_count_equals_timm():
    timm = import_reference("timm")
    reference = timm.create_model("xception65", num_classes=0)
    parameters = sum(p.numel() for p in reference.parameters())
    statistics = sum(
        b.numel()
        for name, b in reference.named_buffers()
        if name.endswith((".running_mean", ".running_var"))
    )
    model = _model(16)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert trainable == parameters == TIMM_PARAMETERS
    assert frozen == statistics


@pytest.mark.large
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_features_match_timm(images, output_stride):
    """Every level equals timm's tap; the state dict keeps timm's classifier, which is skipped."""
    reference = _reference(output_stride, seed=output_stride)
    assert "head.fc.weight" in reference.state_dict()
    model = Xception65(output_stride=output_stride, weights=reference.state_dict())
    _assert_features_match(model, reference, images)


def test_dilated_features_match_timm_on_the_shared_model(images):
    """Output stride 8 (dilation 2 and 4) through `load_timm_xception` into a built model."""
    reference = _reference(8, seed=3)
    model = _model(8)
    load_timm_xception(model, read_state_dict(reference.state_dict()))
    _assert_features_match(model, reference, images)


def test_loads_a_safetensors_file(images, tmp_path):
    """A `.safetensors` path (read without torch) at output stride 16 (dilation 2 in module 20).

    Output stride 32 (no dilation) is checked with the `large` tests above.
    """
    from safetensors.torch import save_file

    reference = _reference(16, seed=5)
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(path))
    model = Xception65(output_stride=16, weights=str(path))
    _assert_features_match(model, reference, images)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_stride_contract_on_an_odd_size(output_stride):
    model = _model(output_stride)
    info = feature_info(model)
    assert info.keys() == KEYS
    assert (info.family, info.output_stride, info.preprocessing) == (
        "xception65",
        output_stride,
        "tf",
    )
    assert (info.low_level, info.aux, info.high_level) == ("level2", "level4", "level5")
    channels = model.input.shape[-1]
    spec = model.compute_output_spec(keras.KerasTensor((1, *SIZE, channels)))
    assert sorted(spec) == sorted(KEYS)
    for level, key in enumerate(KEYS, start=1):
        stride = min(2**level, output_stride)
        assert info.stride(key) == stride, key
        assert tuple(spec[key].shape[1:3]) == tuple(-(-s // stride) for s in SIZE), key
        assert spec[key].shape[3] == info.channels(key), key
        assert model.get_layer(info[key].layer).output is not None
    # The stride-4 feature is DeepLab v3+'s low-level input: 256 channels.
    assert info.channels("level2") == 256


def test_dilation_follows_timm():
    timm = import_reference("timm")
    for output_stride in (8, 16, 32):
        reference = timm.create_model("xception65", output_stride=output_stride)
        model = _model(output_stride)
        for index, block in enumerate(reference.blocks):
            conv = block.stack.conv3.conv_dw
            layer = model.get_layer(f"blocks_{index}_stack_conv3_conv_dw")
            assert layer.dilation_rate == conv.dilation, (output_stride, index)
            assert layer.strides == conv.stride, (output_stride, index)
        last = feature_info(model)["level5"]
        assert last.dilation == (reference.blocks[-1].stack.conv1.conv_dw.dilation[0],)


def test_bn_and_bias_follow_timm():
    timm = import_reference("timm")
    import torch

    reference = timm.create_model("xception65", num_classes=0)
    norms = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    convs = [m for m in reference.modules() if isinstance(m, torch.nn.Conv2d)]
    model = _model(16)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == len(norms)
    assert {layer.epsilon for layer in bns} == {m.eps for m in norms}
    assert {layer.momentum for layer in bns} == {1 - m.momentum for m in norms}
    assert all(m.bias is None for m in convs)
    assert not any(getattr(layer, "use_bias", False) for layer in model.layers)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"output_stride.*\(8, 16, 32\).*output_stride=4"):
        Xception65(output_stride=4)
    with pytest.raises(ValueError, match="xception65.ra3_in1k.*model.safetensors"):
        Xception65(weights="imagenet")
    with pytest.raises(ValueError, match="no such file"):
        Xception65(weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match=r"3 input channels.*input_shape=\(None, None, 4\)"):
        Xception65(input_shape=(None, None, 4), weights={"stem.0.conv.weight": np.zeros(1)})
    # Without weights any channel count builds (a single-channel model is in `_model(32)`).
    assert _model(32).input.shape[-1] == 1


def test_channels_first_is_refused(monkeypatch):
    monkeypatch.setattr(keras.config, "image_data_format", lambda: "channels_first")
    with pytest.raises(ValueError, match="image_data_format='channels_first'"):
        Xception65()


def _edited(state, edit):
    state = dict(state)
    edit(state)
    return state


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda s: s.pop("blocks.7.stack.conv2.conv_dw.weight"),
            "missing from the checkpoint: blocks.7.stack.conv2.conv_dw.weight",
        ),
        (
            lambda s: s.update({"blocks.21.stack.conv1.conv_dw.weight": np.zeros((2, 1, 3, 3))}),
            "unexpected in the checkpoint: blocks.21.stack.conv1.conv_dw.weight",
        ),
        (
            lambda s: s.update({"blocks.4.stack.conv1.conv_dw.weight": np.zeros((728, 1, 5, 5))}),
            r"wrong shape: blocks_4_stack_conv1_conv_dw <- blocks.4.stack.conv1.conv_dw.weight",
        ),
        (
            lambda s: s.update({"blocks.0.shortcut.bn.running_var": np.ones(64, "float32")}),
            "wrong shape: blocks_0_shortcut_bn",
        ),
    ],
    ids=["missing", "extra", "depthwise-shape", "bn-shape"],
)
def test_strict_loading_leaves_the_model_untouched(edit, message):
    reference = _reference(16, seed=7)
    state = _edited(read_state_dict(reference.state_dict()), edit)
    model = _model(16)
    watched = [
        model.get_layer("stem_0_conv").kernel,
        model.get_layer("blocks_4_stack_conv1_conv_dw").kernel,
        model.get_layer("blocks_20_stack_conv3_bn_pw").moving_variance,
    ]
    before = [keras.ops.convert_to_numpy(w) for w in watched]
    with pytest.raises(ValueError, match=message) as caught:
        load_timm_xception(model, state)
    assert "nothing was loaded" in str(caught.value)
    for old, new in zip(before, watched):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))


def test_weights_argument_is_strict():
    """The builder's `weights=` raises as the loader does (the classifier is the one skip)."""
    reference = _reference(16, seed=9)
    state = dict(reference.state_dict())
    state["head.extra.weight"] = state["head.fc.weight"]
    with pytest.raises(ValueError, match="unexpected in the checkpoint: head.extra.weight"):
        Xception65(weights=state)
