"""The README's three commands on a small Hugging Face SegFormer: convert, predict, fine-tune.

`transformers` writes a small random `SegformerForSemanticSegmentation` with
`save_pretrained` (nothing is downloaded); `convert.py --from huggingface` makes the
`.keras` file, `predict.py` writes its masks, and `train.py --smoke --init-from` fine-tunes
it on the synthetic set's classes, under the tests' backend.
"""


import convert  # recipes/convert.py (tests/recipes/__init__.py puts recipes/ on sys.path)
import keras
import numpy as np
import predict
import pytest
from PIL import Image

from tests.recipes import fine_tune_smoke
from tests.torch_refs import import_reference, torch_input

LABELS = {0: "road", 1: "grass", 2: "sky"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    transformers = import_reference("transformers")
    import torch

    torch.manual_seed(0)
    config = transformers.SegformerConfig(
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 2, 2, 4],
        decoder_hidden_size=16,
        num_labels=3,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    folder = tmp_path_factory.mktemp("hf") / "segformer-tiny"
    model.save_pretrained(folder)
    return folder, model


def test_convert_predict_and_fine_tune(checkpoint, tmp_path, capsys):
    folder, reference = checkpoint
    output = tmp_path / "segformer.keras"
    convert.main(["--from", "huggingface", "--weights", str(folder), "--output", str(output)])
    out = capsys.readouterr().out
    assert "SegFormer from huggingface" in out and "3 classes" in out, out
    assert "the checkpoint's class names" in out and "identical outputs" in out, out
    model = keras.saving.load_model(output, compile=False, safe_mode=True)
    assert model.dataset["class_names"] == list(LABELS.values())

    # predict.py's mask is the argmax of transformers' logits, upsampled as its image
    # processor's post-processing does.
    import torch
    import torch.nn.functional as F

    image = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(image).save(images / "a.png")
    predict.main(
        [str(images), "--checkpoint", str(output), "--output-dir", str(tmp_path / "p")]
        + ["--no-size-buckets"]
    )
    with Image.open(tmp_path / "p" / "a_mask.png") as png:
        mask = np.asarray(png)
    with torch.no_grad():
        logits = reference(pixel_values=torch_input(image[None].astype("float64"))).logits
        logits = F.interpolate(logits, size=(45, 61), mode="bilinear", align_corners=False)
    expected = logits[0].argmax(0).numpy()
    top2 = np.sort(logits[0].numpy(), axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4  # pixels whose decision rounding cannot flip
    np.testing.assert_array_equal(mask[clear], expected[clear])

    # Fine-tuning on data with other classes: one flag.
    tuned = fine_tune_smoke(output, tmp_path / "tuned")
    assert tuned.builder == "SegFormer"
