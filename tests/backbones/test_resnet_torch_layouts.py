"""The v1.5 and v1c ResNet layouts against timm and torchvision, and torch checkpoint reading."""

import keras
import numpy as np
import pytest

import kseg
from kseg.backbones import ResNet, feature_info
from kseg.backbones.registry import RESNETS
from kseg.convert.state_dict import load_torch_resnet, read_safetensors, read_state_dict
from tests.helpers import compile_for_fit
from tests.torch_refs import assert_matches, import_reference, nhwc, randomize_batchnorm

SIZE = (97, 131)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((1, *SIZE, 3)).astype("float32")


def _torch(images):
    import torch

    return torch.from_numpy(images.transpose(0, 3, 1, 2))


def _timm_features(model, images):
    import torch

    with torch.no_grad():
        return nhwc(model.forward_features(_torch(images)))


@pytest.mark.parametrize("variant", ["v1.5", "v1c"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_stride_contract_on_an_odd_size(variant, output_stride):
    model = ResNet((2, 2, 2, 2), width=8, variant=variant, output_stride=output_stride)
    info = feature_info(model)
    assert info.variant == variant and info.preprocessing == "torch"
    spec = model.compute_output_spec(keras.KerasTensor((1, *SIZE, 3)))
    expected = {"stem": 2, "stage1": 4, "stage2": 8, "stage3": 16, "stage4": 32}
    for key, stride in expected.items():
        stride = min(stride, max(output_stride, 4)) if key != "stem" else 2
        assert info.stride(key) == stride
        assert tuple(spec[key].shape[1:3]) == tuple(-(-s // stride) for s in SIZE), key


def test_torch_layout_defaults():
    """torchvision's dilation rule (first block keeps the previous rate) and BN epsilon 1e-5."""
    model = ResNet((2, 2, 3, 2), width=8, variant="v1.5", output_stride=8)
    info = feature_info(model)
    assert info["stage3"].dilation == (1, 2, 2)
    assert info["stage4"].dilation == (2, 4)
    assert model.get_layer("conv1_bn").epsilon == 1e-5
    assert not model.get_layer("conv3_block1_1_conv").use_bias
    assert model.get_layer("conv3_block1_2_conv").strides == (2, 2)
    assert model.get_layer("conv3_block1_1_conv").strides == (1, 1)
    v1 = ResNet((2, 2, 3, 2), width=8, output_stride=8)
    assert feature_info(v1)["stage3"].dilation == (2, 2, 2)


@pytest.mark.parametrize(
    "name, variant",
    [("resnet50", "v1.5"), pytest.param("resnet50c", "v1c", marks=pytest.mark.large)],
)
def test_resnet50_layouts_match_timm(images, name, variant):
    """timm's full-size models (the deep stem is also checked on a small model below)."""
    timm = import_reference("timm")
    import torch

    torch.manual_seed(1)
    reference = randomize_batchnorm(timm.create_model(name), seed=1)
    model = kseg.backbones.ResNet50(variant=variant, weights=reference.state_dict())
    assert_matches(model.predict(images, verbose=0)["stage4"], _timm_features(reference, images))


def _small_timm(timm, deep, output_stride=32):
    """timm's ResNet class with one block per stage (deep stem for v1c)."""
    import torch
    from timm.models.resnet import Bottleneck
    from timm.models.resnet import ResNet as TimmResNet

    torch.manual_seed(2)
    kwargs = {"stem_width": 32, "stem_type": "deep"} if deep else {}
    model = TimmResNet(Bottleneck, [1, 1, 1, 1], output_stride=output_stride, **kwargs)
    return randomize_batchnorm(model, seed=2)


def test_v1c_loads_mmseg_key_names(images):
    """mmseg's ResNetV1c names its deep stem `stem.{0..7}`; timm `conv1.{0..6}` and `bn1`."""
    timm = import_reference("timm")
    reference = _small_timm(timm, deep=True)
    renames = {
        "conv1.0": "stem.0",
        "conv1.1": "stem.1",
        "conv1.3": "stem.3",
        "conv1.4": "stem.4",
        "conv1.6": "stem.6",
        "bn1": "stem.7",
    }
    state = {}
    for key, value in reference.state_dict().items():
        head, _, tail = key.rpartition(".")
        state[f"{renames.get(head, head)}.{tail}"] = value
    assert "stem.7.running_var" in state
    model = ResNet((1, 1, 1, 1), variant="v1c", weights=state)
    assert_matches(model.predict(images, verbose=0)["stage4"], _timm_features(reference, images))


def test_dilated_v15_matches_timm_from_a_safetensors_file(images, tmp_path):
    """timm's `output_stride=8` dilates as torchvision does (first block at the previous rate)."""
    timm = import_reference("timm")
    from safetensors.torch import save_file

    reference = _small_timm(timm, deep=False, output_stride=8)
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(path))
    model = ResNet((1, 1, 1, 1), variant="v1.5", output_stride=8, weights=str(path))
    assert_matches(model.predict(images, verbose=0)["stage4"], _timm_features(reference, images))


def test_strict_loading_leaves_the_model_untouched():
    timm = import_reference("timm")
    reference = _small_timm(timm, deep=False)
    model = ResNet((1, 1, 1, 1), variant="v1.5")
    before = [keras.ops.convert_to_numpy(w) for w in model.weights]
    state = dict(reference.state_dict())
    state.pop("layer4.0.downsample.1.weight")
    with pytest.raises(
        ValueError, match="missing from the checkpoint: layer4.0.downsample.1.weight"
    ):
        load_torch_resnet(model, read_state_dict(state))
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))
    # A v1 layout has conv biases that no torch checkpoint holds.
    with pytest.raises(ValueError, match="missing from the checkpoint: conv1.bias"):
        load_torch_resnet(ResNet((1, 1, 1, 1)), read_state_dict(reference.state_dict()))


def test_wrapped_and_prefixed_state_dicts():
    state = {"a.weight": np.ones((2, 2), "float32")}
    assert list(read_state_dict({"state_dict": state, "meta": {}})) == ["a.weight"]
    assert list(read_state_dict({"module.a.weight": state["a.weight"]})) == ["a.weight"]
    with pytest.raises(ValueError, match="nested mapping"):
        read_state_dict({"a": {"b": 1}})
    with pytest.raises(TypeError, match="'a.weight' of type str"):
        read_state_dict({"a.weight": "text"})


def test_safetensors_reader_matches_the_safetensors_package(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    tensors = {
        "f32": torch.randn(3, 4),
        "f16": torch.randn(5).half(),
        "bf16": torch.randn(2, 3).bfloat16(),
        "i64": torch.arange(6).reshape(2, 3),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    got = read_safetensors(str(path))
    assert sorted(got) == sorted(tensors)
    for name, tensor in tensors.items():
        expected = tensor.float().numpy() if name == "bf16" else tensor.numpy()
        assert got[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(got[name], expected)


def test_bad_weights_arguments(tmp_path):
    with pytest.raises(ValueError, match="No ImageNet download is defined for the v1c layout"):
        ResNet((1, 1, 1, 1), variant="v1c", weights="imagenet")
    with pytest.raises(ValueError, match="no such file"):
        ResNet((1, 1, 1, 1), variant="v1.5", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="layouts"):
        ResNet((1, 1, 1, 1), variant="v1.5", weights="imagenet")
    with pytest.raises(ValueError, match="variant"):
        ResNet((1, 1, 1, 1), variant="v2")
    with pytest.raises(ValueError, match="stride 2 and rate 2"):
        ResNet((1, 1, 1, 3), variant="v1.5", multi_grid=(2, 2, 2))


@pytest.mark.parametrize(
    "builder, variant",
    [
        # The torch layouts add no layer kind to the builders' training graphs (Conv2D,
        # BatchNormalization, ZeroPadding2D), so one step of each is `large`; the recipes'
        # --smoke runs on them are recorded in the README.
        pytest.param("DeepLabV3Plus", "v1c", marks=pytest.mark.large),
        pytest.param("PSPNet", "v1.5", marks=pytest.mark.large),
        pytest.param("DilatedFCN", "v1.5", marks=pytest.mark.large),
    ],
)
def test_builders_train_on_the_torch_layouts(builder, variant):
    backbone = ResNet((1, 1, 1, 1), width=4, variant=variant, output_stride=8)
    kwargs = {"head_filters": 8} if builder == "DilatedFCN" else {}
    model = getattr(kseg.models, builder)(3, backbone=backbone, **kwargs)
    compile_for_fit(model, "adam", kseg.losses.SegmentationCrossEntropy())
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, (2, 32, 32)).astype("int32")
    before = keras.ops.convert_to_numpy(model.get_layer(backbone.name).weights[0])
    history = model.fit(x, y, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = keras.ops.convert_to_numpy(model.get_layer(backbone.name).weights[0])
    assert not np.array_equal(before, after)


@pytest.mark.parametrize("name", [name for name in RESNETS if "_" in name])
def test_builders_take_the_layouts_by_name(name):
    model = kseg.models.DeepLabV3(3, backbone=name, output_stride=8)
    backbone = model.get_layer(name.split("_")[0])
    assert feature_info(backbone).variant == name.split("_")[1]
    assert model.get_layer("normalize").get_config()["mode"] == "torch"


def test_torchvision_imagenet_download_is_checked(monkeypatch, tmp_path):
    """The file's SHA-256 must start with the 8 hex digits in torchvision's file name."""
    import hashlib

    from kseg.convert import state_dict

    payload = b"not the checkpoint"
    path = tmp_path / "resnet50-11ad3fa6.pth"
    path.write_bytes(payload)
    calls = []

    def fake_get_file(fname, origin, cache_subdir):
        calls.append((fname, origin, cache_subdir))
        return str(path)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    assert not hashlib.sha256(payload).hexdigest().startswith("11ad3fa6")
    with pytest.raises(OSError, match="does not have the SHA-256 its name promises"):
        state_dict.torchvision_imagenet_file((3, 4, 6, 3))
    assert calls == [
        ("resnet50-11ad3fa6.pth", "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
         "models")
    ]

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(OSError, match="resnet101-cd907fc2.pth"):
        state_dict.torchvision_imagenet_file((3, 4, 23, 3))
