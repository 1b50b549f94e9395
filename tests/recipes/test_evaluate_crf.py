"""recipes/evaluate.py --crf on a saved 1x1-conv model and two synthetic images."""

import json

import evaluate  # recipes/evaluate.py (tests/recipes/__init__.py puts recipes/ on sys.path)
import keras
import numpy as np

import kseg
import kseg.data
from tests.recipes.test_recipes import _save_pointwise_model


def _miou(pairs, k):
    confusion = np.zeros((k, k), np.int64)
    for mask, pred in pairs:
        keep = mask != 255
        np.add.at(confusion, (mask[keep], pred[keep]), 1)
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return (tp[union > 0] / union[union > 0]).mean()


def test_evaluate_with_crf_scores_the_refined_labels(tmp_path, capsys):
    checkpoint = tmp_path / "pointwise.keras"
    logits = _save_pointwise_model(checkpoint, channels=3, num_outputs=3, seed=7)
    results = tmp_path / "results.json"
    argv = [str(checkpoint), "--max-images", "2", "--crf", "--output-json", str(results)]
    evaluate.main(argv)
    assert "+ dense CRF (DeepLab's VOC values)" in capsys.readouterr().out
    with open(results) as f:
        scores = json.load(f)
    assert scores["crf"] is True and scores["dataset"] == "synthetic"
    # The same two images (96 x 96, the lattice path): softmax, CRF, argmax, scored here.
    plain, refined = [], []
    for image, mask in kseg.data.synthetic_dataset("val", num_classes=3, seed=0).take(2):
        image, mask = np.asarray(image), np.asarray(mask)
        z = logits(image)
        probs = np.exp(z - z.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        crf = kseg.postprocess.dense_crf(image, probs.astype(np.float32))
        plain.append((mask, probs.argmax(-1)))
        refined.append((mask, keras.ops.convert_to_numpy(crf).argmax(-1)))
    np.testing.assert_allclose(scores["mean_iou"], _miou(refined, 3), atol=1e-4)
    assert abs(_miou(refined, 3) - _miou(plain, 3)) > 1e-3  # the CRF changed the labels
