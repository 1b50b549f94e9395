"""kseg.convert.from_huggingface against `transformers`' own SegFormer (random weights).

`transformers` builds a small random SegFormer once per module (nothing is
downloaded); every parameter is randomised (LayerNorm scales and every bias
too, which it initialises to 1 and 0) and the decode head's BatchNorm gets
non-trivial statistics. `save_pretrained` writes the folder the converter
reads; the converted kseg model must give `transformers`' logits upsampled as
`SegformerImageProcessor.post_process_semantic_segmentation` does (bilinear,
`align_corners=False`), and the encoder's four feature maps must equal
`output_hidden_states`, at an odd input size (97x131) on every backend.
"""

import json
import os
import shutil
import sys

import keras
import numpy as np
import pytest

import kseg
from kseg.convert import huggingface
from kseg.convert.state_dict import read_safetensors
from tests.torch_refs import (
    assert_matches,
    import_reference,
    nhwc,
    randomize_batchnorm,
    torch_input,
)

SIZE = (97, 131)
# Distinct widths, heads and depths per stage, so that a stage or a block mixed up shows.
TINY = dict(
    hidden_sizes=[8, 16, 24, 32],
    depths=[1, 2, 1, 1],
    num_attention_heads=[1, 2, 2, 4],
    decoder_hidden_size=16,
    num_labels=3,
    id2label={0: "road", 1: "grass", 2: "sky"},
    label2id={"road": 0, "grass": 1, "sky": 2},
    semantic_loss_ignore_index=254,
)


def _randomize(model, seed):
    """Every parameter random, of a scale that keeps every branch visible in the logits.

    transformers initialises weights as N(0, 0.02^2), LayerNorms to 1 / 0 and biases to
    0: its attention and MLP branches then hardly change the features and the logits
    hardly vary over the image. Here kernels get N(0, 1 / fan_in), scales 1 + N(0, 0.2^2)
    and biases N(0, 0.1^2).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.ndim > 1:
                fan_in = parameter.numel() // parameter.shape[0]
                parameter.copy_(noise / fan_in**0.5)
            elif name.endswith("bias"):
                parameter.copy_(0.1 * noise)
            else:  # LayerNorm and BatchNorm scales
                parameter.copy_(1.0 + 0.2 * noise)
    return randomize_batchnorm(model, seed)


@pytest.fixture(scope="module")
def transformers():
    return import_reference("transformers")


@pytest.fixture(scope="module")
def reference(transformers):
    """The random SegFormer, built once for the module."""
    import torch

    torch.manual_seed(0)
    config = transformers.SegformerConfig(**TINY)
    return _randomize(transformers.SegformerForSemanticSegmentation(config), seed=1)


@pytest.fixture(scope="module")
def folder(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "tiny-segformer"
    reference.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 255, (1, *SIZE, 3)).astype("float32")


@pytest.fixture(scope="module")
def converted(folder):
    return kseg.convert.from_huggingface(folder)


def _weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def _copy_folder(folder, target, state=None, config=None):
    """A checkpoint folder like `folder`, with another state dict or config."""
    os.makedirs(target, exist_ok=True)
    if config is None:
        shutil.copy(os.path.join(folder, "config.json"), target)
    else:
        with open(os.path.join(target, "config.json"), "w") as handle:
            json.dump(config, handle)
    if state is None:
        shutil.copy(os.path.join(folder, "model.safetensors"), target)
    else:
        from safetensors.numpy import save_file

        save_file(
            {k: np.ascontiguousarray(v) for k, v in state.items()}, f"{target}/model.safetensors"
        )
    return target


def test_the_folder_has_the_hub_key_layout(folder):
    keys = set(read_safetensors(os.path.join(folder, "model.safetensors")))
    assert "segformer.encoder.block.1.1.attention.self.sr.weight" in keys
    assert "decode_head.linear_c.3.proj.weight" in keys


def test_logits_and_features_match_transformers(reference, converted, images):
    import torch

    with torch.no_grad():
        expected = reference(torch_input(images), output_hidden_states=True)
    logits = torch.nn.functional.interpolate(
        expected.logits, size=SIZE, mode="bilinear", align_corners=False
    )
    got = converted.predict(images, verbose=0)
    assert got.shape == (1, *SIZE, 3)
    # Logits that vary over the image (each class's range across pixels is of order 1).
    assert float(np.min(np.ptp(nhwc(logits), axis=(0, 1, 2)))) > 0.5
    assert_matches(got, nhwc(logits))

    encoder = converted.get_layer("mix_transformer")
    features = encoder.predict(torch_input(images).numpy().transpose(0, 2, 3, 1), verbose=0)
    assert len(expected.hidden_states) == 4
    for index, hidden in enumerate(expected.hidden_states, start=1):
        assert_matches(features[f"stage{index}"], nhwc(hidden))


def test_structure_description_and_parameters_follow_the_checkpoint(reference, converted):
    info = kseg.backbones.feature_info(converted.get_layer("mix_transformer"))
    assert (info.family, info.variant) == ("mit", "custom")
    assert [spec.channels for spec in info.features] == TINY["hidden_sizes"]
    assert converted.get_layer("decode_head_fuse").conv.filters == 16
    assert converted.dataset == {
        "name": "tiny-segformer",
        "class_names": ["road", "grass", "sky"],
        "palette": None,
        "ignore_index": 254,
    }
    parameters = sum(p.numel() for p in reference.parameters())
    statistics = sum(
        b.numel() for n, b in reference.named_buffers() if n.endswith(("_mean", "_var"))
    )
    assert sum(int(np.prod(w.shape)) for w in converted.trainable_weights) == parameters
    assert sum(int(np.prod(w.shape)) for w in converted.non_trainable_weights) == statistics


def test_transformers_in_memory_layout_loads_the_same(reference, folder, converted, tmp_path):
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    assert "segformer.stages.1.blocks.1.attention.q_proj.weight" in state
    target = _copy_folder(folder, tmp_path / "memory", state=state)
    model = kseg.convert.from_huggingface(target)
    for got, expected in zip(_weights(model), _weights(converted)):
        np.testing.assert_array_equal(got, expected)


def test_encoder_checkpoints_with_and_without_prefix(transformers, reference, converted, tmp_path):
    # SegformerModel: keys without the `segformer.` prefix. Its weights are those of the
    # SegFormer's encoder, whose features equal transformers' (tested above).
    bare = tmp_path / "bare"
    reference.segformer.save_pretrained(bare)
    assert any(k.startswith("encoder.") for k in read_safetensors(bare / "model.safetensors"))
    encoder = kseg.convert.from_huggingface(bare)
    assert isinstance(encoder, kseg.backbones.Backbone)
    assert encoder.name == "mix_transformer"
    for a, b in zip(_weights(encoder), _weights(converted.get_layer("mix_transformer"))):
        np.testing.assert_array_equal(a, b)

    # SegformerForImageClassification (as nvidia/mit-b*): `segformer.` keys and a classifier.
    classification = transformers.SegformerForImageClassification(reference.config)
    classification.segformer.load_state_dict(reference.segformer.state_dict())
    prefixed = tmp_path / "classification"
    classification.save_pretrained(prefixed)
    keys = read_safetensors(prefixed / "model.safetensors")
    assert "classifier.weight" in keys and "segformer.encoder.layer_norm.3.weight" in keys
    loaded = kseg.convert.from_huggingface(prefixed)
    for a, b in zip(_weights(loaded), _weights(encoder)):
        np.testing.assert_array_equal(a, b)

    # The same checkpoint as a backbone's weights (a folder, and its file alone).
    structure = {
        "hidden_sizes": TINY["hidden_sizes"],
        "depths": TINY["depths"],
        "num_heads": TINY["num_attention_heads"],
    }
    for weights in (str(prefixed), str(prefixed / "model.safetensors")):
        backbone = kseg.backbones.MixTransformer(weights=weights, **structure)
        for a, b in zip(_weights(backbone), _weights(encoder)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="num_classes"):
        kseg.convert.from_huggingface(bare, num_classes=5)


def test_other_class_count_keeps_all_but_the_classifier(folder, converted):
    model = kseg.convert.from_huggingface(folder, num_classes=5)
    assert model.get_layer("classifier").kernel.shape == (1, 1, 16, 5)
    assert model.dataset is None
    kept = [w for w in model.weights if not w.path.startswith("classifier/")]
    reference = [w for w in converted.weights if not w.path.startswith("classifier/")]
    assert len(kept) == len(reference) == len(model.weights) - 2
    for a, b in zip(kept, reference):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_a_wrong_checkpoint_lists_every_problem(folder, tmp_path):
    state = read_safetensors(os.path.join(folder, "model.safetensors"))
    del state["segformer.encoder.block.1.1.mlp.dwconv.dwconv.bias"]
    state["segformer.encoder.block.1.2.layer_norm_1.weight"] = np.ones(16, "float32")
    state["decode_head.linear_c.2.proj.weight"] = state["decode_head.linear_c.2.proj.weight"][:, :8]
    target = _copy_folder(folder, tmp_path / "wrong", state=state)
    with pytest.raises(ValueError) as info:
        kseg.convert.from_huggingface(target)
    message = str(info.value)
    assert "nothing was loaded" in message
    assert "1 missing from the checkpoint: segformer.encoder.block.1.1.mlp.dwconv.dwconv.bias" in (
        message
    )
    assert "1 unexpected in the checkpoint: segformer.encoder.block.1.2.layer_norm_1.weight" in (
        message
    )
    assert "decode_head_linear_c3 <- decode_head.linear_c.2.proj.weight" in message
    assert "(24, 16)" in message and "(8, 16)" in message


def test_configs_kseg_does_not_build_are_refused(folder, tmp_path):
    with open(os.path.join(folder, "config.json")) as handle:
        config = json.load(handle)
    target = _copy_folder(folder, tmp_path / "vit", config={**config, "model_type": "vit"})
    with pytest.raises(ValueError, match="model_type 'segformer'.*model_type='vit'"):
        kseg.convert.from_huggingface(target)
    bad = {**config, "hidden_act": "relu", "num_channels": 1, "hidden_dropout_prob": 0.1}
    target = _copy_folder(folder, tmp_path / "bad", config=bad)
    with pytest.raises(ValueError) as info:
        kseg.convert.from_huggingface(target)
    message = str(info.value)
    for text in ("hidden_act='relu'", "num_channels=1", "hidden_dropout_prob=0.1"):
        assert text in message
    target = _copy_folder(folder, tmp_path / "beit", config={**config, "architectures": ["Beit"]})
    with pytest.raises(ValueError, match="architectures=\\['Beit'\\]"):
        kseg.convert.from_huggingface(target)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="with config.json.*holds nothing"):
        kseg.convert.from_huggingface(empty)
    shutil.copy(os.path.join(folder, "config.json"), empty)
    with pytest.raises(ValueError, match="model.safetensors.*holds config.json"):
        kseg.convert.from_huggingface(empty)
    with pytest.raises(ValueError, match="not a file"):
        kseg.convert.from_huggingface(os.path.join(folder, "config.json"))
    with pytest.raises(ValueError, match="existing folder"):
        kseg.convert.from_huggingface(os.path.join(tmp_path, "no", "such", "folder"))


def test_a_repository_id_is_downloaded_once_by_the_hub_client(folder, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls = []

    def snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, tuple(allow_patterns)))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert huggingface.download("nvidia/segformer-b0-finetuned-ade-512-512") == str(folder)
    assert calls == [
        ("nvidia/segformer-b0-finetuned-ade-512-512", ("config.json", "model.safetensors"))
    ]
    # A published name takes kseg's dataset name; any other repository its own name.
    assert huggingface.PUBLISHED["nvidia/segformer-b0-finetuned-ade-512-512"][:2] == (
        "ade20k",
        150,
    )
    model = kseg.convert.from_huggingface("someone/segformer-tiny-roads", num_classes=3)
    assert model.dataset["name"] == "segformer-tiny-roads"


def test_download_errors_say_what_to_do(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(repo_id, allow_patterns):
        raise OSError("no connection")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError, match="no connection.*hf download nvidia/mit-b0"):
        huggingface.download("nvidia/mit-b0")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"pip install kseg\[huggingface\]"):
        kseg.convert.from_huggingface("nvidia/segformer-b0-finetuned-ade-512-512")


def test_imagenet_weights_come_from_nvidia_encoders(monkeypatch, folder):
    fetched = []

    def download(repo_id):
        fetched.append(repo_id)
        return str(folder)  # a SegFormer of another structure than mit_b0's

    monkeypatch.setattr(huggingface, "download", download)
    assert huggingface.ENCODERS == {f"mit_b{i}": f"nvidia/mit-b{i}" for i in range(6)}
    with pytest.raises(ValueError, match="hidden_sizes: config \\(8, 16, 24, 32\\)"):
        kseg.backbones.MixTransformer("mit_b0", weights="imagenet")
    assert fetched == ["nvidia/mit-b0"]


@pytest.mark.large
def test_b0_at_its_real_widths_matches_transformers(transformers, tmp_path):
    """MiT-B0 with the ADE20K head (150 classes), random weights, at 512x512 and 97x131."""
    import torch

    torch.manual_seed(3)
    config = transformers.SegformerConfig(num_labels=150)  # the defaults are B0's
    reference = _randomize(transformers.SegformerForSemanticSegmentation(config), seed=3)
    reference.save_pretrained(tmp_path / "b0")
    model = kseg.convert.from_huggingface(tmp_path / "b0")
    assert kseg.backbones.feature_info(model.get_layer("mit_b0")).variant == "mit_b0"
    assert model.get_layer("decode_head_fuse").conv.filters == 256
    for size in ((512, 512), SIZE):
        images = np.random.default_rng(1).uniform(0, 255, (1, *size, 3)).astype("float32")
        with torch.no_grad():
            logits = reference(torch_input(images)).logits
        expected = torch.nn.functional.interpolate(
            logits, size=size, mode="bilinear", align_corners=False
        )
        assert_matches(model.predict(images, verbose=0), nhwc(expected))
