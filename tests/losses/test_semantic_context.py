"""Tests for the GINet semantic context loss: presence target and loss."""

import keras
import numpy as np
import pytest

from kseg.layers import ClassPresenceScore
from kseg.losses import (
    SegmentationCrossEntropy,
    SemanticContextLoss,
    class_presence_target,
)
from tests.helpers import BACKEND, random_array, to_numpy


def test_presence_target_hand_worked():
    labels = np.array([[[0, 0], [2, 255]], [[255, 255], [1, 9]]])
    expected = [[1, 0, 1, 0], [0, 1, 0, 0]]  # 255 and the out-of-range 9 never count
    np.testing.assert_array_equal(to_numpy(class_presence_target(labels, 4)), expected)
    np.testing.assert_array_equal(to_numpy(class_presence_target(labels[..., None], 4)), expected)
    ignore_zero = [[0, 0, 1, 0], [0, 1, 0, 0]]
    np.testing.assert_array_equal(
        to_numpy(class_presence_target(labels, 4, ignore_index=0)), ignore_zero
    )


def test_loss_against_numpy():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, (2, 4, 4))
    labels[0][labels[0] == 1] = 255
    logits = random_array((2, 5), seed=3, scale=3.0)
    target = np.zeros((2, 5))
    for b in range(2):
        for c in np.unique(labels[b]):
            if c < 5:
                target[b, c] = 1
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = -(target * np.log(p) + (1 - target) * np.log(1 - p)).mean()
    got = float(to_numpy(SemanticContextLoss(num_classes=5)(labels, logits)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    got = float(
        to_numpy(SemanticContextLoss(num_classes=5, from_logits=False)(labels, p.astype("float32")))
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_ginet_style_compile_with_three_outputs():
    """CE main + 0.4 CE aux + 0.2 SC-loss, as in the GINet recipe; one finite step."""
    k = 4
    x = random_array((2, 6, 6, 3), seed=4)
    y = np.random.default_rng(4).integers(0, k, (2, 6, 6)).astype("int32")
    y[:, :2] = 255
    inputs = keras.Input((6, 6, 3))
    main = keras.layers.Conv2D(k, 1, name="main")(inputs)
    aux = keras.layers.Conv2D(k, 1, name="aux")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(k * 8, 1)(inputs))
    nodes = keras.layers.Reshape((k, 8))(pooled)
    presence = ClassPresenceScore(name="presence")(nodes)
    model = keras.Model(inputs, {"main": main, "aux": aux, "presence": presence})
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss={
            "main": SegmentationCrossEntropy(),
            "aux": SegmentationCrossEntropy(),
            "presence": SemanticContextLoss(num_classes=k),
        },
        loss_weights={"main": 1.0, "aux": 0.4, "presence": 0.2},
        jit_compile=BACKEND in ("tensorflow", "jax"),
    )
    targets = {"main": y, "aux": y, "presence": y}
    pred = to_numpy(model.predict(x, verbose=0))
    ce, sc = SegmentationCrossEntropy(), SemanticContextLoss(num_classes=k)
    expected = (
        float(to_numpy(ce(y, pred["main"])))
        + 0.4 * float(to_numpy(ce(y, pred["aux"])))
        + 0.2 * float(to_numpy(sc(y, pred["presence"])))
    )
    got = model.evaluate(x, targets, batch_size=2, verbose=0, return_dict=True)
    np.testing.assert_allclose(got["loss"], expected, rtol=1e-4)
    history = model.fit(x, targets, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert all(np.all(np.isfinite(to_numpy(w.value))) for w in model.weights)


def test_serialization_and_bad_arguments():
    loss = SemanticContextLoss(num_classes=6, ignore_index=0)
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(revived, SemanticContextLoss) and revived.get_config() == loss.get_config()
    with pytest.raises(ValueError, match="num_classes"):
        SemanticContextLoss(num_classes=0)
    with pytest.raises(ValueError, match=r"shape \(B, 6\)"):
        loss(np.zeros((1, 2, 2)), np.zeros((1, 5)))
    with pytest.raises(ValueError, match="class nodes"):
        ClassPresenceScore()(np.zeros((2, 3), "float32"))


def test_per_image_weights_and_pixel_maps_refused():
    labels = np.array([[[0, 1], [1, 1]], [[2, 2], [255, 0]]])
    scores = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], "float32")
    target = np.array([[1, 1, 0], [1, 0, 1]], np.float64)
    bce = np.maximum(scores, 0) - scores * target + np.log1p(np.exp(-np.abs(scores)))
    w = np.array([0.5, 2.0], "float32")
    want = (bce.mean(-1) * w).sum() / w.sum()
    loss = SemanticContextLoss(num_classes=3)
    np.testing.assert_allclose(to_numpy(loss(labels, scores, sample_weight=w)), want, rtol=1e-5)
    with pytest.raises(ValueError, match="one weight per image"):
        loss(labels, scores, sample_weight=np.ones((2, 2, 2), "float32"))


def test_reductions_against_torch():
    torch = pytest.importorskip("torch")
    labels = np.array([[[0, 1], [1, 1]], [[2, 2], [255, 0]], [[255, 255], [255, 255]]])
    scores = random_array((3, 3), seed=5, scale=2.0)
    target = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 0, 0]], dtype=torch.float64)
    x = torch.tensor(scores, dtype=torch.float64)
    per_image = torch.nn.functional.binary_cross_entropy_with_logits(x, target, reduction="none")
    per_image = per_image.mean(-1).numpy()
    w = np.array([0.5, 2.0, 1.0], "float32")
    for sample_weight, s in ((None, np.ones(3)), (w, w)):
        for reduction in ("none", None):
            got = to_numpy(
                SemanticContextLoss(3, reduction=reduction)(labels, scores, sample_weight)
            )
            assert got.shape == (3,)
            np.testing.assert_allclose(got, per_image * s, rtol=1e-5)
        got = SemanticContextLoss(3, reduction="sum")(labels, scores, sample_weight)
        np.testing.assert_allclose(to_numpy(got), (per_image * s).sum(), rtol=1e-5)
        for reduction in ("sum_over_batch_size", "mean", "mean_with_sample_weight"):
            got = SemanticContextLoss(3, reduction=reduction)(labels, scores, sample_weight)
            np.testing.assert_allclose(to_numpy(got), (per_image * s).sum() / s.sum(), rtol=1e-5)
    with pytest.raises(ValueError, match=r"`reduction`.*Received: reduction='avg'"):
        SemanticContextLoss(3, reduction="avg")
