"""The README's commands on a small segmentation_models.pytorch PSPNet: convert, predict, fine-tune.

smp writes a small random `PSPNet` (ResNet-18 encoder, `encoder_weights=None`: nothing is
downloaded) with `save_pretrained`; `convert.py --from smp` makes the `.keras` file,
`predict.py` writes its masks, which must be smp's argmax, and `train.py --smoke
--init-from` fine-tunes it on the synthetic set's classes, under the tests' backend.
"""


import convert  # recipes/convert.py (tests/recipes/__init__.py puts recipes/ on sys.path)
import keras
import numpy as np
import predict
import pytest
from PIL import Image

from tests.recipes import fine_tune_smoke
from tests.torch_refs import import_reference, randomize_batchnorm, torch_input


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    smp = import_reference("segmentation_models_pytorch")
    import torch

    torch.manual_seed(0)
    model = smp.PSPNet("resnet18", encoder_weights=None, classes=3, psp_out_channels=16)
    randomize_batchnorm(model)
    folder = tmp_path_factory.mktemp("smp") / "pspnet-tiny"
    model.save_pretrained(folder)
    return folder, model


def test_convert_predict_and_fine_tune(checkpoint, tmp_path, capsys):
    folder, reference = checkpoint
    output = tmp_path / "pspnet.keras"
    convert.main(["--from", "smp", "--weights", str(folder), "--output", str(output)])
    out = capsys.readouterr().out
    assert "PSPNet from smp" in out and "3 classes" in out, out
    assert "identical outputs" in out, out
    model = keras.saving.load_model(output, compile=False, safe_mode=True)
    assert model.builder == "PSPNet" and model.dataset is None

    # predict.py's mask is the argmax of smp's logits (an image size smp takes: 8 divides it).
    import torch

    image = np.random.default_rng(0).integers(0, 256, (48, 72, 3), dtype=np.uint8)
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
        logits = reference(torch_input(image[None].astype("float64")))[0].numpy()
    top2 = np.sort(logits, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4  # pixels whose decision rounding cannot flip
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(mask[clear], logits.argmax(0)[clear])

    # Fine-tuning on data with other classes: one flag.
    tuned = fine_tune_smoke(output, tmp_path / "tuned")
    assert tuned.builder == "PSPNet"
    assert tuned.arguments["feature"] == "stage2"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--weights", "/no/such/folder"], "argument --weights: expected the folder"),
        (["--arch", "resnet50"], "argument --arch: the architecture of an smp model"),
    ],
)
def test_bad_arguments_name_the_argument(checkpoint, extra, message, capsys):
    argv = ["--from", "smp", "--weights", str(checkpoint[0]), "--output", "m.keras", *extra]
    with pytest.raises(SystemExit) as info:
        convert.parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_class_kseg_does_not_convert_is_named(tmp_path):
    import json

    folder = tmp_path / "manet"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_model_class": "MAnet"}))
    with pytest.raises(SystemExit, match=r"argument --weights: .*Received: _model_class='MAnet'"):
        convert.main(
            ["--from", "smp", "--weights", str(folder), "--output", str(tmp_path / "m.keras")]
        )
