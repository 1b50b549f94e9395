"""Multi-device training matches one device: every kseg loss, BatchNorm, MeanIoU.

BatchNorm: on JAX the unchanged layer matches one device (its statistics are the
global batch's); on TensorFlow `kseg.training.synchronize_batch_norm` makes it match,
and the same run without it is checked to differ.

Device counts must be set before JAX or TensorFlow start, so each check runs in a
subprocess: JAX with 4 CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=4`),
TensorFlow with 2 logical CPUs (`tf.config.set_logical_device_configuration`). Each
trains a small model 2 steps on one global batch of 4 images, once on one device and
once data-parallel (`kseg.training.plan_distribution("local")`), and compares the
reported losses and the weights (to 1e-5) and the MeanIoU counts (exactly). The batch
is made so that a loss averaged per replica would differ: one image has many ignored
pixels, the images have different classes.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import kseg
from tests.helpers import BACKEND
from tests.models.test_mixed_precision import BUILDERS as MP_BUILDERS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent(
    """
    import sys

    import numpy as np

    import keras
    import kseg
    from kseg.training import plan_distribution

    L = kseg.losses
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 32, 32, 3)).astype("float32")
    masks = rng.integers(0, 3, size=(4, 32, 32)).astype("int32")
    masks[0, :20] = 255  # replica 0 holds far fewer labelled pixels
    masks[2] = np.where(masks[2] == 2, 1, masks[2])  # class 2 absent from image 2
    # TensorFlow replicas normalise with their own statistics unless synchronised;
    # JAX runs BatchNorm on the whole sharded batch (the global statistics as is).
    SYNC_BN = keras.backend.backend() == "tensorflow"

    LOSSES = {
        "ce": L.SegmentationCrossEntropy(),
        "ohem": L.SegmentationCrossEntropy(ohem_threshold=0.4, ohem_min_kept=600),
        "dice": L.DiceLoss(),
        "dice_image": L.DiceLoss(per_image=True),
        "lovasz": L.LovaszSoftmaxLoss(),
        "lovasz_image": L.LovaszSoftmaxLoss(per_image=True),
        "focal": L.FocalLoss(alpha=[1.0, 0.5, 2.0]),
        "jaccard": L.JaccardLoss(classes="present"),
        "jaccard_image": L.JaccardLoss(per_image=True),
        "presence": L.SemanticContextLoss(num_classes=3),
        "aspp_head": L.SegmentationCrossEntropy(),
        # Keras' own loss next to kseg's, on labels without ignored pixels.
        "full": L.SegmentationCrossEntropy(),
        "keras": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    }
    FULL = np.where(masks == 255, 0, masks)


    def build(sync):
        keras.utils.set_random_seed(3)
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
        x = keras.layers.BatchNormalization(momentum=0.5)(x)
        x = keras.layers.Activation("relu")(x)
        # BatchNorm inside a kseg layer too (the ASPP's ConvBNAct branches), on a head of its
        # own: the rounding of synchronized statistics then reaches no head that MeanIoU counts
        # exactly (one pixel's argmax flipped on a host when the ASPP fed every head).
        # No image pooling: its BatchNorm normalises a 1x1 map over 2 images per replica,
        # where the synchronized E[x^2]-E[x]^2 loses the small variance to rounding.
        aspp = kseg.layers.ASPP(filters=4, atrous_rates=(2,), image_pooling=False, dropout=0.0)(x)
        outputs = {}
        for name in LOSSES:
            if name == "aspp_head":
                outputs[name] = keras.layers.Conv2D(3, 1, name=name)(aspp)
            elif name == "presence":
                pooled = keras.layers.GlobalAveragePooling2D()(x)
                outputs[name] = keras.layers.Dense(3, name=name)(pooled)
            else:
                outputs[name] = keras.layers.Conv2D(3, 1, name=name)(x)
        model = keras.Model(inputs, outputs)
        model.get_layer("keras").set_weights(model.get_layer("full").get_weights())
        if sync:
            # One at the top, three in the ASPP (1x1, one atrous rate, projection).
            assert kseg.training.synchronize_batch_norm(model) == 4
        miou = kseg.metrics.MeanIoU(3)
        model.compile(
            optimizer=keras.optimizers.SGD(0.5), loss=dict(LOSSES), metrics={"ce": [miou]}
        )
        return model, miou


    def train(plan, sync=False):
        with plan.scope():
            model, miou = build(sync)
        targets = {name: FULL if name in ("full", "keras") else masks for name in LOSSES}
        batch_iou = []  # the per-batch logs (read inside the step on TensorFlow)
        record = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: batch_iou.append(float(logs["ce_mean_iou"]))
        )
        history = model.fit(
            images, targets, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[record]
        ).history
        history["batch_iou"] = batch_iou
        # kseg's loss reports and steps as Keras' own.
        np.testing.assert_allclose(history["full_loss"], history["keras_loss"], rtol=1e-5)
        full, ref = model.get_layer("full"), model.get_layer("keras")
        for a, b in zip(full.get_weights(), ref.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        return history, [np.asarray(w) for w in model.get_weights()], miou


    one = train(plan_distribution("none"))
    plan = plan_distribution("local")
    assert plan.num_replicas == int(sys.argv[1]), plan.description
    assert plan.per_replica_batch(4) == 4 // plan.num_replicas
    many = train(plan, sync=SYNC_BN)

    # Losses to 1e-4: TensorFlow's synchronized BatchNorm takes the variance as
    # E[x^2] - E[x]^2 of all-reduced sums (Keras' one device: a two-pass variance),
    # which rounds differently (1.2e-5 relative after two steps here); weights to 1e-5.
    for key, values in one[0].items():
        np.testing.assert_allclose(many[0][key], values, rtol=1e-4, atol=1e-6, err_msg=key)
    assert many[0]["batch_iou"] == one[0]["batch_iou"], (many[0]["batch_iou"], one[0]["batch_iou"])
    for name in LOSSES:
        assert name + "_loss" in one[0], sorted(one[0])
    for a, b in zip(one[1], many[1]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(many[2].exact_counts(), one[2].exact_counts())
    assert int(one[2].exact_counts().sum()) == int((masks != 255).sum())
    assert float(many[2].result()) == float(one[2].result())
    if SYNC_BN:  # the check can fail: per-replica statistics train another model
        apart = train(plan, sync=False)
        gap = max(float(np.abs(a - b).max()) for a, b in zip(one[1], apart[1]))
        assert gap > 1e-3, gap
        print("unsynchronized BatchNorm differs by", gap)
    print("losses", {k: round(v[-1], 5) for k, v in one[0].items() if k.endswith("loss")})
    print("replicas", plan.description, "OK")
    """
)

TF_PROLOGUE = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def xla_flags(flag):
    """`flag` added to the XLA flags of this process (tests/conftest.py sets some)."""
    return f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


def run_script(code, env_extra, *args):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **env_extra}
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result


@pytest.mark.skipif(BACKEND != "jax", reason="runs in the JAX session")
def test_jax_four_devices_match_one_device():
    result = run_script(
        SCRIPT,
        {
            "KERAS_BACKEND": "jax",
            "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=4"),
        },
        "4",
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "DataParallel over 4 devices OK" in result.stdout


@pytest.mark.skipif(BACKEND != "tensorflow", reason="runs in the TensorFlow session")
def test_tensorflow_two_replicas_match_one_device():
    result = run_script(TF_PROLOGUE + SCRIPT, {"KERAS_BACKEND": "tensorflow"}, "2")
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "MirroredStrategy over 2 replicas OK" in result.stdout


@pytest.mark.skipif(BACKEND != "torch", reason="runs in the torch session")
def test_torch_outside_torchrun_says_how_to_launch(monkeypatch):
    from kseg.training import plan_distribution
    from kseg.training.distribute import TORCHRUN_VARIABLES

    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for choice in ("local", "multihost"):
        with pytest.raises(ValueError, match="started by torchrun .*--nproc_per_node") as info:
            plan_distribution(choice)
        assert f"Received: distribute={choice!r} with WORLD_SIZE, RANK" in str(info.value)
    assert plan_distribution("none").num_replicas == 1
    assert plan_distribution("auto").num_replicas == 1
    assert plan_distribution("auto").shard == (0, 1)


@pytest.mark.skipif(BACKEND != "torch", reason="runs in the torch session")
def test_torch_refuses_one_device_in_several_torchrun_processes(monkeypatch):
    from kseg.training import plan_distribution
    from kseg.training.distribute import TORCHRUN_VARIABLES

    values = ["2", "1", "1", "127.0.0.1", "29500"]
    for name, value in zip(TORCHRUN_VARIABLES, values):
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="torchrun started 2 processes") as info:
        plan_distribution("none")
    assert str(info.value).endswith("Received: distribute='none' with WORLD_SIZE=2")


@pytest.mark.skipif(BACKEND != "torch", reason="runs in the torch session")
def test_torch_steps_need_torch_distributed_and_a_compiled_model():
    from kseg.training.distribute import distribute_torch_steps

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="needs torch.distributed initialised"):
        distribute_torch_steps(model)


@pytest.mark.skipif(BACKEND == "torch", reason="the other backends")
def test_torch_steps_refuse_another_backend():
    from kseg.training.distribute import distribute_torch_steps

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=f"for the torch backend .*backend {BACKEND!r}"):
        distribute_torch_steps(model)


def test_synchronized_batch_norm_saves_a_config_every_backend_loads():
    from kseg.training import synchronize_batch_norm

    inner = keras.Sequential([keras.layers.BatchNormalization()], name="backbone")
    inputs = keras.Input((4, 4, 2))
    outputs = keras.layers.BatchNormalization(name="head_bn")(inner(inputs))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(outputs))
    if BACKEND == "jax":
        with pytest.raises(ValueError, match="torch.distributed only: .*global batch"):
            synchronize_batch_norm(model)
        return
    assert synchronize_batch_norm(model) == 2
    layers = [inner.layers[0], model.get_layer("head_bn")]
    assert all(layer.synchronized for layer in layers)
    assert [layer.get_config()["synchronized"] for layer in layers] == [False, False]
    assert model.to_json().count('"synchronized": false') == 2
    clone = keras.Model.from_config(model.get_config())
    assert not clone.get_layer("head_bn").synchronized


def _moving_means(model):
    """Every BatchNorm's moving mean, found from the model's variables (not its layers)."""
    return {v.path for v in model.non_trainable_variables if v.path.endswith("moving_mean")}


WHOLE_MODELS = {
    **{name: build for name, build in MP_BUILDERS.items()},
    # The models where a walk of `.layers` missed the BatchNorm of kseg's own layers
    # (the ASPP, the decoder, the PPM, the graph units): 9 of 62, 5 of 58, 15 of 68.
    "deeplabv3plus_resnet50": lambda: kseg.models.DeepLabV3Plus(num_classes=3),
    "pspnet_resnet50": lambda: kseg.models.PSPNet(num_classes=3),
    "ginet_resnet50": lambda: kseg.models.GINet(num_classes=3),
    "deeplabv3plus_xception65": lambda: kseg.models.DeepLabV3Plus(
        num_classes=3, backbone="xception65"
    ),
    "deeplabv3plus_mobilenetv2": lambda: kseg.models.DeepLabV3Plus(
        num_classes=3, backbone="mobilenetv2"
    ),
    "unet_efficientnetb0": lambda: kseg.models.UNet(num_classes=3, backbone="efficientnetb0"),
}


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute only")
@pytest.mark.parametrize("name", sorted(WHOLE_MODELS))
def test_every_batch_norm_of_every_model_is_synchronized(name):
    from kseg.training import synchronize_batch_norm

    model = WHOLE_MODELS[name]()
    expected = _moving_means(model)  # empty for the VGG models (no BatchNorm)
    changed = synchronize_batch_norm(model)
    synchronized = {
        layer.moving_mean.path
        for layer in _all_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized
    }
    assert synchronized == expected, sorted(expected - synchronized)[:5]
    assert changed == len(expected)


def _all_layers(layer, seen=None):
    """Every layer reachable from `layer` through its attributes, however nested."""
    seen = set() if seen is None else seen
    if id(layer) in seen:
        return
    seen.add(id(layer))
    yield layer
    for value in vars(layer).values():
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, keras.layers.Layer):
                yield from _all_layers(item, seen)


def test_global_batch_must_split_evenly():
    from kseg.training import DistributionPlan, plan_distribution

    plan = DistributionPlan("mirrored", 4, "test")
    assert plan.per_replica_batch(16) == 4
    with pytest.raises(ValueError, match="multiple of 4. Received: --batch-size 10 on 4"):
        plan.per_replica_batch(10)
    with pytest.raises(ValueError, match="one of auto, none, local, multihost"):
        plan_distribution("mirrored")
    assert np.isscalar(plan_distribution("none").num_replicas)


RECIPE = """
import sys
import keras
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, "recipes")
import train
train.main(sys.argv[1:])
"""


@pytest.mark.skipif(BACKEND == "torch", reason="JAX and TensorFlow scale out")
def test_recipe_trains_on_several_devices(tmp_path):
    """The smoke recipe with --distribute local: 4 JAX CPU devices or 2 TensorFlow CPUs."""
    replicas = 4 if BACKEND == "jax" else 2
    env = {"KERAS_BACKEND": BACKEND}
    if BACKEND == "jax":
        env["XLA_FLAGS"] = xla_flags(f"--xla_force_host_platform_device_count={replicas}")
    args = ["--smoke", "--distribute", "local", "--logdir", str(tmp_path / "run")]
    sync = ["--sync-bn"] if BACKEND == "tensorflow" else []
    result = run_script(RECIPE, env, *args, "--batch-size", str(2 * replicas), *sync)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    statistics = "of the global batch" + (" (--sync-bn)" if sync else "")
    assert (
        f"global batch {2 * replicas} = {replicas} x 2 per device; "
        f"BatchNorm statistics {statistics}." in result.stdout
    )
    assert "Validation mIoU" in result.stdout


def test_recipe_refuses_a_global_batch_that_does_not_split(tmp_path, monkeypatch, capsys):
    """The recipe stops before building anything, naming the option and both numbers."""
    import kseg.training

    monkeypatch.syspath_prepend(os.path.join(ROOT, "recipes"))
    import train

    plan = kseg.training.DistributionPlan("mirrored", 4, "4 replicas")
    monkeypatch.setattr(kseg.training, "plan_distribution", lambda choice: plan)
    with pytest.raises(SystemExit) as info:
        train.main(["--smoke", "--logdir", str(tmp_path / "odd"), "--batch-size", "6"])
    message = str(info.value)
    assert message.startswith("train.py: error: argument --distribute:"), message
    assert "must be a multiple of 4. Received: --batch-size 6 on 4 replicas" in message
    assert not (tmp_path / "odd").exists()


def test_device_kind_names_the_accelerator_or_the_cpu():
    from kseg.training.distribute import _accelerators, device_kind

    assert device_kind() == ("gpu" if _accelerators(BACKEND) else "cpu")
    assert device_kind("numpy") == "cpu"


class _FastBatchNorm(keras.layers.BatchNormalization):
    """A subclass with its own `call`, as a backend's fast path would have."""

    def call(self, inputs, training=None, mask=None):
        raise AssertionError("the subclass's call ran, not the synchronised one")


@pytest.mark.skipif(BACKEND != "torch", reason="torch: one process, no torch.distributed")
def test_synchronized_batch_norm_trains_as_plain_batch_norm_in_one_torch_process():
    """Synchronised layers (a subclass with its own `call` too) compute the moments of
    the process's batch outside torch.distributed: two steps as Keras' plain layer."""
    from kseg.training import synchronize_batch_norm

    def build(norm):
        keras.utils.set_random_seed(1)
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
        x = norm(momentum=0.5, name="bn")(x)
        return keras.Model(inputs, keras.layers.Conv2D(3, 1)(x))

    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 8, 8, 3)).astype("float32")
    masks = rng.integers(0, 3, size=(4, 8, 8))
    plain, synchronized = build(keras.layers.BatchNormalization), build(_FastBatchNorm)
    synchronized.set_weights(plain.get_weights())
    assert synchronize_batch_norm(synchronized) == 1
    assert synchronized.get_layer("bn").get_config()["synchronized"] is False
    results = []
    for model in (plain, synchronized):
        model.compile(
            optimizer=keras.optimizers.SGD(0.1), loss=kseg.losses.SegmentationCrossEntropy()
        )
        history = model.fit(images, masks, batch_size=4, epochs=2, verbose=0, shuffle=False)
        results.append((history.history["loss"], model.get_weights()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
