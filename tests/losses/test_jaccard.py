"""Tests for kseg.losses.JaccardLoss (and the class choice it shares with DiceLoss)."""

import keras
import numpy as np
import pytest

from kseg.losses import DiceLoss, JaccardLoss
from tests.helpers import random_array, to_numpy
from tests.losses.test_focal import one_sgd_step

torch = pytest.importorskip("torch")


def reference_overlap(
    labels, probs, kind, per_image=False, smooth=1.0, classes="all", weights=None, binary=False
):
    """NumPy soft Jaccard / Dice loss: per class, then the mean over the chosen classes."""
    k = probs.shape[-1]
    valid = (labels >= 0) & (labels < k)
    mask = valid * (1.0 if weights is None else weights)
    t = np.eye(k)[np.where(valid, labels, 0)] * mask[..., None]
    p = probs * mask[..., None]
    groups = [slice(b, b + 1) for b in range(len(labels))] if per_image else [slice(None)]
    losses = []
    for g in groups:
        group = []
        for c in range(1, k) if binary else range(k):
            inter = (p[g][..., c] * t[g][..., c]).sum()
            total = p[g][..., c].sum() + t[g][..., c].sum()
            if kind == "jaccard":
                score = (inter + smooth) / max(total - inter + smooth, 1e-7)
            else:
                score = (2 * inter + smooth) / max(total + smooth, 1e-7)
            if classes == "all" or t[g][..., c].sum() > 0:
                group.append(1 - score)
        losses.append(np.mean(group) if group else 0.0)
    return float(np.mean(losses))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def value(loss, *args, **kwargs):
    return float(to_numpy(loss(*args, **kwargs)))


def test_hand_worked_perfect_wrong_and_half():
    labels = np.array([[[0, 1]]])
    perfect = np.array([[[[1.0, 0.0], [0.0, 1.0]]]], "float32")
    loss = JaccardLoss(from_logits=False, smooth=0.0)
    np.testing.assert_allclose(value(loss, labels, perfect), 0.0, atol=1e-6)
    np.testing.assert_allclose(value(loss, labels, perfect[..., ::-1].copy()), 1.0, atol=1e-6)
    # p = 1/2 everywhere: I = 1/2, U = 1 + 1 - 1/2 for both classes: jaccard 1/3.
    half = np.full((1, 1, 2, 2), 0.5, "float32")
    np.testing.assert_allclose(value(loss, labels, half), 2 / 3, atol=1e-6)
    # smooth 1: (1/2 + 1) / (3/2 + 1) = 3/5.
    np.testing.assert_allclose(
        value(JaccardLoss(from_logits=False), labels, half), 2 / 5, rtol=1e-6
    )


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes, smooth", [("all", 1.0), ("present", 0.0), ("present", 0.5)])
def test_against_numpy_with_ignore(per_image, classes, smooth):
    rng = np.random.default_rng(0)
    logits = random_array((3, 5, 4, 4), seed=1, scale=2.0)
    labels = rng.integers(0, 3, (3, 5, 4))  # class 3 absent
    labels[1] = np.where(labels[1] == 2, 0, labels[1])  # and class 2 from image 1
    labels[rng.random(labels.shape) < 0.3] = 255
    labels[2] = 255  # an image without any labelled pixel
    loss = JaccardLoss(per_image=per_image, classes=classes, smooth=smooth)
    want = reference_overlap(labels, softmax(logits), "jaccard", per_image, smooth, classes)
    np.testing.assert_allclose(value(loss, labels[..., None], logits), want, rtol=1e-5)


def test_present_classes_leave_the_mean():
    # Class 2 is never labelled: with "present" only classes 0 and 1 are averaged.
    logits = random_array((1, 3, 4, 3), seed=2)
    labels = np.random.default_rng(3).integers(0, 2, (1, 3, 4))
    probs = softmax(logits)
    every = value(JaccardLoss(smooth=0.0), labels, logits)
    present = value(JaccardLoss(smooth=0.0, classes="present"), labels, logits)
    np.testing.assert_allclose(every, reference_overlap(labels, probs, "jaccard", smooth=0.0))
    np.testing.assert_allclose(
        present, reference_overlap(labels, probs, "jaccard", smooth=0.0, classes="present")
    )
    # smooth 0: the absent class scores jaccard 0 (loss 1), which "present" leaves out.
    np.testing.assert_allclose(every, (2 * present + 1) / 3, rtol=1e-5)
    # Nothing labelled: no present class, loss 0.
    assert value(JaccardLoss(classes="present"), np.full((1, 3, 4), 255), logits) == 0.0


def test_pixel_weights_multiply_every_sum():
    logits = random_array((2, 5, 4, 3), seed=4)
    labels = np.random.default_rng(5).integers(0, 3, (2, 5, 4))
    w = np.random.default_rng(6).uniform(0, 2, (2, 5, 4)).astype("float32")
    want = reference_overlap(labels, softmax(logits), "jaccard", weights=w)
    np.testing.assert_allclose(
        value(JaccardLoss(), labels, logits, sample_weight=w), want, rtol=1e-5
    )
    per_image = np.array([0.5, 2.0], "float32")
    want = reference_overlap(
        labels,
        softmax(logits),
        "jaccard",
        weights=np.broadcast_to(per_image[:, None, None], w.shape),
    )
    got = value(JaccardLoss(), labels, logits, sample_weight=per_image)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # A 0/1 map is the same as the ignore index.
    mask = (w > 1).astype("float32")
    np.testing.assert_allclose(
        value(JaccardLoss(), labels, logits, sample_weight=mask),
        value(JaccardLoss(), np.where(mask > 0, labels, 255), logits),
        rtol=1e-6,
    )


def test_binary_is_the_foreground_jaccard_of_the_sigmoid():
    logits = np.array([2.0, -1.0, 0.5, 255.0, 1.0], "float32").reshape(1, 1, 5, 1)
    labels = np.array([[[1, 0, 1, 255, 7]]])  # 7 is not a class of a binary model
    p = 1 / (1 + np.exp(-np.array([2.0, -1.0, 0.5])))
    t = np.array([1.0, 0.0, 1.0])
    inter = (p * t).sum()
    want = 1 - (inter + 1) / (p.sum() + t.sum() - inter + 1)
    np.testing.assert_allclose(value(JaccardLoss(), labels, logits), want, rtol=1e-5)
    got = value(JaccardLoss(from_logits=False), labels, 1 / (1 + np.exp(-logits)))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # An image without foreground: it pays with "all", not with "present".
    background = np.array([[[0, 0, 255, 0, 0]]])
    assert value(JaccardLoss(classes="present"), background, logits) == 0.0
    assert value(JaccardLoss(), background, logits) > 0.5


def test_channels_first():
    logits = random_array((2, 4, 3, 3), seed=7)
    labels = np.random.default_rng(8).integers(0, 3, (2, 4, 3))
    loss = JaccardLoss(per_image=True, data_format="channels_first")
    got = value(loss, labels[:, None], np.moveaxis(logits, -1, 1))
    np.testing.assert_allclose(got, value(JaccardLoss(per_image=True), labels, logits), rtol=1e-6)


def test_gradient_against_torch_autograd():
    rng = np.random.default_rng(9)
    x = random_array((2, 4, 5, 3), seed=10)
    kernel = random_array((3, 3), seed=11, scale=2.0)
    labels = rng.integers(0, 2, (2, 4, 5))  # class 2 absent
    labels[0, 1] = 255
    got = one_sgd_step(JaccardLoss(classes="present", per_image=True), x, labels, kernel)

    w = torch.tensor(kernel, dtype=torch.float64, requires_grad=True)
    p = torch.softmax(torch.tensor(x, dtype=torch.float64) @ w, dim=-1)
    y = torch.tensor(labels, dtype=torch.int64)
    valid = (y != 255).double()[..., None]
    t = torch.nn.functional.one_hot(torch.where(y == 255, 0, y), 3).double() * valid
    p = p * valid
    inter = (p * t).sum((1, 2))
    union = p.sum((1, 2)) + t.sum((1, 2)) - inter
    per_class = 1 - (inter + 1) / (union + 1)  # (images, classes)
    present = (t.sum((1, 2)) > 0).double()
    ((per_class * present).sum(1) / present.sum(1)).mean().backward()
    np.testing.assert_allclose(got, w.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_dice_present_classes_against_numpy():
    rng = np.random.default_rng(12)
    logits = random_array((2, 5, 4, 4), seed=13, scale=2.0)
    labels = rng.integers(0, 3, (2, 5, 4))
    labels[1] = np.where(labels[1] == 1, 0, labels[1])
    labels[rng.random(labels.shape) < 0.2] = 255
    for per_image in (False, True):
        loss = DiceLoss(per_image=per_image, classes="present", smooth=0.5)
        want = reference_overlap(labels, softmax(logits), "dice", per_image, 0.5, "present")
        np.testing.assert_allclose(value(loss, labels, logits), want, rtol=1e-5)
    assert DiceLoss(classes="present").get_config()["classes"] == "present"


def test_serialization_and_bad_arguments():
    loss = JaccardLoss(ignore_index=0, per_image=True, smooth=0.0, classes="present")
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(revived, JaccardLoss) and revived.get_config() == loss.get_config()
    with pytest.raises(ValueError, match="smooth"):
        JaccardLoss(smooth=-1.0)
    with pytest.raises(ValueError, match="Received: classes='some'"):
        JaccardLoss(classes="some")
    with pytest.raises(ValueError, match="Received: classes='some'"):
        DiceLoss(classes="some")
    with pytest.raises(ValueError, match="spatial size of `y_true`"):
        JaccardLoss()(np.zeros((1, 4, 4)), np.zeros((1, 2, 2, 3)))


def test_per_image_reductions_reduce_the_images_jaccard_losses():
    logits = random_array((3, 3, 4, 3), seed=14, scale=2.0)
    labels = np.random.default_rng(15).integers(0, 2, (3, 3, 4))
    labels[0, 0] = 255
    labels[2] = 255  # an image without any labelled pixel
    w = np.random.default_rng(16).uniform(0, 2, labels.shape).astype("float32")
    probs = softmax(logits)
    per_image = np.array(
        [
            reference_overlap(
                labels[b : b + 1],
                probs[b : b + 1],
                "jaccard",
                classes="present",
                weights=w[b : b + 1],
            )
            for b in range(3)
        ]
    )
    for reduction in ("none", None):
        loss = JaccardLoss(per_image=True, classes="present", reduction=reduction)
        got = to_numpy(loss(labels, logits, sample_weight=w))
        assert got.shape == (3,)
        np.testing.assert_allclose(got, per_image, rtol=1e-5)
    loss = JaccardLoss(per_image=True, classes="present", reduction="sum")
    np.testing.assert_allclose(
        value(loss, labels, logits, sample_weight=w), per_image.sum(), rtol=1e-5
    )
    for reduction in ("sum_over_batch_size", "mean"):
        loss = JaccardLoss(per_image=True, classes="present", reduction=reduction)
        got = value(loss, labels, logits, sample_weight=w)
        np.testing.assert_allclose(got, per_image.mean(), rtol=1e-5)


def test_reductions_without_a_per_image_value_are_refused():
    for reduction in ("none", None, "sum"):
        with pytest.raises(ValueError, match=r"`reduction`.*per_image=True.*Received: reduction="):
            JaccardLoss(reduction=reduction)
    for per_image in (False, True):
        with pytest.raises(ValueError, match="Received: reduction='mean_with_sample_weight'"):
            JaccardLoss(per_image=per_image, reduction="mean_with_sample_weight")
        with pytest.raises(ValueError, match=r"`reduction`.*Received: reduction='avg'"):
            JaccardLoss(per_image=per_image, reduction="avg")
