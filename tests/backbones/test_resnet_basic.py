"""ResNet-18 and ResNet-34 (basic blocks) against torchvision, dilated as smp's encoders."""

import copy
import hashlib

import keras
import numpy as np
import pytest

import kseg
from kseg.backbones import ResNet, ResNet18, ResNet34, feature_info
from kseg.convert import state_dict
from kseg.convert.state_dict import load_torch_resnet, read_state_dict
from tests.helpers import infer, random_array, to_numpy
from tests.torch_refs import assert_matches, import_reference, nhwc, randomize_batchnorm

SIZE = (33, 47)  # odd, and not a multiple of any stride

# The contract, written out from torchvision's `resnet18` (He et al. 2016, Table 1):
# key -> (layer, channels, {output_stride: true stride}).
CONTRACT = {
    "stem": ("conv1_relu", 64, {32: 2, 16: 2, 8: 2}),
    "stage1": ("conv2_block2_out", 64, {32: 4, 16: 4, 8: 4}),
    "stage2": ("conv3_block2_out", 128, {32: 8, 16: 8, 8: 8}),
    "stage3": ("conv4_block2_out", 256, {32: 16, 16: 16, 8: 8}),
    "stage4": ("conv5_block2_out", 512, {32: 32, 16: 16, 8: 8}),
}
# smp `EncoderMixin.make_dilated`: the rate of every conv of layer3 and layer4.
SMP_RATES = {32: {}, 16: {"layer4": 2}, 8: {"layer3": 2, "layer4": 4}}


def _torchvision(arch, seed):
    """torchvision's `arch` with random weights and BN statistics, in eval mode."""
    torchvision = import_reference("torchvision")
    import torch

    torch.manual_seed(seed)
    return randomize_batchnorm(getattr(torchvision.models, arch)(weights=None), seed=seed)


def _smp_dilated(model, output_stride):
    """A copy of a torchvision ResNet dilated as smp's `replace_strides_with_dilation` does.

    Every `Conv2d` of a dilated stage gets stride 1, the stage's rate and padding
    `(k // 2) * rate`.
    """
    import torch

    model = copy.deepcopy(model)
    for stage, rate in SMP_RATES[output_stride].items():
        for module in getattr(model, stage).modules():
            if isinstance(module, torch.nn.Conv2d):
                module.stride = (1, 1)
                module.dilation = (rate, rate)
                pad = (module.kernel_size[0] // 2) * rate
                module.padding = (pad, pad)
    return model


def _torch_features(model, images):
    """The stem (after the ReLU) and layer1..layer4 outputs, NHWC."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(images.transpose(0, 3, 1, 2))
        x = model.relu(model.bn1(model.conv1(x)))
        features = {"stem": x}
        x = model.maxpool(x)
        for index in range(1, 5):
            x = getattr(model, f"layer{index}")(x)
            features[f"stage{index}"] = x
    return {key: nhwc(value) for key, value in features.items()}


@pytest.fixture(scope="module")
def images():
    return random_array((1, *SIZE, 3), seed=0)


@pytest.fixture(scope="module")
def reference18():
    return _torchvision("resnet18", seed=1)


@pytest.fixture(scope="module")
def resnet18s(reference18, tmp_path_factory):
    """One ResNet-18 per output stride, each given the reference's weights another way.

    OS32: `weights="imagenet"`, its download replaced by the reference saved with
    torch, under a name with its SHA-256 prefix as torchvision names its files.
    OS16: the state dict. OS8: a `.safetensors` file.
    """
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("resnet18")
    saved = folder / "saved.pth"
    torch.save(reference18.state_dict(), str(saved))
    digest = hashlib.sha256(saved.read_bytes()).hexdigest()
    fname = f"resnet18-{digest[:8]}.pth"
    saved.rename(folder / fname)
    calls = []

    def fake_get_file(name, origin, cache_subdir):
        calls.append((name, origin, cache_subdir))
        return str(folder / name)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras.utils, "get_file", fake_get_file)
        url = f"https://download.pytorch.org/models/{fname}"
        patch.setitem(state_dict.TORCHVISION_IMAGENET_BASIC, (2, 2, 2, 2), url)
        os32 = ResNet18(weights="imagenet")
    assert calls == [(fname, url, "models")]
    safetensors = folder / "resnet18.safetensors"
    save_file(reference18.state_dict(), str(safetensors))
    return {
        32: os32,
        16: ResNet18(output_stride=16, weights=reference18.state_dict()),
        8: ResNet18(output_stride=8, weights=str(safetensors)),
    }


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_resnet18_matches_torchvision_dilated_as_smp(resnet18s, reference18, images, output_stride):
    expected = _torch_features(_smp_dilated(reference18, output_stride), images)
    got = infer(resnet18s[output_stride], images)
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert_matches(got[key], expected[key])


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_feature_info_contract(resnet18s, output_stride):
    model = resnet18s[output_stride]
    info = feature_info(model)
    assert (info.family, info.variant, info.preprocessing) == ("resnet", "v1.5", "torch")
    assert (info.low_level, info.aux, info.high_level) == ("stage1", "stage3", "stage4")
    assert info.output_stride == output_stride and info.keys() == tuple(CONTRACT)
    spec = model.compute_output_spec(keras.KerasTensor((1, *SIZE, 3)))
    for key, (layer, channels, strides) in CONTRACT.items():
        stride = strides[output_stride]
        assert (info[key].layer, info.channels(key), info.stride(key)) == (layer, channels, stride)
        rows, cols = (-(-s // stride) for s in SIZE)
        assert tuple(spec[key].shape) == (1, rows, cols, channels), key
    rates = SMP_RATES[output_stride]
    for stage, layer in ((3, "layer3"), (4, "layer4")):
        rate = rates.get(layer, 1)
        assert info[f"stage{stage}"].dilation == (rate, rate)
        first_stride = (1, 1) if layer in rates else (2, 2)
        assert model.get_layer(f"conv{stage + 1}_block1_0_conv").strides == first_stride
        assert model.get_layer(f"conv{stage + 1}_block1_1_conv").strides == first_stride
        for block in (1, 2):
            for conv in (1, 2):
                layer_ = model.get_layer(f"conv{stage + 1}_block{block}_{conv}_conv")
                assert layer_.dilation_rate == (rate, rate)


def test_batch_norm_and_bias_follow_torch(resnet18s):
    model = resnet18s[32]
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    # torchvision resnet18: conv1, 8 blocks x 2 convs, 3 downsample convs; each with a BN.
    assert len(convs) == len(norms) == 20
    assert {(n.momentum, n.epsilon) for n in norms} == {(0.9, 1e-5)}
    assert not any(conv.use_bias for conv in convs)


def test_resnet34_matches_torchvision_at_output_stride_8(images):
    reference = _torchvision("resnet34", seed=2)
    model = ResNet34(output_stride=8, weights=reference.state_dict())
    info = feature_info(model)
    assert info["stage3"].dilation == (2,) * 6 and info["stage4"].dilation == (4,) * 3
    assert info["stage4"].layer == "conv5_block3_out"
    expected = _torch_features(_smp_dilated(reference, 8), images)
    got = infer(model, images)
    for key in expected:
        assert_matches(got[key], expected[key])


def test_strict_loading_lists_every_problem_and_loads_nothing(reference18):
    """A missing, an unexpected and a misshapen key, all in one error; no weight changes."""
    model = ResNet((1, 1, 1, 1), block="basic")
    # ResNet-18's weights without its second block of each stage fit this layout.
    state = {
        key: value
        for key, value in reference18.state_dict().items()
        if not (key.startswith("layer") and key.split(".")[1] != "0")
    }
    before = [to_numpy(w) for w in model.weights]
    state.pop("layer2.0.downsample.1.running_var")
    state["layer4.1.conv1.weight"] = state["layer4.0.conv2.weight"]
    state["layer3.0.conv2.weight"] = state["layer3.0.conv2.weight"][:128]
    with pytest.raises(ValueError) as error:
        load_torch_resnet(model, read_state_dict(state), skip=("fc.",))
    message = str(error.value)
    assert "1 missing from the checkpoint: layer2.0.downsample.1.running_var" in message
    assert "1 unexpected in the checkpoint: layer4.1.conv1.weight" in message
    assert "1 with the wrong shape: conv4_block1_2_conv <- layer3.0.conv2.weight" in message
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, to_numpy(new))


def test_imagenet_download_is_checked(monkeypatch, tmp_path):
    """torchvision's file names; a file whose SHA-256 does not start as its name says is refused."""
    payload = b"not the checkpoint"
    calls = []

    def fake_get_file(fname, origin, cache_subdir):
        calls.append((fname, origin, cache_subdir))
        path = tmp_path / fname
        path.write_bytes(payload)
        return str(path)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    digest = hashlib.sha256(payload).hexdigest()
    assert not digest.startswith("f37072fd") and not digest.startswith("b627a593")
    with pytest.raises(OSError, match="does not have the SHA-256 its name promises"):
        ResNet18(weights="imagenet")
    with pytest.raises(OSError, match="starting b627a593"):
        state_dict.torchvision_imagenet_file((3, 4, 6, 3), "basic")
    url = "https://download.pytorch.org/models/"
    assert calls == [
        ("resnet18-f37072fd.pth", f"{url}resnet18-f37072fd.pth", "models"),
        ("resnet34-b627a593.pth", f"{url}resnet34-b627a593.pth", "models"),
    ]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"variant": "v1"}, r"variant='v1' with block='basic'"),
        ({"variant": "v1c"}, r"variant='v1c' with block='basic'"),
        ({"dilate_first_block": "contract"}, r"dilate_first_block='contract'"),
        ({"block": "wide"}, r"block='wide'"),
        ({"multi_grid": (1, 2, 4)}, r"tuple of 1 positive integers.*multi_grid=\(1, 2, 4\)"),
        ({"multi_grid": (2,)}, r"stride 2 and rate 2"),
        ({"weights": "imagenet", "width": 64}, r"basic layouts \[\(2, 2, 2, 2\), \(3, 4, 6, 3\)\]"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet((1, 1, 1, 1), **{"block": "basic", "width": 4, **kwargs})


def test_resnet18_multi_grid_example_fits_its_last_stage():
    with pytest.raises(ValueError, match=r"\(e\.g\. \(1, 2\)\)"):
        ResNet18(multi_grid=(1, 2, 4))


def test_public_names_and_registry():
    from kseg.backbones.registry import DILATED

    assert kseg.backbones.ResNet18 is ResNet18 and kseg.backbones.ResNet34 is ResNet34
    assert DILATED["resnet18"] is ResNet18 and DILATED["resnet34"] is ResNet34
    assert "| `stage4`" in ResNet18.__doc__ and "make_dilated" in ResNet34.__doc__


@pytest.mark.channels_first_conv
def test_channels_first_matches_channels_last():
    last = ResNet((1, 1, 1, 1), block="basic", output_stride=8, width=4)
    first = ResNet(
        (1, 1, 1, 1), block="basic", output_stride=8, width=4, data_format="channels_first"
    )
    first.set_weights(last.get_weights())
    x = random_array((1, 37, 29, 3), scale=20.0)
    want = infer(last, x)
    got = infer(first, np.transpose(x, (0, 3, 1, 2)))
    for key in want:
        np.testing.assert_allclose(
            np.transpose(got[key], (0, 2, 3, 1)), want[key], rtol=1e-5, atol=1e-4, err_msg=key
        )


@pytest.mark.parametrize(
    "builder, kwargs, heads",
    [
        ("DeepLabV3Plus", {"aspp_filters": 16, "decoder_filters": 16}, ("main",)),
        ("PSPNet", {"aux_head": True, "fusion_filters": 16}, ("main", "aux")),
        ("UNet", {"decoder_filters": (16, 16, 8, 8, 8)}, ("main",)),
    ],
)
def test_builders_run_on_resnet18_by_name(builder, kwargs, heads):
    """The heads read the backbone's channels (narrow heads: the backbone is what is new)."""
    model = getattr(kseg.models, builder)(3, backbone="resnet18", input_shape=(*SIZE, 3), **kwargs)
    backbone = model.get_layer("resnet18")
    assert feature_info(backbone).channels("stage4") == 512
    x = np.random.default_rng(0).uniform(0, 255, (1, *SIZE, 3)).astype("float32")
    out = infer(model, x)
    out = out if isinstance(out, dict) else {"main": out}
    assert tuple(sorted(out)) == tuple(sorted(heads))
    for value in out.values():
        assert value.shape == (1, *SIZE, 3) and np.all(np.isfinite(value))
