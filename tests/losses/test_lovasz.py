"""Tests for kseg.losses.LovaszSoftmaxLoss."""

import keras
import numpy as np
import pytest

from kseg.losses import LovaszSoftmaxLoss
from tests.helpers import random_array, to_numpy


def lovasz_grad(gt_sorted):
    """Gradient of the Lovasz extension of the Jaccard loss (Berman et al., Alg. 1)."""
    gts = gt_sorted.sum()
    intersection = gts - np.cumsum(gt_sorted)
    union = gts + np.cumsum(1.0 - gt_sorted)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def reference_lovasz_flat(probs, labels, classes):
    """probs (P, K), labels (P,) already without ignored pixels."""
    if len(labels) == 0:
        return 0.0
    losses = []
    for c in range(probs.shape[1]):
        fg = (labels == c).astype(np.float64)
        if classes == "present" and fg.sum() == 0:
            continue
        errors = np.abs(fg - probs[:, c])
        order = np.argsort(-errors, kind="stable")
        losses.append(np.dot(errors[order], lovasz_grad(fg[order])))
    return float(np.mean(losses)) if losses else 0.0


def reference_lovasz(labels, probs, per_image, classes, ignore_index=255):
    k = probs.shape[-1]
    groups = [(labels[b], probs[b]) for b in range(len(labels))] if per_image else [(labels, probs)]
    out = []
    for lab, pr in groups:
        lab, pr = lab.reshape(-1), pr.reshape(-1, k).astype(np.float64)
        keep = lab != ignore_index
        out.append(reference_lovasz_flat(pr[keep], lab[keep], classes))
    return float(np.mean(out))


def test_hand_worked_three_pixels():
    # Worked by hand from Algorithm 1: class 0 gives 0.3, class 1 gives 0.2 + 1/30 + 1/30.
    labels = np.array([[[0, 1, 1, 255]]])
    probs = np.array([[[[0.8, 0.2], [0.4, 0.6], [0.1, 0.9], [0.5, 0.5]]]], "float32")
    loss = LovaszSoftmaxLoss(from_logits=False)
    expected = (0.3 + (0.2 + 1 / 30 + 1 / 30)) / 2
    np.testing.assert_allclose(float(to_numpy(loss(labels, probs))), expected, rtol=1e-5)


def test_hard_predictions_give_one_minus_iou():
    # On one-hot predictions the Lovasz extension equals the Jaccard loss 1 - IoU.
    labels = np.array([[[0, 0, 1, 1, 2, 255]]])
    pred = np.array([0, 1, 1, 1, 0, 2])
    probs = np.eye(3, dtype="float32")[pred][None, None]
    iou = [1 / 3, 2 / 3, 0.0]  # class 0: 1 / 3, class 1: 2 / 3, class 2: 0 / 2
    loss = LovaszSoftmaxLoss(from_logits=False, classes="all")
    np.testing.assert_allclose(float(to_numpy(loss(labels, probs))), 1 - np.mean(iou), rtol=1e-5)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["present", "all"])
def test_random_against_numpy(per_image, classes):
    rng = np.random.default_rng(0)
    logits = random_array((2, 5, 6, 4), seed=3, scale=2.0)
    labels = rng.integers(0, 3, (2, 5, 6))  # class 3 absent
    labels[rng.random(labels.shape) < 0.25] = 255
    labels[1] = 255  # an image with no labelled pixel
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs = e / e.sum(-1, keepdims=True)
    expected = reference_lovasz(labels, probs, per_image, classes)
    loss = LovaszSoftmaxLoss(per_image=per_image, classes=classes)
    np.testing.assert_allclose(
        float(to_numpy(loss(labels[..., None], logits))), expected, rtol=1e-5
    )


def test_all_ignored_gives_zero_and_gradient_step_is_finite():
    loss = LovaszSoftmaxLoss()
    assert float(to_numpy(loss(np.full((1, 3, 3), 255), random_array((1, 3, 3, 2))))) == 0.0
    x = random_array((2, 6, 6, 2), seed=4)
    y = np.random.default_rng(4).integers(0, 3, (2, 6, 6))
    inputs = keras.Input((6, 6, 2))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LovaszSoftmaxLoss(per_image=True))
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert all(np.all(np.isfinite(to_numpy(w.value))) for w in model.weights)


def test_serialization_and_bad_arguments():
    loss = LovaszSoftmaxLoss(per_image=True, classes="all")
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(revived, LovaszSoftmaxLoss) and revived.get_config() == loss.get_config()
    with pytest.raises(ValueError, match="classes"):
        LovaszSoftmaxLoss(classes="some")


def reference_lovasz_hinge_flat(logits, labels):
    """Berman et al.'s `lovasz_hinge_flat` in NumPy: logits (P,), labels (P,) in {0, 1}."""
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    order = np.argsort(-errors, kind="stable")
    return float(np.dot(np.maximum(errors[order], 0), lovasz_grad(labels[order].astype(float))))


@pytest.mark.parametrize("per_image", [False, True])
def test_binary_is_the_lovasz_hinge(per_image):
    logits = random_array((2, 4, 5, 1), seed=7, scale=2.0)
    labels = np.random.default_rng(8).integers(0, 2, (2, 4, 5))
    labels[0, 1, :3] = 255
    labels[1] = 0  # no foreground: the hinge still pays for the largest error
    labels[1, 0, 0] = 255
    groups = [(b,) for b in range(2)] if per_image else [slice(None)]
    losses = []
    for g in groups:
        lab, x = labels[g].reshape(-1), logits[g][..., 0].reshape(-1)
        keep = lab != 255
        losses.append(reference_lovasz_hinge_flat(x[keep].astype(np.float64), lab[keep]))
    got = LovaszSoftmaxLoss(per_image=per_image)(labels, logits)
    np.testing.assert_allclose(to_numpy(got), np.mean(losses), rtol=1e-5)


def test_binary_needs_logits():
    with pytest.raises(ValueError, match="from_logits=False"):
        LovaszSoftmaxLoss(from_logits=False)(np.zeros((1, 2, 2)), np.full((1, 2, 2, 1), 0.5))


def test_zero_one_pixel_weights_are_a_mask():
    logits = random_array((2, 4, 5, 3), seed=9)
    labels = np.random.default_rng(10).integers(0, 3, (2, 4, 5))
    mask = (np.random.default_rng(11).uniform(size=(2, 4, 5)) > 0.4).astype("float32")
    loss = LovaszSoftmaxLoss()
    np.testing.assert_allclose(
        to_numpy(loss(labels, logits, sample_weight=mask)),
        to_numpy(loss(np.where(mask > 0, labels, 255), logits)),
        rtol=1e-6,
    )


def test_per_image_reductions_reduce_the_images_lovasz_losses():
    logits = random_array((3, 3, 4, 3), seed=12, scale=2.0)
    labels = np.random.default_rng(13).integers(0, 3, (3, 3, 4))
    labels[0, 0] = 255
    labels[2] = 255  # an image without any labelled pixel: 0
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs = e / e.sum(-1, keepdims=True)
    per_image = np.array(
        [reference_lovasz(labels[b : b + 1], probs[b : b + 1], False, "present") for b in range(3)]
    )
    for reduction in ("none", None):
        got = to_numpy(LovaszSoftmaxLoss(per_image=True, reduction=reduction)(labels, logits))
        assert got.shape == (3,)
        np.testing.assert_allclose(got, per_image, rtol=1e-5, atol=1e-7)
    got = LovaszSoftmaxLoss(per_image=True, reduction="sum")(labels, logits)
    np.testing.assert_allclose(to_numpy(got), per_image.sum(), rtol=1e-5)
    for reduction in ("sum_over_batch_size", "mean"):
        got = LovaszSoftmaxLoss(per_image=True, reduction=reduction)(labels, logits)
        np.testing.assert_allclose(to_numpy(got), per_image.mean(), rtol=1e-5)


def test_binary_per_image_reduction_none_is_each_images_lovasz_hinge():
    logits = random_array((2, 3, 4, 1), seed=14, scale=2.0)
    labels = np.random.default_rng(15).integers(0, 2, (2, 3, 4))
    labels[0, 1, :2] = 255
    want = []
    for b in range(2):
        lab, x = labels[b].reshape(-1), logits[b, ..., 0].reshape(-1).astype(np.float64)
        keep = lab != 255
        want.append(reference_lovasz_hinge_flat(x[keep], lab[keep]))
    got = LovaszSoftmaxLoss(per_image=True, reduction="none")(labels, logits)
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-5)


def test_reductions_without_a_per_image_value_are_refused():
    for reduction in ("none", None, "sum"):
        with pytest.raises(ValueError, match=r"`reduction`.*per_image=True.*Received: reduction="):
            LovaszSoftmaxLoss(reduction=reduction)
    for per_image in (False, True):
        with pytest.raises(ValueError, match="Received: reduction='mean_with_sample_weight'"):
            LovaszSoftmaxLoss(per_image=per_image, reduction="mean_with_sample_weight")
        with pytest.raises(ValueError, match=r"`reduction`.*Received: reduction='avg'"):
            LovaszSoftmaxLoss(per_image=per_image, reduction="avg")
