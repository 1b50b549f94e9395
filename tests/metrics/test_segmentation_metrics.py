"""Tests for MeanIoU, PixelAccuracy, MeanPixelAccuracy, FrequencyWeightedIoU and DiceScore."""

import keras
import numpy as np
import pytest

import kseg
from kseg.metrics import (
    DiceScore,
    F1Score,
    FrequencyWeightedIoU,
    MeanIoU,
    MeanPixelAccuracy,
    PixelAccuracy,
)
from tests.helpers import BACKEND, compile_for_fit, to_numpy
from tests.metrics.test_confusion_matrix import (
    messy_labels,
    reference_binary,
    reference_confusion,
)


def reference_scores(cm):
    """NumPy reference of the metrics from a confusion matrix (absent classes skipped).

    Dice is written as the F1 score of each class, the harmonic mean of its precision
    `tp / pred` and recall `tp / gt` (0 when either is 0 or undefined)."""
    cm = cm.astype(np.float64)
    tp, gt, pred = np.diag(cm), cm.sum(1), cm.sum(0)
    union = gt + pred - tp
    present = union > 0
    iou = np.where(present, tp / np.where(present, union, 1), np.nan)
    acc = np.where(gt > 0, tp / np.where(gt > 0, gt, 1), np.nan)
    precision = tp / np.where(pred > 0, pred, 1)
    recall = tp / np.where(gt > 0, gt, 1)
    both = precision + recall
    f1 = np.where(both > 0, 2 * precision * recall / np.where(both > 0, both, 1), 0.0)
    f1 = np.where(present, f1, np.nan)
    return {
        "miou": iou[present].mean() if present.any() else 0.0,
        "pa": tp.sum() / cm.sum() if cm.sum() else 0.0,
        "mpa": acc[gt > 0].mean() if (gt > 0).any() else 0.0,
        "fwiou": (gt * np.nan_to_num(iou)).sum() / gt.sum() if gt.sum() else 0.0,
        "dice": f1[present].mean() if present.any() else 0.0,
        "f1": f1[present].mean() if present.any() else 0.0,
        "iou": iou,
        "acc": acc,
        "per_class_dice": f1,
    }


METRICS = {
    "miou": MeanIoU,
    "pa": PixelAccuracy,
    "mpa": MeanPixelAccuracy,
    "fwiou": FrequencyWeightedIoU,
    "dice": DiceScore,
    "f1": F1Score,
}


def test_hand_worked_values():
    # labels 0 0 1 (255 ignored), predictions 0 1 1: cm = [[1, 1, 0], [0, 1, 0], [0, 0, 0]].
    y_true = np.array([[[0, 0, 1, 255]]])
    y_pred = np.array([[[0, 1, 1, 2]]])
    expected = {
        "miou": (1 / 2 + 1 / 2) / 2,  # class 2 absent from both: left out
        "pa": 2 / 3,
        "mpa": (1 / 2 + 1 / 1) / 2,
        "fwiou": 2 / 3 * 1 / 2 + 1 / 3 * 1 / 2,
        "dice": (2 / 3 + 2 / 3) / 2,  # class 0: 2 * 1 / (2 + 1); class 1: 2 * 1 / (1 + 2)
        "f1": 2 / 3,
    }
    for key, cls in METRICS.items():
        m = cls(num_classes=3)
        m.update_state(y_true, y_pred)
        np.testing.assert_allclose(float(to_numpy(m.result())), expected[key], rtol=1e-6)
        np.testing.assert_allclose(to_numpy(m.per_class_iou()), [0.5, 0.5, np.nan])
        np.testing.assert_allclose(to_numpy(m.per_class_accuracy()), [0.5, 1.0, np.nan])
        np.testing.assert_allclose(to_numpy(m.per_class_dice()), [2 / 3, 2 / 3, np.nan], rtol=1e-6)


def test_predicted_but_absent_class_counts_as_zero_iou():
    # Class 1 is predicted once but never labelled: its IoU is 0 and it is in the mean.
    m = MeanIoU(num_classes=3)
    m.update_state(np.array([[[0, 0]]]), np.array([[[0, 1]]]))
    np.testing.assert_allclose(float(to_numpy(m.result())), (0.5 + 0.0) / 2)
    mpa = MeanPixelAccuracy(num_classes=3)
    mpa.update_state(np.array([[[0, 0]]]), np.array([[[0, 1]]]))
    np.testing.assert_allclose(float(to_numpy(mpa.result())), 0.5)  # class 1 has no label


@pytest.mark.parametrize("key", sorted(METRICS))
def test_empty_matrix_gives_zero(key):
    m = METRICS[key](num_classes=4)
    assert float(to_numpy(m.result())) == 0.0
    m.update_state(np.full((1, 3, 3), 255), np.zeros((1, 3, 3, 4), "float32"))  # all ignored
    assert float(to_numpy(m.result())) == 0.0
    assert np.isnan(to_numpy(m.per_class_iou())).all()


def test_random_streaming_against_numpy():
    rng = np.random.default_rng(7)
    k = 6
    metrics = {key: cls(num_classes=k) for key, cls in METRICS.items()}
    cm = np.zeros((k, k), np.int64)
    for _ in range(2):
        labels = messy_labels(rng, (2, 8, 9), k, present=[0, 2, 3, 5])  # 1 and 4 absent
        logits = rng.standard_normal((2, 8, 9, k)).astype("float32")
        logits[..., 4] -= 10.0
        for m in metrics.values():
            m.update_state(labels, logits)
        cm += reference_confusion(labels, logits.argmax(-1), k)
    ref = reference_scores(cm)
    for key, m in metrics.items():
        np.testing.assert_allclose(float(to_numpy(m.result())), ref[key], rtol=1e-5)
    np.testing.assert_allclose(to_numpy(metrics["miou"].per_class_iou()), ref["iou"], rtol=1e-5)
    np.testing.assert_allclose(to_numpy(metrics["mpa"].per_class_accuracy()), ref["acc"], rtol=1e-5)
    dice = to_numpy(metrics["dice"].per_class_dice())
    np.testing.assert_allclose(dice, ref["per_class_dice"], rtol=1e-5)
    for m in metrics.values():
        m.reset_state()
        assert float(to_numpy(m.result())) == 0.0


@pytest.mark.parametrize("cls", list(METRICS.values()))
def test_serialization(cls):
    m = cls(num_classes=5, ignore_index=0)
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(m))
    assert type(revived) is cls
    assert revived.get_config() == m.get_config()


@pytest.mark.parametrize("jit_compile", [False, True])
def test_metrics_in_compiled_fit_and_evaluate(jit_compile):
    """Inside fit/evaluate, compiled as the backend allows (TF: plain graph or XLA) vs NumPy."""
    if jit_compile != (BACKEND == "jax") and BACKEND != "tensorflow":
        pytest.skip("JAX always compiles; torch runs eagerly")
    k = 3
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 8, 8, 2)).astype("float32")
    y = messy_labels(rng, (6, 8, 8), k).astype("int32")
    inputs = keras.Input((8, 8, 2))
    model = keras.Model(inputs, keras.layers.Conv2D(k, 1)(inputs))
    metrics = [
        MeanIoU(k),
        PixelAccuracy(k),
        MeanPixelAccuracy(k),
        FrequencyWeightedIoU(k),
        DiceScore(k),
    ]
    compile_for_fit(
        model,
        optimizer="sgd",
        loss=kseg.losses.SegmentationCrossEntropy(),
        metrics=metrics,
        jit_compile=jit_compile,
    )
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["mean_iou"][0])
    results = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    cm = reference_confusion(y, to_numpy(model.predict(x, verbose=0)).argmax(-1), k)
    ref = reference_scores(cm)
    np.testing.assert_allclose(results["mean_iou"], ref["miou"], rtol=1e-5)
    np.testing.assert_allclose(results["pixel_accuracy"], ref["pa"], rtol=1e-5)
    np.testing.assert_allclose(results["mean_pixel_accuracy"], ref["mpa"], rtol=1e-5)
    np.testing.assert_allclose(results["frequency_weighted_iou"], ref["fwiou"], rtol=1e-5)
    np.testing.assert_allclose(results["dice_score"], ref["dice"], rtol=1e-5)
    # The compiled metric's state holds the same exact counts, out-of-range labels too.
    bad = (y < 0) | ((y >= k) & (y != 255))
    for m in metrics:
        np.testing.assert_array_equal(m.exact_counts(), cm)
        assert m.out_of_range_count() == int(bad.sum())
        assert m.out_of_range_value() == int(y[bad].max())


def test_mixed_precision_model_output():
    keras.config.set_dtype_policy("mixed_bfloat16")
    rng = np.random.default_rng(9)
    labels = messy_labels(rng, (1, 4, 5), 3)
    logits = keras.ops.cast(rng.standard_normal((1, 4, 5, 3)), "bfloat16")
    m = MeanIoU(3)
    m.update_state(labels, logits)
    ref = reference_scores(
        reference_confusion(labels, to_numpy(logits).astype("float32").argmax(-1), 3)
    )
    assert to_numpy(m.result()).dtype == np.float32
    np.testing.assert_allclose(float(to_numpy(m.result())), ref["miou"], rtol=1e-6)


@pytest.mark.parametrize("key", sorted(METRICS))
def test_binary_mode_scores_both_classes(key):
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 2, size=(3, 8, 8)).astype("int32")
    labels[rng.random(labels.shape) < 0.1] = 255
    logits = rng.standard_normal((3, 8, 8, 1)).astype("float32") + 0.3
    m = METRICS[key](num_classes=1)
    m.update_state(labels, logits)
    ref = reference_scores(reference_binary(labels, logits))
    np.testing.assert_allclose(float(to_numpy(m.result())), ref[key], rtol=1e-6)
    assert to_numpy(m.per_class_iou()).shape == (2,)
    np.testing.assert_allclose(to_numpy(m.per_class_iou()), ref["iou"], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(m.per_class_dice()), ref["per_class_dice"], rtol=1e-6)
    assert m.get_config()["num_classes"] == 1


def test_binary_hand_worked_mean_iou():
    # labels 0 0 1 1, logits -1 2 3 -4: cm = [[1, 1], [1, 1]]; IoU 1/3 for both classes.
    m = MeanIoU(num_classes=1)
    m.update_state(np.array([[[0, 0, 1, 1]]]), np.array([[[[-1.0], [2.0], [3.0], [-4.0]]]]))
    np.testing.assert_allclose(float(to_numpy(m.result())), 1 / 3, rtol=1e-6)
    p = PixelAccuracy(num_classes=1, threshold=2.5)  # only the logit 3 is foreground
    p.update_state(np.array([[[0, 0, 1, 1]]]), np.array([[[[-1.0], [2.0], [3.0], [-4.0]]]]))
    np.testing.assert_allclose(float(to_numpy(p.result())), 3 / 4, rtol=1e-6)


def test_binary_model_fit_and_evaluate():
    """A one-logit model (sigmoid) trained and evaluated with binary-mode metrics vs NumPy."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((6, 16, 16, 2)).astype("float32")
    y = (x[..., :1] + 0.5 * x[..., 1:] > 0.2).astype("float32")  # (B, H, W, 1) 0/1
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 2))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1)(inputs))
    metrics = [MeanIoU(1), PixelAccuracy(1), MeanPixelAccuracy(1), FrequencyWeightedIoU(1)]
    compile_for_fit(
        model,
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=metrics,
    )
    history = model.fit(x, y, batch_size=2, epochs=3, verbose=0)
    assert history.history["pixel_accuracy"][-1] > 0.6
    results = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    logits = to_numpy(model.predict(x, verbose=0))
    ref = reference_scores(reference_binary(y[..., 0].astype("int32"), logits))
    np.testing.assert_allclose(results["mean_iou"], ref["miou"], rtol=1e-5)
    np.testing.assert_allclose(results["pixel_accuracy"], ref["pa"], rtol=1e-5)
    np.testing.assert_allclose(results["mean_pixel_accuracy"], ref["mpa"], rtol=1e-5)
    np.testing.assert_allclose(results["frequency_weighted_iou"], ref["fwiou"], rtol=1e-5)
    for m in metrics:
        assert m.exact_counts().shape == (2, 2)
        assert m.exact_counts().sum() == y.size
        assert m.out_of_range_count() == 0


def test_dice_score_equals_keras_f1_on_one_hot_pixels():
    """Without ignored pixels and with every class occurring, the mean Dice is the macro F1
    of keras.metrics.F1Score on the pixels as one-hot rows, and per class its average=None."""
    rng = np.random.default_rng(12)
    k = 4
    labels = rng.integers(0, k, (2, 6, 7))
    logits = rng.standard_normal((2, 6, 7, k)).astype("float32")
    dice = DiceScore(k)
    dice.update_state(labels, logits)
    one_hot = np.eye(k, dtype="float32")[labels.reshape(-1)]
    scores = logits.reshape(-1, k)
    macro = keras.metrics.F1Score(average="macro", threshold=None)
    macro.update_state(one_hot, scores)
    per_class = keras.metrics.F1Score(average=None, threshold=None)
    per_class.update_state(one_hot, scores)
    np.testing.assert_allclose(
        float(to_numpy(dice.result())), float(to_numpy(macro.result())), rtol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(dice.per_class_dice()), to_numpy(per_class.result()), rtol=1e-5
    )
    # A class's Dice is 2 IoU / (1 + IoU).
    iou = to_numpy(dice.per_class_iou())
    np.testing.assert_allclose(to_numpy(dice.per_class_dice()), 2 * iou / (1 + iou), rtol=1e-5)


def test_f1_score_is_the_dice_score_under_its_own_name():
    assert issubclass(F1Score, DiceScore) and F1Score is not keras.metrics.F1Score
    f1, dice = F1Score(3), DiceScore(3)
    assert (f1.name, dice.name) == ("f1_score", "dice_score")
    y_true = np.array([[[0, 2, 1, 255, 1]]])
    y_pred = np.array([[[0, 1, 1, 2, 2]]])
    for m in (f1, dice):
        m.update_state(y_true, y_pred)
    # class 0: 1; class 1: 2 * 1 / (2 + 2); class 2: 2 * 0 / (1 + 1).
    np.testing.assert_allclose(float(to_numpy(f1.result())), (1 + 0.5 + 0) / 3, rtol=1e-6)
    assert float(to_numpy(f1.result())) == float(to_numpy(dice.result()))
    m = DiceScore(3)
    m.update_state(y_true, y_pred, sample_weight=np.array([[[2, 1, 1, 1, 0]]]))
    # Weights: class 0 counts twice; the last pixel is dropped: class 1: 2 * 1 / (1 + 2),
    # class 2: 0 / (1 + 0).
    np.testing.assert_allclose(float(to_numpy(m.result())), (1 + 2 / 3 + 0) / 3, rtol=1e-6)
