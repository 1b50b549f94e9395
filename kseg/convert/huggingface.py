"""Hugging Face SegFormer checkpoints (`transformers`) as kseg models: the folder, its config, its keys.

A Hugging Face checkpoint is a folder with `config.json` and `model.safetensors`
(or `pytorch_model.bin`), as `save_pretrained` and `hf download` write it. Its
keys are those of the hub checkpoints, which `transformers` 5 still writes (it
renames them only in memory, `transformers/conversion_mapping.py`):

- encoder (`segformer.` prefix in the task models, none in `SegformerModel`):
  `encoder.patch_embeddings.{i}.proj` / `.layer_norm`,
  `encoder.block.{i}.{j}.layer_norm_1`, `.attention.self.{query,key,value}`,
  `.attention.self.sr` / `.attention.self.layer_norm` (stages with `sr_ratio > 1`),
  `.attention.output.dense`, `.layer_norm_2`, `.mlp.dense1`, `.mlp.dwconv.dwconv`,
  `.mlp.dense2`, and `encoder.layer_norm.{i}`;
- decode head: `decode_head.linear_c.{i}.proj`, `decode_head.linear_fuse` (no bias),
  `decode_head.batch_norm`, `decode_head.classifier`;
- image classifier: `classifier`.

The in-memory names of `transformers` 5 (`stages.{i}.blocks.{j}.attention.q_proj`,
...; a `state_dict()` saved as it is) are read too.
"""

import json
import os
import re

from kseg.backbones import mit
from kseg.convert.state_dict import StrictCopy, read_safetensors, read_state_dict

#: The SegFormers NVIDIA published on the Hugging Face hub, by repository: the dataset
#: (kseg's name), its class count and the training crop size (height, width).
PUBLISHED = {
    **{
        f"nvidia/segformer-b{i}-finetuned-ade-512-512": ("ade20k", 150, (512, 512))
        for i in range(5)
    },
    "nvidia/segformer-b5-finetuned-ade-640-640": ("ade20k", 150, (640, 640)),
    **{
        f"nvidia/segformer-b{i}-finetuned-cityscapes-1024-1024": ("cityscapes", 19, (1024, 1024))
        for i in range(6)
    },
}

#: The ImageNet-1k encoders NVIDIA published (`SegformerForImageClassification`), by
#: kseg's variant name: what `MixTransformer(weights="imagenet")` downloads.
ENCODERS = {f"mit_b{i}": f"nvidia/mit-b{i}" for i in range(6)}

#: transformers' `SegformerConfig` defaults, for a `config.json` that leaves a value out.
CONFIG_DEFAULTS = {
    "num_channels": 3,
    "num_encoder_blocks": 4,
    "depths": [2, 2, 2, 2],
    "sr_ratios": [8, 4, 2, 1],
    "hidden_sizes": [32, 64, 160, 256],
    "patch_sizes": [7, 3, 3, 3],
    "strides": [4, 2, 2, 2],
    "num_attention_heads": [1, 2, 5, 8],
    "mlp_ratios": [4, 4, 4, 4],
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "classifier_dropout_prob": 0.1,
    "drop_path_rate": 0.1,
    "decoder_hidden_size": 256,
    "semantic_loss_ignore_index": 255,
}

# config.json key -> `kseg.backbones.MixTransformer` argument.
_STRUCTURE_KEYS = {
    "hidden_sizes": "hidden_sizes",
    "depths": "depths",
    "num_attention_heads": "num_heads",
    "sr_ratios": "sr_ratios",
    "mlp_ratios": "mlp_ratios",
    "patch_sizes": "patch_sizes",
    "strides": "strides",
}

_SEGMENTATION = "SegformerForSemanticSegmentation"
_ENCODER_ARCHITECTURES = ("SegformerModel", "SegformerForImageClassification")

# transformers 5's in-memory names -> the file names (the inverse of its
# `conversion_mapping.py` entries for SegformerModel and SegformerForSemanticSegmentation).
_MEMORY_NAMES = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"(^|\.)stages\.(\d+)\.patch_embeddings\.", r"\1encoder.patch_embeddings.\2."),
        (r"(^|\.)stages\.(\d+)\.blocks\.", r"\1encoder.block.\2."),
        (r"(^|\.)stages\.(\d+)\.layer_norm\.", r"\1encoder.layer_norm.\2."),
        (r"\.attention\.q_proj\.", ".attention.self.query."),
        (r"\.attention\.k_proj\.", ".attention.self.key."),
        (r"\.attention\.v_proj\.", ".attention.self.value."),
        (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attention.self.sr."),
        (r"\.attention\.sequence_reduction\.layer_norm\.", ".attention.self.layer_norm."),
        (r"\.attention\.o_proj\.", ".attention.output.dense."),
        (r"\.mlp\.fc1\.", ".mlp.dense1."),
        (r"\.mlp\.fc2\.", ".mlp.dense2."),
        (r"\.layernorm_before\.", ".layer_norm_1."),
        (r"\.layernorm_after\.", ".layer_norm_2."),
        (r"^decode_head\.linear_projections\.", "decode_head.linear_c."),
    )
)

_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_INSTALL_HINT = "pip install kseg[huggingface]"


def _fetch_hint(repo_id):
    return (
        f"download it where the hub can be reached (`hf download {repo_id} config.json "
        f"model.safetensors --local-dir DIR`, or `pytorch_model.bin` where the repository has "
        "no safetensors file) and pass that folder"
    )


def download(repo_id):
    """Downloads (once) a hub repository's `config.json` and weights; returns the local folder.

    Only `config.json` and `model.safetensors` are fetched, or `pytorch_model.bin` where
    the repository has no safetensors file, with `huggingface_hub.snapshot_download`
    (its cache, `HF_HOME`, and offline mode `HF_HUB_OFFLINE=1` apply).
    """
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError(
            f"Downloading {repo_id!r} from the Hugging Face hub needs `huggingface_hub`: "
            f"`{_INSTALL_HINT}`. Or {_fetch_hint(repo_id)}."
        ) from None
    for weights_file in ("model.safetensors", "pytorch_model.bin"):
        try:
            folder = huggingface_hub.snapshot_download(
                repo_id, allow_patterns=["config.json", weights_file]
            )
        except Exception as error:  # offline, no such repository, gated, ...
            raise OSError(
                f"Could not download {repo_id!r} from the Hugging Face hub ({error}). "
                f"{_fetch_hint(repo_id).capitalize()}."
            ) from error
        if os.path.isfile(os.path.join(folder, weights_file)):
            return folder
    raise OSError(
        f"The Hugging Face repository {repo_id!r} has neither model.safetensors nor "
        "pytorch_model.bin: kseg reads one of them (tf_model.h5 and flax weights are not "
        "read)."
    )


def _resolve(path):
    """`(folder, repo_id or None)` for a local folder or a hub repository id."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(
            "Expected `path` to be a folder (config.json and model.safetensors or "
            "pytorch_model.bin) or a Hugging Face repository id such as "
            f"'nvidia/segformer-b0-finetuned-ade-512-512'. Received: path of type "
            f"{type(path).__name__}"
        )
    if os.path.isdir(path):
        return path, None
    if os.path.exists(path):
        raise ValueError(
            "Expected `path` to be the folder of a Hugging Face checkpoint (config.json and "
            "model.safetensors or pytorch_model.bin), not a file: pass the folder that "
            f"holds it. Received: path={path!r}"
        )
    if _REPO_ID.fullmatch(path):
        return download(path), path
    raise ValueError(
        "Expected `path` to be an existing folder (config.json and model.safetensors or "
        "pytorch_model.bin) or a Hugging Face repository id such as "
        f"'nvidia/segformer-b0-finetuned-ade-512-512'. Received: path={path!r}"
    )


def read_config(folder):
    """The `config.json` of a checkpoint folder, as a dict."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ValueError(
            "Expected a Hugging Face checkpoint folder with config.json. Received: "
            f"{folder}, which holds {_listing(folder)}"
        )
    with open(path, encoding="utf-8") as handle:
        try:
            config = json.load(handle)
        except ValueError as error:
            raise ValueError(f"{path} is not valid JSON ({error}).") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"Expected {path} to hold a JSON object. Received: {type(config).__name__}"
        )
    return config


def read_weights(folder):
    """The state dict of a checkpoint folder: `model.safetensors` (also sharded) or the .bin."""
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        return read_safetensors(single)
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(read_safetensors(os.path.join(folder, shard)))
        return state
    legacy = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(legacy):
        return read_state_dict(legacy)
    raise ValueError(
        "Expected a Hugging Face checkpoint folder with model.safetensors (or "
        "model.safetensors.index.json and its shards) or pytorch_model.bin (tf_model.h5 and "
        f"flax weights are not read). Received: {folder}, which holds {_listing(folder)}"
    )


def _listing(folder):
    names = sorted(os.listdir(folder))
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return shown or "nothing"


def file_layout(state):
    """`state` with transformers 5's in-memory names turned into the file names (others kept)."""
    renamed = {}
    for key, value in state.items():
        new = key
        for pattern, replacement in _MEMORY_NAMES:
            new = pattern.sub(replacement, new)
        if new in renamed:
            raise ValueError(
                f"The checkpoint holds {new!r} twice, in the file layout and in transformers' "
                "in-memory layout: save it in one of them."
            )
        renamed[new] = value
    return renamed


def check_config(config):
    """Checks a SegFormer `config.json`; returns `(structure, settings)`.

    `structure` holds the `kseg.backbones.MixTransformer` structural arguments;
    `settings` the decoder width, the dropout rates and the ignore index. Every
    value kseg cannot build is named in one error.
    """
    model_type = config.get("model_type")
    if model_type != "segformer":
        raise ValueError(
            "Expected the config.json of a SegFormer (model_type 'segformer'). Received: "
            f"model_type={model_type!r}"
        )
    values = {**CONFIG_DEFAULTS, **{k: v for k, v in config.items() if k in CONFIG_DEFAULTS}}
    problems = []
    if values["hidden_act"] != "gelu":
        problems.append(
            f"hidden_act={values['hidden_act']!r} (the Mix-FFN uses the exact GELU, 'gelu')"
        )
    if values["num_channels"] != 3:
        problems.append(
            f"num_channels={values['num_channels']!r} (kseg converts RGB SegFormers; adapt a "
            "converted model with kseg.backbones.with_input_channels)"
        )
    if values["num_encoder_blocks"] != mit.NUM_STAGES:
        problems.append(
            f"num_encoder_blocks={values['num_encoder_blocks']!r} (the Mix Transformer has "
            f"{mit.NUM_STAGES} stages)"
        )
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if values[key]:
            problems.append(f"{key}={values[key]!r} (kseg's SegFormer has no such dropout: 0)")
    structure = {_STRUCTURE_KEYS[key]: values[key] for key in _STRUCTURE_KEYS}
    for argument, value in structure.items():
        if not isinstance(value, (list, tuple)) or len(value) != mit.NUM_STAGES:
            key = next(k for k, a in _STRUCTURE_KEYS.items() if a == argument)
            problems.append(f"{key}={value!r} (one value per stage, {mit.NUM_STAGES})")
    if not problems:
        try:
            structure = mit.architecture(None, **structure)
        except (TypeError, ValueError) as error:
            problems.append(str(error))
    if problems:
        raise ValueError(
            "The SegFormer config has values kseg does not build: " + "; ".join(problems) + "."
        )
    settings = {
        "decoder_filters": values["decoder_hidden_size"],
        "dropout": values["classifier_dropout_prob"],
        "drop_path_rate": values["drop_path_rate"],
        "ignore_index": values["semantic_loss_ignore_index"],
    }
    return structure, settings


def _task(config, state):
    """`"segmentation"` or `"encoder"`: from `architectures`, else from the keys."""
    architectures = config.get("architectures") or []
    if _SEGMENTATION in architectures:
        return "segmentation"
    if any(name in architectures for name in _ENCODER_ARCHITECTURES):
        return "encoder"
    if architectures:
        raise ValueError(
            f"Expected a checkpoint of {_SEGMENTATION}, SegformerModel or "
            f"SegformerForImageClassification. Received: architectures={architectures!r}"
        )
    return "segmentation" if any(k.startswith("decode_head.") for k in state) else "encoder"


def _encoder_prefix(state):
    """`"segformer.encoder."` (task models) or `"encoder."` (SegformerModel)."""
    if any(k.startswith("segformer.") for k in state):
        return "segformer.encoder."
    return "encoder."


def mix_transformer_copy(copy, backbone, prefix):
    """Adds a Hugging Face Mix Transformer's keys (file names after `prefix`) to `copy`."""
    layers = {layer.name: layer for layer in backbone.layers}
    for stage in range(mit.NUM_STAGES):
        name = f"stage{stage + 1}"
        embed = layers[f"{name}_patch_embed"]
        copy.conv(embed.conv, f"{prefix}patch_embeddings.{stage}.proj")
        copy.layer_norm(embed.norm, f"{prefix}patch_embeddings.{stage}.layer_norm")
        block = 0
        while f"{name}_block{block + 1}_norm1" in layers:
            layer = f"{name}_block{block + 1}"
            key = f"{prefix}block.{stage}.{block}"
            copy.layer_norm(layers[f"{layer}_norm1"], f"{key}.layer_norm_1")
            attention = layers[f"{layer}_attention"]
            copy.dense(attention.query, f"{key}.attention.self.query")
            copy.dense(attention.key, f"{key}.attention.self.key")
            copy.dense(attention.value, f"{key}.attention.self.value")
            if attention.sr is not None:
                copy.conv(attention.sr, f"{key}.attention.self.sr")
                copy.layer_norm(attention.sr_norm, f"{key}.attention.self.layer_norm")
            copy.dense(attention.output_dense, f"{key}.attention.output.dense")
            copy.layer_norm(layers[f"{layer}_norm2"], f"{key}.layer_norm_2")
            mlp = layers[f"{layer}_mlp"]
            copy.dense(mlp.dense1, f"{key}.mlp.dense1")
            copy.depthwise(mlp.dwconv, f"{key}.mlp.dwconv.dwconv")
            copy.dense(mlp.dense2, f"{key}.mlp.dense2")
            block += 1
        copy.layer_norm(layers[f"{name}_norm"], f"{prefix}layer_norm.{stage}")
    return copy


def _structure_differences(config, structure):
    checked, _ = check_config(config)
    return [
        f"{key}: config {checked[key]}, backbone {structure[key]}"
        for key in mit.STRUCTURE
        if checked[key] != structure[key]
    ]


def mix_transformer_state(weights, structure, variant):
    """Reads encoder weights for a `kseg.backbones.MixTransformer`; returns `(state, source)`.

    `weights`: `"imagenet"` (NVIDIA's `nvidia/mit-b*` for `variant`, downloaded), a
    checkpoint folder (its config must describe `structure`), a weights file or a
    state dict. Read before the backbone is built, so that a wrong checkpoint fails
    fast.
    """
    if isinstance(weights, str) and weights == "imagenet":
        weights, source = download(ENCODERS[variant]), f"Hugging Face {ENCODERS[variant]}"
    else:
        source = weights if isinstance(weights, str) else "state dict"
    if isinstance(weights, str) and os.path.isdir(weights):
        differences = _structure_differences(read_config(weights), structure)
        if differences:
            raise ValueError(
                f"The checkpoint in {weights} is another Mix Transformer than the one asked "
                f"for ({variant or 'custom'}): {'; '.join(differences)}. Build the backbone "
                "with the checkpoint's structure (kseg.convert.from_huggingface reads it)."
            )
        state = read_weights(weights)
    else:
        state = read_state_dict(weights)
    return file_layout(state), source


def load_mix_transformer(backbone, state, source):
    """Strictly loads a Hugging Face encoder state dict into a `kseg.backbones.MixTransformer`.

    The image classifier (`classifier.*`) and a SegFormer's decode head
    (`decode_head.*`) are skipped; anything else must match, or nothing is loaded.
    """
    copy = StrictCopy(state, source)
    copy.skip("classifier.")
    copy.skip("decode_head.")
    mix_transformer_copy(copy, backbone, _encoder_prefix(state))
    return copy.finish(backbone)


def _classes(state):
    weight = state.get("decode_head.classifier.weight")
    if weight is None:
        raise ValueError(
            "The checkpoint has no `decode_head.classifier.weight`, the classifier of "
            f"{_SEGMENTATION}: is it a checkpoint of that architecture?"
        )
    return int(weight.shape[0])


def _description(config, dataset_name, num_classes, ignore_index):
    """The dataset description of `id2label`, or None where it does not name every class."""
    labels = config.get("id2label")
    if not isinstance(labels, dict):
        return None
    names = [labels.get(str(i), labels.get(i)) for i in range(num_classes)]
    if len(labels) != num_classes or not all(isinstance(n, str) and n for n in names):
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        ignore_index = None
    return {"name": dataset_name, "class_names": names, "ignore_index": ignore_index}


def from_huggingface(path, num_classes=None, input_shape=(None, None, 3), name=None):
    """A kseg SegFormer (or Mix Transformer) holding a Hugging Face SegFormer checkpoint.

    The structure is read from the checkpoint's `config.json` (`hidden_sizes`,
    `depths`, `num_attention_heads`, `sr_ratios`, `mlp_ratios`, `patch_sizes`,
    `strides`, `decoder_hidden_size`, `classifier_dropout_prob`,
    `drop_path_rate`), so any SegFormer converts, not only the published ones:

    - `SegformerForSemanticSegmentation`: `kseg.models.SegFormer` on
      `kseg.backbones.MixTransformer`, with input normalisation `"torch"`
      (Hugging Face's `SegformerImageProcessor`: RGB in [0, 255] rescaled to
      [0, 1], ImageNet mean and std). Its logits equal `transformers`'
      logits upsampled to the image size as
      `SegformerImageProcessor.post_process_semantic_segmentation` does
      (bilinear, `align_corners=False`), for any image size (the processor's
      resize to the training size is not part of the model). The model
      carries the checkpoint's `id2label` as its dataset description
      (`model.dataset`: class names in label order, and
      `semantic_loss_ignore_index` as the ignore index).
    - `SegformerModel` or `SegformerForImageClassification` (e.g. NVIDIA's
      ImageNet encoders `nvidia/mit-b0` ... `b5`): the Mix Transformer
      alone, taking the normalised image (as `SegformerModel` takes
      `pixel_values`) and giving its four stage features; the image
      classifier is skipped. Put a SegFormer on it with
      `kseg.models.SegFormer(num_classes, backbone=encoder)`.

    Loading is strict, as `kseg.convert.from_torchvision`: every missing,
    unexpected or misshapen key is listed in one error and nothing is
    loaded, and a config that kseg cannot build (another `model_type`, a
    `hidden_act` other than the exact `"gelu"`, other than 3 input channels or
    4 stages, hidden or attention dropout) is refused with the values named.

    Args:
        path: a folder with `config.json` and `model.safetensors` (or
            `pytorch_model.bin`, read with torch), as `save_pretrained` and
            `hf download` write it; or a hub repository id (e.g.
            `"nvidia/segformer-b0-finetuned-ade-512-512"`, see `PUBLISHED`),
            whose `config.json` and weights are downloaded once with
            `huggingface_hub` (`pip install kseg[huggingface]`) into its cache.
        num_classes: SegFormers only: None (default: the checkpoint's) or
            another class count, for which every weight but the classifier's
            loads and the classifier starts from kseg's initialisation
            (fine-tuning; the model then has no dataset description).
        input_shape: the model's input shape (3 channels). Defaults to
            `(None, None, 3)`.
        name: model name. Defaults to `"segformer"`, or the variant's name
            (e.g. `"mit_b0"`) for an encoder.

    Returns:
        A `keras.Model`: the SegFormer (logits at the input size), or the
        Mix Transformer (a dict of features).

    Raises:
        ValueError: the checkpoint does not fit (every problem listed), or
            its config is not one kseg builds.
        ImportError: a repository id without `huggingface_hub` installed.
        OSError: the download failed (the message says which folder to
            fetch and pass instead).

    Example:

    >>> model = kseg.convert.from_huggingface("nvidia/segformer-b0-finetuned-ade-512-512")
    >>> model.dataset["class_names"][:3]
    ['wall', 'building', 'sky']
    """
    from kseg import models
    from kseg.models._base import input_channels

    folder, repo_id = _resolve(path)
    config = read_config(folder)
    structure, settings = check_config(config)
    if input_channels(input_shape) not in (None, 3):
        raise ValueError(
            "Expected `input_shape` with 3 channels (a Hugging Face SegFormer takes RGB "
            f"images). Received: input_shape={tuple(input_shape)}"
        )
    state = file_layout(read_weights(folder))
    task = _task(config, state)
    source = f"Hugging Face {repo_id or folder}"
    variant = mit.variant_of(structure)
    arguments = {} if variant is not None else structure

    if task == "encoder":
        if num_classes is not None:
            raise ValueError(
                "`num_classes` applies to SegFormer checkpoints; this is an encoder checkpoint "
                "(SegformerModel or SegformerForImageClassification), converted to the Mix "
                "Transformer alone. Put a SegFormer on it with "
                "`kseg.models.SegFormer(num_classes, backbone=encoder)`. Received: "
                f"num_classes={num_classes!r}"
            )
        encoder = mit.MixTransformer(
            variant,
            input_shape=input_shape,
            drop_path_rate=settings["drop_path_rate"],
            name=name,
            **arguments,
        )
        copy = StrictCopy(state, source)
        copy.skip("classifier.")
        mix_transformer_copy(copy, encoder, _encoder_prefix(state))
        return copy.finish(encoder)

    checkpoint_classes = _classes(state)
    num_classes = checkpoint_classes if num_classes is None else num_classes
    encoder = mit.MixTransformer(
        variant, input_shape=input_shape, drop_path_rate=settings["drop_path_rate"], **arguments
    )
    model = models.SegFormer(
        num_classes,
        input_shape=input_shape,
        backbone=encoder,
        decoder_filters=settings["decoder_filters"],
        dropout=settings["dropout"],
        normalization="torch",
        name=name or "segformer",
    )
    fine_tune = model.get_layer("classifier").filters != checkpoint_classes
    copy = StrictCopy(state, source)
    mix_transformer_copy(copy, encoder, "segformer.encoder.")
    for stage in range(mit.NUM_STAGES):
        copy.dense(
            model.get_layer(f"decode_head_linear_c{stage + 1}"),
            f"decode_head.linear_c.{stage}.proj",
        )
    fuse = model.get_layer("decode_head_fuse")
    copy.conv(fuse.conv, "decode_head.linear_fuse")
    copy.bn(fuse.bn, "decode_head.batch_norm")
    classifier = model.get_layer("classifier")
    if fine_tune:
        # Keeps kseg's initialisation for the new class count.
        copy.skip("decode_head.classifier.")
        copy.keep(classifier)
    else:
        copy.conv(classifier, "decode_head.classifier")
    copy.finish(model)
    if fine_tune:
        return model
    if repo_id in PUBLISHED:
        dataset = PUBLISHED[repo_id][0]
    else:  # the repository's or the folder's name
        dataset = repo_id.split("/")[-1] if repo_id else os.path.basename(os.path.abspath(folder))
    description = _description(config, dataset, num_classes, settings["ignore_index"])
    return model if description is None else models.with_dataset(model, description)
