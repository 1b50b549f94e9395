"""kseg.convert.from_smp against segmentation_models.pytorch's own models (random weights).

smp builds each reference with `encoder_weights=None` (nothing is downloaded),
its BatchNorm statistics and GroupNorm affine terms randomised, and writes it
with `save_pretrained`; the converted kseg model, given the [0, 255] image,
must give smp's logits on the ImageNet-normalised image at 96x128, and where
smp takes it (sizes divisible by the encoder's output stride, 8 or 16 for
PSPNet and the DeepLabs) at a size that 32 does not divide, on every backend.
Each reference is built once per module. The default suite converts the
decoders on ResNet-18 and DeepLabV3 on ResNet-34; `-m large` adds ResNet-50.
"""

import json

import numpy as np
import pytest

import kseg
from tests.helpers import infer, to_numpy
from tests.torch_refs import (
    assert_matches,
    import_reference,
    nhwc,
    randomize_batchnorm,
    torch_input,
)

SIZE = (96, 128)

#: Sizes that 32 does not divide, where smp's encoder output stride allows one.
ODD_SIZES = {8: (72, 104), 16: (80, 112)}

# Small decoder widths keep the references cheap; the layouts are smp's defaults otherwise.
CASES = {
    "unet": ("Unet", "resnet18", {"decoder_channels": (32, 16, 16, 8, 8)}),
    "fpn_add": (
        "FPN",
        "resnet18",
        {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
    ),
    "fpn_cat": (
        "FPN",
        "resnet18",
        {
            "decoder_pyramid_channels": 16,
            "decoder_segmentation_channels": 32,
            "decoder_merge_policy": "cat",
        },
    ),
    "linknet": ("Linknet", "resnet18", {}),
    # The one deeper encoder of the default suite: smp's default, ResNet-34, dilated at
    # output stride 16 as smp dilates it (the three blocks of stage 4 at rate 2).
    "deeplabv3_resnet34": (
        "DeepLabV3",
        "resnet34",
        {"decoder_channels": 16, "encoder_output_stride": 16},
    ),
    # ResNet-50 is kseg's v1.5 layout, with every block of a dilated stage at the full rate.
    "deeplabv3_resnet50": (
        "DeepLabV3",
        "resnet50",
        {"decoder_channels": 16, "encoder_output_stride": 16},
    ),
    # smp's defaults: the encoder cut after its stride-8 stage (encoder_depth=3), BatchNorm.
    "pspnet": ("PSPNet", "resnet18", {"psp_out_channels": 16}),
    # One stage deeper (stride 16, upsampling x16) and no normalisation (convs with bias).
    "pspnet_depth4_identity": (
        "PSPNet",
        "resnet34",
        {
            "psp_out_channels": 8,
            "encoder_depth": 4,
            "upsampling": 16,
            "decoder_use_norm": "identity",
        },
    ),
    # smp's defaults: output stride 16, a separable ASPP.
    "deeplabv3plus": ("DeepLabV3Plus", "resnet18", {"decoder_channels": 16}),
    # Output stride 8 and plain ASPP convolutions (the decoder stays separable).
    "deeplabv3plus_os8_plain": (
        "DeepLabV3Plus",
        "resnet34",
        {
            "decoder_channels": 16,
            "encoder_output_stride": 8,
            "decoder_aspp_separable": False,
            "decoder_atrous_rates": (2, 4, 6),
        },
    ),
    "deeplabv3plus_resnet50": ("DeepLabV3Plus", "resnet50", {"decoder_channels": 16}),
}


def _output_stride(case):
    """The stride smp's input size must be divisible by (`SegmentationModel.check_input_shape`)."""
    arch, _, options = CASES[case]
    if arch == "PSPNet":
        return 2 ** options.get("encoder_depth", 3)
    if arch == "DeepLabV3Plus":
        return options.get("encoder_output_stride", 16)
    if arch == "DeepLabV3":
        return options.get("encoder_output_stride", 8)
    return 32


@pytest.fixture(scope="module")
def smp():
    return import_reference("segmentation_models_pytorch")


def _images(size):
    return np.random.default_rng(0).uniform(0, 255, (1, *size, 3)).astype("float32")


def _randomize_group_norm(model, seed=0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm):
                c = module.num_channels
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(c, generator=generator) * 0.2 - 0.1)


@pytest.fixture(scope="module")
def saved(smp, tmp_path_factory):
    """`saved(case)`: the smp reference of `CASES[case]` and its `save_pretrained` folder."""
    import torch

    made = {}

    def make(case):
        if case not in made:
            arch, encoder, options = CASES[case]
            torch.manual_seed(len(made))
            model = getattr(smp, arch)(
                encoder_name=encoder, encoder_weights=None, classes=3, **options
            )
            randomize_batchnorm(model, seed=len(made))
            _randomize_group_norm(model, seed=len(made))
            folder = tmp_path_factory.mktemp(case)
            model.save_pretrained(folder)
            made[case] = model, folder
        return made[case]

    return make


LARGE = ("deeplabv3_resnet50", "deeplabv3plus_resnet50")


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.large) if c in LARGE else c for c in sorted(CASES)],
)
def test_logits_match_smp(saved, case):
    import torch

    reference, folder = saved(case)
    model = kseg.convert.from_smp(folder)
    assert model.name == f"{CASES[case][0].lower()}_{CASES[case][1]}"
    assert model.get_layer("normalize").mode == "torch"
    sizes = [SIZE]
    if _output_stride(case) in ODD_SIZES:
        sizes.append(ODD_SIZES[_output_stride(case)])
    for size in sizes:
        images = _images(size)
        with torch.no_grad():
            expected = nhwc(reference(torch_input(images)))
        assert expected.shape == (1, *size, 3)
        assert_matches(infer(model, images), expected)


def test_other_class_count_replaces_the_head_only(saved):
    reference, folder = saved("fpn_add")
    model = kseg.convert.from_smp(folder, num_classes=5, input_shape=(*SIZE, 3), name="mine")
    assert model.name == "mine" and tuple(model.output.shape) == (None, *SIZE, 5)
    # The last decoder convolution loaded (torch (out, in, 3, 3) -> Keras (3, 3, in, out)).
    torch_kernel = reference.state_dict()["decoder.seg_blocks.3.block.0.block.0.weight"].numpy()
    kernel = model.get_layer("segmentation2_conv1").kernel
    np.testing.assert_array_equal(to_numpy(kernel), torch_kernel.transpose(2, 3, 1, 0))


def _write(folder, config, state):
    from safetensors.numpy import save_file

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, str(folder / "model.safetensors"))
    return folder


def test_state_dict_problems_are_listed_and_nothing_loads(saved, tmp_path):
    from safetensors.numpy import load_file

    _, folder = saved("fpn_add")
    config = json.loads((folder / "config.json").read_text())
    state = load_file(str(folder / "model.safetensors"))
    del state["decoder.p4.skip_conv.bias"]
    state["decoder.extra.weight"] = np.zeros(3, "float32")
    state["decoder.p5.weight"] = state["decoder.p5.weight"][:, :7]
    broken = _write(tmp_path / "broken", config, state)
    with pytest.raises(ValueError, match="nothing was loaded") as error:
        kseg.convert.from_smp(broken)
    message = str(error.value)
    for part in (
        "1 missing from the checkpoint: decoder.p4.skip_conv.bias",
        "1 unexpected in the checkpoint: decoder.extra.weight",
        "lateral5 <- decoder.p5.weight",
    ):
        assert part in message


def _config(**changes):
    config = {
        "_model_class": "FPN",
        "encoder_name": "resnet18",
        "encoder_weights": None,
        "classes": 2,
        "encoder_depth": 5,
        "in_channels": 3,
        "activation": None,
        "aux_params": None,
    }
    return {**config, **changes}


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"_model_class": "MAnet"}, r"Received: _model_class='MAnet'"),
        (
            {"_model_class": "PSPNet", "encoder_depth": 5},
            r"`upsampling` 32 \(2\*\*encoder_depth.*Received: upsampling=8",
        ),
        (
            {"_model_class": "PSPNet", "encoder_depth": 2, "upsampling": 4},
            r"Received: encoder_depth=2",
        ),
        (
            {"_model_class": "DeepLabV3Plus", "encoder_output_stride": 32},
            r"Received: encoder_output_stride=32",
        ),
        ({"_model_class": "DeepLabV3Plus", "upsampling": 2}, r"Received: upsampling=2"),
        (
            {"_model_class": "DeepLabV3Plus", "encoder_depth": 4},
            r"`encoder_depth=5`.*Received: encoder_depth=4",
        ),
        ({"encoder_name": "efficientnet-b0"}, r"Received: encoder_name='efficientnet-b0'"),
        ({"encoder_depth": 4}, r"`encoder_depth=5`.*Received: encoder_depth=4"),
        ({"activation": "sigmoid"}, r"activation=None.*Received: activation='sigmoid'"),
        ({"aux_params": {"classes": 2}}, r"classification head.*Received: aux_params="),
        ({"decoder_merge_policy": "mean"}, r"Received: decoder_merge_policy='mean'"),
        ({"upsampling": 2}, r"`upsampling` 4. Received: upsampling=2"),
        ({"decoder_interpolation": "bilinear"}, r"Received: decoder_interpolation='bilinear'"),
        ({"encoder_output_stride": 16}, r"option\(s\) \['encoder_output_stride'\]"),
        (
            {"_model_class": "Unet", "decoder_attention_type": "scse"},
            r"Received: decoder_attention_type='scse'",
        ),
        (
            {"_model_class": "Linknet", "decoder_use_norm": "layernorm"},
            r"Received: decoder_use_norm='layernorm'",
        ),
        (
            {"_model_class": "DeepLabV3", "decoder_aspp_separable": True},
            r"Received: decoder_aspp_separable=True",
        ),
    ],
)
def test_unsupported_models_are_refused_by_name(tmp_path, changes, match):
    folder = _write(tmp_path / "model", _config(**changes), {"x": np.zeros(1, "float32")})
    with pytest.raises(ValueError, match=match):
        kseg.convert.from_smp(folder)


def test_a_folder_without_config_or_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        kseg.convert.from_smp(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(_config()))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        kseg.convert.from_smp(tmp_path)
