"""Tests for kseg.losses.DiceLoss."""

import keras
import numpy as np
import pytest

from kseg.losses import DiceLoss
from tests.helpers import random_array, to_numpy


def reference_dice(labels, logits, per_image, smooth=1.0, ignore_index=255):
    k = logits.shape[-1]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    valid = (labels != ignore_index)[..., None]
    t = np.eye(k)[np.where(valid[..., 0], labels, 0)] * valid
    p = p * valid
    groups = [(slice(b, b + 1),) for b in range(len(labels))] if per_image else [(slice(None),)]
    scores = []
    for g in groups:
        for c in range(k):
            inter = (p[g][..., c] * t[g][..., c]).sum()
            card = p[g][..., c].sum() + t[g][..., c].sum()
            scores.append((2 * inter + smooth) / (card + smooth))
    return 1 - np.mean(scores)


def test_hand_worked_perfect_and_wrong():
    labels = np.array([[[0, 1]]])
    perfect = np.array([[[[1.0, 0.0], [0.0, 1.0]]]], "float32")
    loss = DiceLoss(from_logits=False, smooth=0.0)
    np.testing.assert_allclose(float(to_numpy(loss(labels, perfect))), 0.0, atol=1e-6)
    wrong = perfect[..., ::-1].copy()
    np.testing.assert_allclose(float(to_numpy(loss(labels, wrong))), 1.0, atol=1e-6)
    half = np.full((1, 1, 2, 2), 0.5, "float32")  # dice_k = 2 * 0.5 / (1 + 1) = 0.5
    np.testing.assert_allclose(float(to_numpy(loss(labels, half))), 0.5, atol=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("smooth", [1.0, 0.5])
def test_against_numpy_with_ignore(per_image, smooth):
    rng = np.random.default_rng(0)
    logits = random_array((2, 5, 4, 3), seed=1, scale=2.0)
    labels = rng.integers(0, 2, (2, 5, 4))  # class 2 absent
    labels[rng.random(labels.shape) < 0.3] = 255
    loss = DiceLoss(per_image=per_image, smooth=smooth)
    expected = reference_dice(labels, logits, per_image, smooth)
    np.testing.assert_allclose(
        float(to_numpy(loss(labels[..., None], logits))), expected, rtol=1e-5
    )


def test_gradient_step_is_finite():
    x = random_array((2, 6, 6, 2), seed=2)
    y = np.random.default_rng(2).integers(0, 3, (2, 6, 6))
    y[0] = 255
    inputs = keras.Input((6, 6, 2))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=DiceLoss(per_image=True))
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert all(np.all(np.isfinite(to_numpy(w.value))) for w in model.weights)


def test_serialization_and_bad_arguments():
    loss = DiceLoss(ignore_index=0, per_image=True, smooth=0.0)
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(revived, DiceLoss) and revived.get_config() == loss.get_config()
    with pytest.raises(ValueError, match="smooth"):
        DiceLoss(smooth=-1.0)


def test_pixel_weights_multiply_every_sum():
    logits = random_array((2, 5, 4, 3), seed=4)
    labels = np.random.default_rng(5).integers(0, 3, (2, 5, 4))
    w = np.random.default_rng(6).uniform(0, 2, (2, 5, 4))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True) * w[..., None]
    t = np.eye(3)[labels] * w[..., None]
    dice = (2 * (p * t).sum((0, 1, 2)) + 1) / (p.sum((0, 1, 2)) + t.sum((0, 1, 2)) + 1)
    got = DiceLoss()(labels, logits, sample_weight=w.astype("float32"))
    np.testing.assert_allclose(to_numpy(got), 1 - dice.mean(), rtol=1e-5)
    # A 0/1 map is the same as the ignore index.
    mask = (w > 1).astype("float32")
    np.testing.assert_allclose(
        to_numpy(DiceLoss()(labels, logits, sample_weight=mask)),
        to_numpy(DiceLoss()(np.where(mask > 0, labels, 255), logits)),
        rtol=1e-6,
    )


def test_binary_dice_is_the_foreground_dice_of_the_sigmoid():
    logits = np.array([2.0, -1.0, 0.5, 255.0], "float32").reshape(1, 1, 4, 1)
    labels = np.array([[[1, 0, 1, 255]]])
    p = 1 / (1 + np.exp(-np.array([2.0, -1.0, 0.5])))
    t = np.array([1.0, 0.0, 1.0])
    want = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    np.testing.assert_allclose(to_numpy(DiceLoss()(labels, logits)), want, rtol=1e-5)


def test_per_image_reductions_reduce_the_images_dice_losses():
    logits = random_array((3, 3, 4, 3), seed=7, scale=2.0)
    labels = np.random.default_rng(8).integers(0, 3, (3, 3, 4))
    labels[0, 0] = 255
    labels[2] = 255  # an image without any labelled pixel
    per_image = np.array(
        [reference_dice(labels[b : b + 1], logits[b : b + 1], False) for b in range(3)]
    )
    for reduction in ("none", None):
        got = to_numpy(DiceLoss(per_image=True, reduction=reduction)(labels, logits))
        assert got.shape == (3,)
        np.testing.assert_allclose(got, per_image, rtol=1e-5)
    got = DiceLoss(per_image=True, reduction="sum")(labels, logits)
    np.testing.assert_allclose(to_numpy(got), per_image.sum(), rtol=1e-5)
    for reduction in ("sum_over_batch_size", "mean"):
        got = DiceLoss(per_image=True, reduction=reduction)(labels, logits)
        np.testing.assert_allclose(to_numpy(got), per_image.mean(), rtol=1e-5)


def test_reductions_without_a_per_image_value_are_refused():
    for reduction in ("none", None, "sum"):
        with pytest.raises(ValueError, match=r"`reduction`.*per_image=True.*Received: reduction="):
            DiceLoss(reduction=reduction)
    for per_image in (False, True):
        with pytest.raises(ValueError, match="Received: reduction='mean_with_sample_weight'"):
            DiceLoss(per_image=per_image, reduction="mean_with_sample_weight")
        with pytest.raises(ValueError, match=r"`reduction`.*Received: reduction='avg'"):
            DiceLoss(per_image=per_image, reduction="avg")
    assert DiceLoss(reduction="mean").get_config()["reduction"] == "mean"
