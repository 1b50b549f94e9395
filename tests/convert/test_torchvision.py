"""kseg.convert.from_torchvision against torchvision's own models (random weights).

torchvision builds the reference with `weights=None` (nothing is downloaded);
its BatchNorm statistics are randomised so that every term of inference-mode
BN is exercised; the converted kseg model must give torchvision's logits on an
odd input size (97x131) on every backend.
"""

import keras
import numpy as np
import pytest

import kseg
from tests.torch_refs import (
    assert_matches,
    import_reference,
    nhwc,
    randomize_batchnorm,
    torch_input,
)

SIZE = (97, 131)


@pytest.fixture(scope="module")
def torchvision():
    return import_reference("torchvision")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 255, (1, *SIZE, 3)).astype("float32")


def _segmentation_reference(torchvision, arch, seed):
    import torch

    torch.manual_seed(seed)
    builder = getattr(torchvision.models.segmentation, arch)
    model = builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    return randomize_batchnorm(model, seed)


@pytest.mark.parametrize("arch", ["deeplabv3_resnet50", "fcn_resnet50"])
def test_segmentation_models_match_torchvision(torchvision, images, arch):
    import torch

    reference = _segmentation_reference(torchvision, arch, seed=1)
    model = kseg.convert.from_torchvision(arch, reference.state_dict())
    assert set(model.output) == {"main", "aux"}
    got = model.predict(images, verbose=0)
    with torch.no_grad():
        expected = reference(torch_input(images))
    assert_matches(got["main"], nhwc(expected["out"]))
    assert_matches(got["aux"], nhwc(expected["aux"]))


def test_resnet50_features_from_a_checkpoint_file(torchvision, images, tmp_path):
    import torch

    torch.manual_seed(2)
    reference = randomize_batchnorm(torchvision.models.resnet50(weights=None), seed=2)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    model = kseg.convert.from_torchvision("resnet50", str(path))
    x = torch_input(images)
    got = model.predict(x.numpy().transpose(0, 2, 3, 1), verbose=0)
    with torch.no_grad():
        y = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        for index, stage in enumerate(
            (reference.layer1, reference.layer2, reference.layer3, reference.layer4), start=1
        ):
            y = stage(y)
            assert_matches(got[f"stage{index}"], nhwc(y))


def test_other_class_count_keeps_all_but_the_classifiers(torchvision):
    reference = _segmentation_reference(torchvision, "fcn_resnet50", seed=3)
    state = reference.state_dict()
    model = kseg.convert.from_torchvision("fcn_resnet50", state, num_classes=5)
    for layer_name, key in (("classifier", "classifier.4"), ("aux_classifier", "aux_classifier.4")):
        kernel = keras.ops.convert_to_numpy(model.get_layer(layer_name).kernel)
        assert kernel.shape[-1] == 5
        assert state[f"{key}.weight"].shape[0] == 21
    head = model.get_layer("head_conv")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(head.conv.kernel),
        state["classifier.0.weight"].numpy().transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(head.bn.moving_variance),
        state["classifier.1.running_var"].numpy(),
    )


def test_wrong_checkpoint_lists_every_problem(torchvision):
    reference = _segmentation_reference(torchvision, "fcn_resnet50", seed=4)
    state = dict(reference.state_dict())
    del state["backbone.layer2.1.bn2.running_var"]
    state["backbone.layer9.0.conv1.weight"] = state["backbone.conv1.weight"]
    state["backbone.layer1.0.conv2.weight"] = state["backbone.layer1.0.conv2.weight"][:, :32]
    with pytest.raises(ValueError) as info:
        kseg.convert.from_torchvision("fcn_resnet50", state)
    message = str(info.value)
    assert "nothing was loaded" in message
    assert "1 missing from the checkpoint: backbone.layer2.1.bn2.running_var" in message
    assert "1 unexpected in the checkpoint: backbone.layer9.0.conv1.weight" in message
    assert "conv2_block1_2_conv <- backbone.layer1.0.conv2.weight" in message
    assert "(3, 3, 64, 64)" in message and "(3, 3, 32, 64)" in message


def test_deeplab_checkpoint_is_not_an_fcn(torchvision):
    reference = _segmentation_reference(torchvision, "deeplabv3_resnet50", seed=5)
    with pytest.raises(ValueError, match="unexpected in the checkpoint: classifier.0.convs"):
        kseg.convert.from_torchvision("fcn_resnet50", reference.state_dict())


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="arch"):
        kseg.convert.from_torchvision("deeplabv3_resnet18", {})
    with pytest.raises(ValueError, match="classifier.4.weight"):
        kseg.convert.from_torchvision("deeplabv3_resnet50", {"backbone.conv1.weight": np.zeros(1)})
    path = tmp_path / "notes.safetensors"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="notes.safetensors"):
        kseg.convert.from_torchvision("resnet50", str(path))
