"""Tests for kseg.losses.SegmentationCrossEntropy."""

import keras
import numpy as np
import pytest

from kseg.losses import SegmentationCrossEntropy
from tests.helpers import BACKEND, random_array, to_numpy


def np_log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def reference_ce(labels, logits, ignore_index=255, weights=None, smoothing=0.0, keep=None):
    """NumPy reference: torch's weighted-mean cross-entropy over non-ignored pixels."""
    k = logits.shape[-1]
    logp = np_log_softmax(logits).reshape(-1, k)
    labels = labels.reshape(-1)
    valid = (labels != ignore_index) & (labels >= 0) & (labels < k)
    if keep is not None:
        valid &= keep.reshape(-1)
    w = np.ones(k) if weights is None else np.asarray(weights, np.float64)
    num, den = 0.0, 0.0
    for i in np.flatnonzero(valid):
        y = labels[i]
        num += (1 - smoothing) * w[y] * -logp[i, y] + smoothing / k * np.sum(w * -logp[i])
        den += w[y]
    return num / den if den > 0 else 0.0


def loss_value(loss, labels, logits):
    return float(to_numpy(loss(labels, logits)))


def test_hand_worked_two_pixels():
    # Two classes, logits (0, 0) -> p = 1/2 for both; the second pixel is ignored.
    logits = np.zeros((1, 1, 2, 2), "float32")
    labels = np.array([[[1, 255]]])
    np.testing.assert_allclose(
        loss_value(SegmentationCrossEntropy(), labels, logits), np.log(2), rtol=1e-6
    )


@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 1.0, 0.0]])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_against_numpy_with_ignore_and_weights(weights, smoothing):
    rng = np.random.default_rng(0)
    logits = random_array((2, 5, 6, 4), seed=1, scale=2.0)
    labels = rng.integers(0, 4, (2, 5, 6))
    labels[rng.random(labels.shape) < 0.3] = 255
    loss = SegmentationCrossEntropy(class_weights=weights, label_smoothing=smoothing)
    expected = reference_ce(labels, logits, weights=weights, smoothing=smoothing)
    np.testing.assert_allclose(loss_value(loss, labels[..., None], logits), expected, rtol=1e-5)


def test_against_torch_functional():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    logits = random_array((2, 6, 5, 3), seed=2, scale=3.0)
    labels = rng.integers(0, 3, (2, 6, 5))
    labels[rng.random(labels.shape) < 0.25] = 255
    weights = [0.2, 1.0, 3.0]
    for eps in (0.0, 0.2):
        expected = torch.nn.functional.cross_entropy(
            torch.from_numpy(np.moveaxis(logits, -1, 1)),
            torch.from_numpy(labels).long(),
            weight=torch.tensor(weights),
            ignore_index=255,
            label_smoothing=eps,
        ).item()
        loss = SegmentationCrossEntropy(class_weights=weights, label_smoothing=eps)
        np.testing.assert_allclose(loss_value(loss, labels, logits), expected, rtol=1e-5)


def test_probabilities_input_and_channels_first():
    logits = random_array((1, 4, 3, 3), seed=3)
    labels = np.array([[[0, 1, 2], [2, 255, 0], [1, 1, 1], [0, 2, 255]]])
    probs = np.exp(np_log_softmax(logits)).astype("float32")
    expected = reference_ce(labels, logits)
    got = loss_value(SegmentationCrossEntropy(from_logits=False), labels, probs)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    cf = SegmentationCrossEntropy(data_format="channels_first")
    got = loss_value(cf, labels[:, None], np.moveaxis(logits, -1, 1))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_all_ignored_gives_zero_and_zero_gradient():
    loss = SegmentationCrossEntropy(class_weights=[1.0, 2.0])
    logits = random_array((1, 3, 3, 2), seed=4)
    labels = np.full((1, 3, 3), 255)
    assert loss_value(loss, labels, logits) == 0.0
    labels[0, 0, 0] = 7  # out of range labels are skipped too
    assert loss_value(loss, labels, logits) == 0.0


def ohem_reference_keep(labels, logits, threshold, min_kept, ignore_index=255):
    k = logits.shape[-1]
    flat_labels = labels.reshape(-1)
    valid = (flat_labels != ignore_index) & (flat_labels < k)
    prob = np.exp(np_log_softmax(logits).reshape(-1, k))
    p = prob[np.arange(prob.shape[0]), np.where(valid, flat_labels, 0)]
    if valid.sum() <= min_kept:
        return valid
    cut = max(threshold, np.sort(p[valid])[min_kept])
    return valid & (p < cut)


def test_ohem_hand_worked_selection():
    # Two classes; logits (0, z) with true class 1 give p = sigmoid(z).
    p = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.95])
    logits = np.stack([np.zeros(6), np.log(p / (1 - p))], -1).reshape(1, 1, 6, 2).astype("float32")
    labels = np.ones((1, 1, 6), "int32")
    # min_kept 2: threshold max(0.7, p_(3) = 0.3) = 0.7 keeps 0.1, 0.2, 0.3.
    loss = SegmentationCrossEntropy(ohem_threshold=0.7, ohem_min_kept=2)
    np.testing.assert_allclose(loss_value(loss, labels, logits), -np.log(p[:3]).mean(), rtol=1e-5)
    # min_kept 4: threshold max(0.7, p_(5) = 0.9) = 0.9 keeps the four hardest.
    loss = SegmentationCrossEntropy(ohem_threshold=0.7, ohem_min_kept=4)
    np.testing.assert_allclose(loss_value(loss, labels, logits), -np.log(p[:4]).mean(), rtol=1e-5)
    # min_kept >= labelled pixels: all kept.
    loss = SegmentationCrossEntropy(ohem_threshold=0.7, ohem_min_kept=6)
    np.testing.assert_allclose(loss_value(loss, labels, logits), -np.log(p).mean(), rtol=1e-5)


@pytest.mark.parametrize("min_kept", [0, 5, 40, 1000])
def test_ohem_random_against_numpy(min_kept):
    rng = np.random.default_rng(5)
    logits = random_array((2, 6, 7, 3), seed=6, scale=2.0)
    labels = rng.integers(0, 3, (2, 6, 7))
    labels[rng.random(labels.shape) < 0.2] = 255
    keep = ohem_reference_keep(labels, logits, 0.6, min_kept)
    expected = reference_ce(labels, logits, keep=keep, weights=[1.0, 0.5, 2.0])
    loss = SegmentationCrossEntropy(
        ohem_threshold=0.6, ohem_min_kept=min_kept, class_weights=[1.0, 0.5, 2.0]
    )
    np.testing.assert_allclose(loss_value(loss, labels, logits), expected, rtol=1e-5)


def test_mixed_precision_computes_in_float32():
    logits = random_array((1, 4, 4, 3), seed=7)
    labels = np.random.default_rng(7).integers(0, 3, (1, 4, 4))
    keras.config.set_dtype_policy("mixed_bfloat16")
    loss = SegmentationCrossEntropy()
    bf16 = keras.ops.cast(logits, "bfloat16")
    value = loss(labels, bf16)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    expected = reference_ce(labels, to_numpy(bf16).astype("float32"))
    np.testing.assert_allclose(float(to_numpy(value)), expected, rtol=1e-5)


def test_fit_with_dict_of_losses_and_loss_weights():
    """compile(loss={"main", "aux"}, loss_weights=...) and one fit step with finite weights."""
    k = 3
    rng = np.random.default_rng(8)
    x = random_array((4, 6, 6, 2), seed=8)
    y = rng.integers(0, k, (4, 6, 6)).astype("int32")
    y[:, 0] = 255
    inputs = keras.Input((6, 6, 2))
    outputs = {
        "main": keras.layers.Conv2D(k, 1, name="main")(inputs),
        "aux": keras.layers.Conv2D(k, 3, padding="same", name="aux")(inputs),
    }
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss={
            "main": SegmentationCrossEntropy(),
            "aux": SegmentationCrossEntropy(ohem_threshold=0.7, ohem_min_kept=10),
        },
        loss_weights={"main": 1.0, "aux": 0.4},
        jit_compile=BACKEND in ("tensorflow", "jax"),
    )
    pred = to_numpy(model.predict(x, verbose=0))
    keep = ohem_reference_keep(y, pred["aux"], 0.7, 10)
    expected = reference_ce(y, pred["main"]) + 0.4 * reference_ce(y, pred["aux"], keep=keep)
    got = model.evaluate(x, {"main": y, "aux": y}, batch_size=4, verbose=0, return_dict=True)
    np.testing.assert_allclose(got["loss"], expected, rtol=1e-4)
    history = model.fit(x, {"main": y, "aux": y}, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    for w in model.weights:
        assert np.all(np.isfinite(to_numpy(w.value)))


def test_serialization_and_bad_arguments():
    loss = SegmentationCrossEntropy(
        ignore_index=0, class_weights=[1, 2], ohem_threshold=0.5, label_smoothing=0.1
    )
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(revived, SegmentationCrossEntropy)
    assert revived.get_config() == loss.get_config()
    with pytest.raises(ValueError, match="class_weights"):
        SegmentationCrossEntropy(class_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="ohem_threshold"):
        SegmentationCrossEntropy(ohem_threshold=1.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        SegmentationCrossEntropy(label_smoothing=1.0)
    with pytest.raises(ValueError, match="one weight per class"):
        SegmentationCrossEntropy(class_weights=[1.0, 1.0])(
            np.zeros((1, 2, 2)), np.zeros((1, 2, 2, 3))
        )
    with pytest.raises(ValueError, match="spatial size of `y_true`"):
        SegmentationCrossEntropy()(np.zeros((1, 4, 4)), np.zeros((1, 2, 2, 3)))


# ---------------------------------------------------------------- per-pixel weights
def torch_weighted_ce(labels, logits, pixel_weights, class_weights=None, ignore_index=255):
    """torch reference: per-pixel CE times the weight map, over the weighted valid pixels."""
    import torch
    import torch.nn.functional as F

    x = torch.tensor(logits, dtype=torch.float64).permute(0, 3, 1, 2)
    y = torch.tensor(labels, dtype=torch.int64)
    cw = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float64)
    per_pixel = F.cross_entropy(x, y, weight=cw, ignore_index=ignore_index, reduction="none")
    s = torch.tensor(pixel_weights, dtype=torch.float64)
    valid = (y != ignore_index).double()
    wy = torch.ones_like(s) if cw is None else cw[torch.where(y == ignore_index, 0, y)]
    return float((per_pixel * s).sum() / (s * wy * valid).sum())


def test_pixel_weight_map_is_a_weighted_mean_not_a_rescale():
    """A map that keeps the top half gives the loss over the top half (not half the loss)."""
    logits = random_array((2, 6, 5, 4), seed=1, scale=2.0)
    labels = np.random.default_rng(2).integers(0, 4, (2, 6, 5))
    top = np.zeros((2, 6, 5), "float32")
    top[:, :3] = 1.0
    loss = SegmentationCrossEntropy()
    got = float(to_numpy(loss(labels, logits, sample_weight=top)))
    want = reference_ce(labels[:, :3], logits[:, :3])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert abs(got - loss_value(loss, labels, logits) / 2) > 1e-3


@pytest.mark.parametrize("class_weights", [None, [0.5, 2.0, 1.0, 3.0]])
def test_pixel_weights_against_torch(class_weights):
    logits = random_array((2, 7, 6, 4), seed=3, scale=2.0)
    labels = np.random.default_rng(4).integers(0, 4, (2, 7, 6))
    labels[0, 0, :3] = 255
    weights = np.random.default_rng(5).uniform(0, 2, (2, 7, 6)).astype("float32")
    loss = SegmentationCrossEntropy(class_weights=class_weights)
    want = torch_weighted_ce(labels, logits, weights, class_weights)
    for w in (weights, weights[..., None]):
        np.testing.assert_allclose(to_numpy(loss(labels, logits, sample_weight=w)), want, rtol=1e-5)
    # One weight per image.
    per_image = np.array([0.25, 2.0], "float32")
    want = torch_weighted_ce(labels, logits, np.broadcast_to(per_image[:, None, None], labels.shape))
    got = SegmentationCrossEntropy()(labels, logits, sample_weight=per_image)
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-5)


def test_pixel_weights_reach_the_loss_in_model_evaluate():
    inputs = keras.Input((6, 5, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1)(inputs))
    model.compile(loss=SegmentationCrossEntropy())
    x = random_array((2, 6, 5, 3), seed=6)
    y = np.random.default_rng(7).integers(0, 4, (2, 6, 5))
    w = np.random.default_rng(8).uniform(0, 2, (2, 6, 5)).astype("float32")
    logits = to_numpy(model(x))
    got = model.evaluate(x, y, sample_weight=w, batch_size=2, verbose=0)
    np.testing.assert_allclose(got, torch_weighted_ce(y, logits, w), rtol=1e-4)


def test_bad_sample_weight_shape():
    with pytest.raises(ValueError, match="sample_weight.shape"):
        SegmentationCrossEntropy()(np.zeros((2, 4, 4)), random_array((2, 4, 4, 3)), np.ones((2, 3)))


# ---------------------------------------------------------------- binary (one channel)
def torch_bce(labels, logits, pixel_weights=None, class_weights=(1.0, 1.0), ignore_index=255):
    import torch
    import torch.nn.functional as F

    x = torch.tensor(logits[..., 0], dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.int64)
    valid = (y != ignore_index).double()
    target = torch.where(y == 1, 1.0, 0.0).double()
    cw = torch.tensor(class_weights, dtype=torch.float64)[torch.where(y == 1, 1, 0)]
    s = torch.ones_like(x) if pixel_weights is None else torch.tensor(pixel_weights).double()
    w = cw * s * valid
    return float(F.binary_cross_entropy_with_logits(x, target, weight=w, reduction="sum") / w.sum())


def test_binary_is_bce_with_logits_against_torch():
    logits = random_array((2, 5, 6, 1), seed=9, scale=3.0)
    labels = np.random.default_rng(10).integers(0, 2, (2, 5, 6))
    labels[1, 2, :4] = 255
    weights = np.random.default_rng(11).uniform(0, 2, (2, 5, 6)).astype("float32")
    got = SegmentationCrossEntropy()(labels, logits)
    np.testing.assert_allclose(to_numpy(got), torch_bce(labels, logits), rtol=1e-5)
    assert float(to_numpy(got)) > 0.1  # one softmax channel would give exactly 0
    got = SegmentationCrossEntropy(class_weights=[1.0, 3.0])(labels, logits, sample_weight=weights)
    np.testing.assert_allclose(to_numpy(got), torch_bce(labels, logits, weights, (1.0, 3.0)), rtol=1e-5)


def test_binary_hand_worked_probabilities_and_smoothing():
    # Probabilities 0.8 (label 1) and 0.3 (label 0): -(log 0.8 + log 0.7) / 2.
    probs = np.array([0.8, 0.3], "float32").reshape(1, 1, 2, 1)
    labels = np.array([[[1, 0]]])
    got = SegmentationCrossEntropy(from_logits=False)(labels, probs)
    np.testing.assert_allclose(to_numpy(got), -(np.log(0.8) + np.log(0.7)) / 2, rtol=1e-5)
    # Smoothing eps moves the targets to eps/2 and 1 - eps/2.
    eps = 0.2
    t = np.array([1 - eps / 2, eps / 2])
    p = np.array([0.8, 0.3])
    want = np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
    got = SegmentationCrossEntropy(from_logits=False, label_smoothing=eps)(labels, probs)
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-5)


def test_binary_label_two_is_not_a_class():
    logits = random_array((1, 2, 2, 1), seed=12)
    labels = np.array([[[0, 1], [2, 1]]])
    keep = np.array([[[True, True], [False, True]]])
    got = SegmentationCrossEntropy()(labels, logits)
    np.testing.assert_allclose(to_numpy(got), torch_bce(np.where(keep, labels, 255), logits), rtol=1e-5)


# ---------------------------------------------------------------- reduction
def torch_ce(labels, logits, reduction, class_weights=None, smoothing=0.0, ignore_index=255):
    """torch's cross-entropy of NHWC logits with `ignore_index`, `reduction` as torch names it."""
    import torch
    import torch.nn.functional as F

    return F.cross_entropy(
        torch.tensor(logits, dtype=torch.float64).permute(0, 3, 1, 2),
        torch.tensor(labels, dtype=torch.int64),
        weight=None if class_weights is None else torch.tensor(class_weights).double(),
        ignore_index=ignore_index,
        label_smoothing=smoothing,
        reduction=reduction,
    ).numpy()


def reduction_case():
    logits = random_array((2, 3, 4, 3), seed=20, scale=2.0)
    labels = np.random.default_rng(21).integers(0, 3, (2, 3, 4))
    labels[0, 0, :3] = 255
    labels[1, 2, 1] = 255
    return labels, logits


@pytest.mark.parametrize("class_weights, smoothing", [(None, 0.0), ([0.5, 2.0, 1.5], 0.1)])
def test_reduction_none_and_sum_against_torch(class_weights, smoothing):
    pytest.importorskip("torch")
    labels, logits = reduction_case()
    options = {"class_weights": class_weights, "label_smoothing": smoothing}
    want = torch_ce(labels, logits, "none", class_weights, smoothing)
    assert want.shape == (2, 3, 4) and np.all(want[labels == 255] == 0)
    for reduction in ("none", None):
        got = to_numpy(SegmentationCrossEntropy(reduction=reduction, **options)(labels, logits))
        assert got.shape == (2, 3, 4)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    got = SegmentationCrossEntropy(reduction="sum", **options)(labels, logits)
    np.testing.assert_allclose(
        to_numpy(got), torch_ce(labels, logits, "sum", class_weights, smoothing), rtol=1e-5
    )


def test_reduction_with_a_pixel_weight_map_against_torch():
    """"none" and "sum" weigh each pixel's value; the means divide by the summed weights."""
    pytest.importorskip("torch")
    labels, logits = reduction_case()
    s = np.random.default_rng(22).uniform(0, 2, labels.shape).astype("float32")
    cw = [0.5, 2.0, 1.5]
    per_pixel = torch_ce(labels, logits, "none", cw) * s
    got = SegmentationCrossEntropy(class_weights=cw, reduction="none")(labels, logits, s)
    np.testing.assert_allclose(to_numpy(got), per_pixel, rtol=1e-5, atol=1e-7)
    got = SegmentationCrossEntropy(class_weights=cw, reduction="sum")(labels, logits, s)
    np.testing.assert_allclose(to_numpy(got), per_pixel.sum(), rtol=1e-5)
    valid = labels != 255
    divisor = (s * np.asarray(cw)[np.where(valid, labels, 0)] * valid).sum()
    for reduction in ("sum_over_batch_size", "mean", "mean_with_sample_weight"):
        got = SegmentationCrossEntropy(class_weights=cw, reduction=reduction)(labels, logits, s)
        np.testing.assert_allclose(to_numpy(got), per_pixel.sum() / divisor, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean", "mean_with_sample_weight"])
def test_mean_reductions_are_torchs_mean_over_labelled_pixels(reduction):
    pytest.importorskip("torch")
    labels, logits = reduction_case()
    loss = SegmentationCrossEntropy(class_weights=[0.5, 2.0, 1.5], reduction=reduction)
    want = torch_ce(labels, logits, "mean", [0.5, 2.0, 1.5])
    np.testing.assert_allclose(loss_value(loss, labels, logits), want, rtol=1e-5)


def test_reduction_none_is_zero_where_ohem_drops_a_pixel():
    pytest.importorskip("torch")
    labels, logits = reduction_case()
    keep = ohem_reference_keep(labels, logits, 0.5, 4).reshape(labels.shape)
    loss = SegmentationCrossEntropy(ohem_threshold=0.5, ohem_min_kept=4, reduction="none")
    want = torch_ce(labels, logits, "none") * keep
    np.testing.assert_allclose(to_numpy(loss(labels, logits)), want, rtol=1e-5, atol=1e-7)


def test_binary_reduction_none_and_sum_against_torch():
    torch = pytest.importorskip("torch")
    logits = random_array((2, 3, 4, 1), seed=23, scale=3.0)
    labels = np.random.default_rng(24).integers(0, 2, (2, 3, 4))
    labels[1, 0] = 255
    x = torch.tensor(logits[..., 0], dtype=torch.float64)
    t = torch.tensor(labels == 1, dtype=torch.float64)
    want = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none").numpy()
    want = want * (labels != 255)
    got = SegmentationCrossEntropy(reduction="none")(labels, logits)
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-5, atol=1e-7)
    got = SegmentationCrossEntropy(reduction="sum")(labels, logits)
    np.testing.assert_allclose(to_numpy(got), want.sum(), rtol=1e-5)


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match=r"`reduction`.*Received: reduction='avg'"):
        SegmentationCrossEntropy(reduction="avg")
    # The reduction is part of the config.
    loss = SegmentationCrossEntropy(reduction="none")
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert revived.get_config()["reduction"] == "none"
