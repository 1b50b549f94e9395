"""Tests for kseg.losses.FocalLoss, against torch formulas written out here."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from kseg.losses import FocalLoss, SegmentationCrossEntropy
from tests.helpers import BACKEND, random_array, to_numpy

torch = pytest.importorskip("torch")
F = torch.nn.functional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def torch_focal(labels, logits, gamma, alpha=None, weights=None, ignore_index=255):
    """Softmax focal loss (Lin et al. 2017, eq. 5), mean over the weighted labelled pixels."""
    x = torch.tensor(logits, dtype=torch.float64).permute(0, 3, 1, 2)
    y = torch.tensor(labels, dtype=torch.int64)
    k = x.shape[1]
    valid = (y != ignore_index) & (y >= 0) & (y < k)
    y = torch.where(valid, y, 0)
    log_pt = F.log_softmax(x, dim=1).gather(1, y[:, None])[:, 0]
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    if alpha is not None:
        loss = loss * torch.tensor(alpha, dtype=torch.float64)[y]
    s = torch.ones_like(loss) if weights is None else torch.tensor(weights, dtype=torch.float64)
    s = s * valid
    return float((loss * s).sum() / s.sum())


def torch_sigmoid_focal(labels, logits, gamma, alpha=None, weights=None, ignore_index=255):
    """The sigmoid focal loss as torchvision.ops.sigmoid_focal_loss defines it, written out,
    averaged over the weighted pixels labelled 0 or 1."""
    x = torch.tensor(logits[..., 0], dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.int64)
    valid = (y == 0) | (y == 1)
    t = (y == 1).double()
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    s = torch.ones_like(loss) if weights is None else torch.tensor(weights, dtype=torch.float64)
    s = s * valid
    return float((loss * s).sum() / s.sum())


def value(loss, *args, **kwargs):
    return float(to_numpy(loss(*args, **kwargs)))


def test_hand_worked_two_pixels():
    # Logits (0, 0): p_t = 1/2 for the labelled pixel; the second pixel is ignored.
    logits = np.zeros((1, 1, 2, 2), "float32")
    labels = np.array([[[1, 255]]])
    # gamma 2: (1 - 1/2)**2 * log 2; alpha_1 = 3.
    np.testing.assert_allclose(value(FocalLoss(), labels, logits), 0.25 * np.log(2), rtol=1e-6)
    got = value(FocalLoss(alpha=[1.0, 3.0]), labels, logits)
    np.testing.assert_allclose(got, 0.75 * np.log(2), rtol=1e-6)
    # A number alpha with two classes: alpha for class 1, 1 - alpha for class 0.
    got = value(FocalLoss(alpha=0.25, gamma=1.0), labels, logits)
    np.testing.assert_allclose(got, 0.25 * 0.5 * np.log(2), rtol=1e-6)
    got = value(FocalLoss(alpha=0.25, gamma=1.0), np.array([[[0, 255]]]), logits)
    np.testing.assert_allclose(got, 0.75 * 0.5 * np.log(2), rtol=1e-6)


@pytest.mark.parametrize("gamma, alpha", [(2.0, None), (0.5, [0.5, 2.0, 1.0, 0.0]), (3.0, None)])
def test_against_torch_with_ignore_and_pixel_weights(gamma, alpha):
    rng = np.random.default_rng(0)
    logits = random_array((2, 5, 6, 4), seed=1, scale=3.0)
    labels = rng.integers(0, 4, (2, 5, 6))
    labels[rng.random(labels.shape) < 0.3] = 255
    labels[0, 0, 0] = 9  # not a class: left out like the ignore index
    weights = rng.uniform(0, 2, (2, 5, 6)).astype("float32")
    weights[1, 1] = 0.0
    loss = FocalLoss(gamma=gamma, alpha=alpha)
    want = torch_focal(labels, logits, gamma, alpha)
    np.testing.assert_allclose(value(loss, labels[..., None], logits), want, rtol=1e-5)
    want = torch_focal(labels, logits, gamma, alpha, weights)
    for w in (weights, weights[..., None]):
        np.testing.assert_allclose(value(loss, labels, logits, sample_weight=w), want, rtol=1e-5)
    per_image = np.array([0.5, 3.0], "float32")
    want = torch_focal(
        labels, logits, gamma, alpha, np.broadcast_to(per_image[:, None, None], labels.shape)
    )
    np.testing.assert_allclose(
        value(loss, labels, logits, sample_weight=per_image), want, rtol=1e-5
    )


def test_gamma_zero_without_alpha_is_the_cross_entropy():
    rng = np.random.default_rng(2)
    logits = random_array((2, 4, 5, 3), seed=3, scale=2.0)
    labels = rng.integers(0, 3, (2, 4, 5))
    labels[rng.random(labels.shape) < 0.25] = 255
    weights = rng.uniform(0, 2, (2, 4, 5)).astype("float32")
    binary = random_array((2, 4, 5, 1), seed=4, scale=2.0)
    binary_labels = np.where(labels == 2, 1, labels)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    cases = [
        ({}, labels, logits, None),
        ({}, labels, logits, weights),
        ({}, binary_labels, binary, weights),
        ({"from_logits": False}, labels, probs.astype("float32"), weights),
        ({"ignore_index": 0}, labels, logits, None),
    ]
    for options, y, x, w in cases:
        focal = value(FocalLoss(gamma=0.0, **options), y, x, sample_weight=w)
        ce = value(SegmentationCrossEntropy(**options), y, x, sample_weight=w)
        assert focal == ce, (options, focal, ce)
    assert focal > 0.1


def test_binary_is_the_sigmoid_focal_loss():
    logits = random_array((2, 5, 6, 1), seed=5, scale=3.0)
    labels = np.random.default_rng(6).integers(0, 2, (2, 5, 6))
    labels[1, 2, :4] = 255
    labels[0, 0, 0] = 2  # not a class of a binary model
    weights = np.random.default_rng(7).uniform(0, 2, (2, 5, 6)).astype("float32")
    for gamma, alpha in [(2.0, 0.25), (1.5, None), (0.0, 0.8)]:
        loss = FocalLoss(gamma=gamma, alpha=alpha)
        want = torch_sigmoid_focal(labels, logits, gamma, alpha)
        np.testing.assert_allclose(value(loss, labels, logits), want, rtol=1e-5)
        want = torch_sigmoid_focal(labels, logits, gamma, alpha, weights)
        np.testing.assert_allclose(
            value(loss, labels, logits, sample_weight=weights), want, rtol=1e-5
        )
    # A list alpha has two entries, background and foreground.
    got = value(FocalLoss(alpha=[0.75, 0.25]), labels, logits)
    np.testing.assert_allclose(got, torch_sigmoid_focal(labels, logits, 2.0, 0.25), rtol=1e-5)
    # Probabilities instead of logits.
    probs = (1 / (1 + np.exp(-logits.astype("float64")))).astype("float32")
    got = value(FocalLoss(alpha=0.25, from_logits=False), labels, probs)
    np.testing.assert_allclose(got, torch_sigmoid_focal(labels, logits, 2.0, 0.25), rtol=1e-4)


def test_probabilities_and_channels_first():
    logits = random_array((1, 4, 3, 3), seed=8, scale=2.0)
    labels = np.array([[[0, 1, 2], [2, 255, 0], [1, 1, 1], [0, 2, 255]]])
    want = torch_focal(labels, logits, 2.0, [1.0, 2.0, 0.5])
    e = np.exp(logits.astype("float64"))
    probs = (e / e.sum(-1, keepdims=True)).astype("float32")
    got = value(FocalLoss(alpha=[1.0, 2.0, 0.5], from_logits=False), labels, probs)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    loss = FocalLoss(alpha=[1.0, 2.0, 0.5], data_format="channels_first")
    got = value(loss, labels[:, None], np.moveaxis(logits, -1, 1))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_all_ignored_gives_zero():
    logits = random_array((1, 3, 3, 2), seed=9)
    labels = np.full((1, 3, 3), 255)
    assert value(FocalLoss(alpha=0.25), labels, logits) == 0.0
    labels[0, 0] = 1
    assert value(FocalLoss(), labels, logits, sample_weight=np.zeros((1, 3, 3), "float32")) == 0.0


def one_sgd_step(loss, x, labels, kernel, weights=None):
    """The gradient of `loss` with respect to the kernel of a 1x1 convolution, via one
    Keras SGD step of learning rate 1 (backend-independent)."""
    inputs = keras.Input(x.shape[1:])
    conv = keras.layers.Conv2D(kernel.shape[-1], 1, use_bias=False)
    model = keras.Model(inputs, conv(inputs))
    conv.kernel.assign(kernel[None, None])
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss)
    model.train_on_batch(x, labels, sample_weight=weights)
    return kernel - to_numpy(conv.kernel.value)[0, 0]


def test_gradient_against_torch_autograd():
    rng = np.random.default_rng(10)
    x = random_array((2, 4, 5, 3), seed=11)
    kernel = random_array((3, 4), seed=12, scale=2.0)
    labels = rng.integers(0, 4, (2, 4, 5))
    labels[0, 1] = 255
    weights = rng.uniform(0, 2, (2, 4, 5)).astype("float32")
    alpha = [0.5, 1.0, 2.0, 0.25]
    got = one_sgd_step(FocalLoss(alpha=alpha, gamma=2.0), x, labels, kernel, weights)

    w = torch.tensor(kernel, dtype=torch.float64, requires_grad=True)
    logits = torch.tensor(x, dtype=torch.float64) @ w
    y = torch.tensor(labels, dtype=torch.int64)
    valid = y != 255
    y = torch.where(valid, y, 0)
    log_pt = F.log_softmax(logits, dim=-1).gather(-1, y[..., None])[..., 0]
    per_pixel = -torch.tensor(alpha, dtype=torch.float64)[y] * (1 - log_pt.exp()) ** 2 * log_pt
    s = torch.tensor(weights, dtype=torch.float64) * valid
    ((per_pixel * s).sum() / s.sum()).backward()
    np.testing.assert_allclose(got, w.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_gamma_below_one_has_finite_gradients_on_certain_pixels():
    # Logit gaps of 60: p_t rounds to 1 in float32, where d/dp (1 - p)**0.5 is infinite.
    x = np.zeros((1, 2, 2, 1), "float32")
    x[..., 0] = [[1.0, -1.0], [1.0, 1.0]]
    kernel = np.array([[60.0, -60.0]], "float32")
    labels = np.array([[[0, 1], [0, 1]]])
    grad = one_sgd_step(FocalLoss(gamma=0.5), x, labels, kernel)
    assert np.all(np.isfinite(grad)), grad


def test_serialization_and_bad_arguments():
    loss = FocalLoss(alpha=[0.5, 2.0], gamma=1.5, ignore_index=0, from_logits=False)
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(revived, FocalLoss) and revived.get_config() == loss.get_config()
    assert FocalLoss(alpha=np.float32(0.25)).get_config()["alpha"] == 0.25
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match=r"`alpha` in \[0.0, 1.0\]. Received: alpha=1.5"):
        FocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="non-negative weight per class"):
        FocalLoss(alpha=[1.0, -1.0])
    with pytest.raises(ValueError, match="non-negative weight per class"):
        FocalLoss(alpha=[1.0])
    with pytest.raises(TypeError, match="alpha='balanced'"):
        FocalLoss(alpha="balanced")
    with pytest.raises(ValueError, match=r"one weight per class \(3.*Received: alpha=\[1.0, 2.0\]"):
        FocalLoss(alpha=[1.0, 2.0])(np.zeros((1, 2, 2)), np.zeros((1, 2, 2, 3)))
    with pytest.raises(ValueError, match="A number `alpha`.*alpha=0.25 with 3 classes"):
        FocalLoss(alpha=0.25)(np.zeros((1, 2, 2)), np.zeros((1, 2, 2, 3)))
    with pytest.raises(ValueError, match="sample_weight.shape"):
        FocalLoss()(np.zeros((2, 4, 4)), random_array((2, 4, 4, 3)), np.ones((2, 3)))


def test_fit_and_evaluate_report_the_loss():
    rng = np.random.default_rng(13)
    x = random_array((4, 6, 6, 2), seed=13)
    y = rng.integers(0, 3, (4, 6, 6))
    y[0, :3] = 255
    inputs = keras.Input((6, 6, 2))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=FocalLoss(alpha=[1.0, 0.5, 2.0]),
        jit_compile=BACKEND in ("tensorflow", "jax"),
    )
    logits = to_numpy(model.predict(x, verbose=0))
    got = model.evaluate(x, y, batch_size=4, verbose=0)
    np.testing.assert_allclose(got, torch_focal(y, logits, 2.0, [1.0, 0.5, 2.0]), rtol=1e-4)
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


# ---------------------------------------------------------------- reduction
def focal_map(labels, logits, gamma, alpha=None, weights=None, ignore_index=255):
    """The focal loss of every pixel (torch, as `reduction="none"`): 0 where not labelled."""
    x = torch.tensor(logits, dtype=torch.float64).permute(0, 3, 1, 2)
    y = torch.tensor(labels, dtype=torch.int64)
    valid = (y != ignore_index) & (y >= 0) & (y < x.shape[1])
    y = torch.where(valid, y, 0)
    log_pt = F.log_softmax(x, dim=1).gather(1, y[:, None])[:, 0]
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    if alpha is not None:
        loss = loss * torch.tensor(alpha, dtype=torch.float64)[y]
    if weights is not None:
        loss = loss * torch.tensor(weights, dtype=torch.float64)
    return (loss * valid).numpy()


@pytest.mark.parametrize("alpha, weighted", [(None, False), ([0.5, 2.0, 1.0], True)])
def test_reductions_against_torch(alpha, weighted):
    logits = random_array((2, 3, 4, 3), seed=14, scale=2.0)
    labels = np.random.default_rng(15).integers(0, 3, (2, 3, 4))
    labels[0, 1, :3] = 255
    labels[1, 0, 0] = 7  # not a class
    s = (
        np.random.default_rng(16).uniform(0, 2, labels.shape).astype("float32")
        if weighted
        else None
    )
    per_pixel = focal_map(labels, logits, 1.5, alpha, s)
    assert np.all(per_pixel[labels >= 3] == 0)
    for reduction in ("none", None):
        got = to_numpy(FocalLoss(gamma=1.5, alpha=alpha, reduction=reduction)(labels, logits, s))
        assert got.shape == (2, 3, 4)
        np.testing.assert_allclose(got, per_pixel, rtol=1e-5, atol=1e-7)
    got = value(FocalLoss(gamma=1.5, alpha=alpha, reduction="sum"), labels, logits, s)
    np.testing.assert_allclose(got, per_pixel.sum(), rtol=1e-5)
    valid = labels < 3
    divisor = (valid if s is None else s * valid).sum()
    for reduction in ("sum_over_batch_size", "mean", "mean_with_sample_weight"):
        got = value(FocalLoss(gamma=1.5, alpha=alpha, reduction=reduction), labels, logits, s)
        np.testing.assert_allclose(got, per_pixel.sum() / divisor, rtol=1e-5)


def test_binary_reduction_none_is_the_sigmoid_focal_loss_of_each_pixel():
    logits = random_array((2, 3, 4, 1), seed=17, scale=3.0)
    labels = np.random.default_rng(18).integers(0, 2, (2, 3, 4))
    labels[1, 2] = 255
    x = torch.tensor(logits[..., 0], dtype=torch.float64)
    t = torch.tensor(labels == 1, dtype=torch.float64)
    p = torch.sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    want = (ce * (1 - p_t) ** 2 * (0.25 * t + 0.75 * (1 - t))).numpy() * (labels != 255)
    got = FocalLoss(alpha=0.25, reduction="none")(labels, logits)
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-5, atol=1e-7)
    got = FocalLoss(alpha=0.25, reduction="sum")(labels, logits)
    np.testing.assert_allclose(to_numpy(got), want.sum(), rtol=1e-5)


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match=r"`reduction`.*Received: reduction='avg'"):
        FocalLoss(reduction="avg")


# ---------------------------------------------------------------- TensorFlow replicas
REPLICA_SCRIPT = textwrap.dedent(
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import numpy as np

    import kseg

    L = kseg.losses
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 6, 5, 3)).astype("float32") * 2
    labels = rng.integers(0, 3, size=(4, 6, 5)).astype("int32")
    labels[0, :4] = 255  # the first replica holds fewer labelled pixels
    labels[3] = np.where(labels[3] == 2, 0, labels[3])  # class 2 absent from image 3
    weights = rng.uniform(0.5, 2.0, size=(4, 6, 5)).astype("float32")
    LOSSES = {
        "focal": L.FocalLoss(alpha=[1.0, 0.5, 2.0]),
        "focal_binary": L.FocalLoss(alpha=0.25),
        "jaccard": L.JaccardLoss(classes="present"),
        "jaccard_image": L.JaccardLoss(per_image=True, classes="present"),
        "ce_sum": L.SegmentationCrossEntropy(reduction="sum"),
        "ce_none": L.SegmentationCrossEntropy(reduction="none"),
        "dice_image_sum": L.DiceLoss(per_image=True, reduction="sum"),
        "dice_image_none": L.DiceLoss(per_image=True, reduction="none"),
    }

    def loss_and_grad(loss, y, x, w):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss(y, x, sample_weight=w)
        return value, tape.gradient(value, x)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for name, loss in LOSSES.items():
        x = logits[..., :1] if name.endswith("binary") else logits
        y = np.minimum(labels, 1) if name.endswith("binary") else labels
        y = np.where(labels == 255, 255, y)
        one, one_grad = loss_and_grad(loss, tf.constant(y), tf.constant(x), tf.constant(weights))
        data = tf.data.Dataset.from_tensor_slices((y, x, weights)).batch(4)
        batch = next(iter(strategy.experimental_distribute_dataset(data)))
        values, grads = strategy.run(
            lambda y, x, w: loss_and_grad(loss, y, x, w), args=batch
        )
        # Keras' convention: each replica returns its share (the loss / 2); the
        # gradients of the replicas' slices are those of one device on the whole batch.
        # Unreduced values ("none") are each replica's own, unscaled.
        local = [v.numpy() for v in strategy.experimental_local_results(values)]
        if name.endswith("none"):
            np.testing.assert_allclose(np.concatenate(local), one, rtol=1e-5, err_msg=name)
        else:
            np.testing.assert_allclose(sum(local), float(one), rtol=1e-5, err_msg=name)
        grad = np.concatenate([g.numpy() for g in strategy.experimental_local_results(grads)])
        np.testing.assert_allclose(grad, one_grad.numpy(), rtol=1e-4, atol=1e-7, err_msg=name)
        assert float(np.sum(one)) > 0.05, name
    print("replicas OK")
    """
)


# Training on replicas with these losses is in the default suite
# (tests/training/test_distribute.py); this checks the binary loss and the gradients too.
@pytest.mark.large
@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute replicas: TensorFlow only")
def test_two_tensorflow_replicas_give_the_loss_and_gradients_of_one_device():
    """Focal (multi-class, binary), Jaccard (batch, per image), and the "sum" and "none"
    reductions of the cross-entropy and the per-image Dice on 2 replicas vs one device."""
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["KERAS_BACKEND"] = "tensorflow"
    result = subprocess.run(
        [sys.executable, "-c", REPLICA_SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "replicas OK" in result.stdout
