"""Data-parallel training on torch (torch.distributed, gloo on CPU) matches one process.

Two processes started by `torchrun` train a small model 2 steps on one global batch of
4 images (2 each, `kseg.training.DistributionPlan.prepare`), with synchronised
BatchNorm; this test's own process trains the same model on the whole batch, at the
same time. The losses and the weights must agree to 1e-5, the MeanIoU counts and
values exactly, and the BatchNorm moving statistics to 1e-5. The batch is made so that
an average of per-process losses would differ: one image has many ignored pixels and
the images hold different classes. The recipe is then checked end to end: a
two-process run killed after a backup resumes from it.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from tests.helpers import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed: torch only")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The model, data and training of both sides; `run(plan, ...)` trains on this process's
# share of the batch (`plan.shard`) and saves what the test compares.
WORKER = textwrap.dedent(
    """
    import sys

    import keras
    import numpy as np

    import kseg
    from kseg.training import plan_distribution, synchronize_batch_norm

    L = kseg.losses
    rng = np.random.default_rng(0)
    IMAGES = rng.normal(size=(4, 32, 32, 3)).astype("float32")
    MASKS = rng.integers(0, 3, size=(4, 32, 32)).astype("int32")
    MASKS[0, :20] = 255  # process 0's share holds far fewer labelled pixels
    MASKS[2] = np.where(MASKS[2] == 2, 1, MASKS[2])  # class 2 absent from image 2
    FULL = np.where(MASKS == 255, 0, MASKS)


    def losses():
        return {
            "ce": L.SegmentationCrossEntropy(),
            "ohem": L.SegmentationCrossEntropy(ohem_threshold=0.4, ohem_min_kept=600),
            "dice": L.DiceLoss(),
            "lovasz": L.LovaszSoftmaxLoss(),
            "aspp_head": L.SegmentationCrossEntropy(),
            # Keras' own loss (a mean over the process's images) on labels without 255.
            "keras": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        }


    def build():
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
        x = keras.layers.BatchNormalization(momentum=0.5)(x)
        x = keras.layers.Activation("relu")(x)
        aspp = kseg.layers.ASPP(filters=4, atrous_rates=(2,), image_pooling=False, dropout=0.0)(x)
        outputs = {}
        for name in losses():
            source = aspp if name == "aspp_head" else x
            outputs[name] = keras.layers.Conv2D(3, 1, name=name)(source)
        return keras.Model(inputs, outputs)


    def run(plan, init_path, out_path, sync):
        model = build()
        model.load_weights(init_path)
        synchronized = synchronize_batch_norm(model) if sync else 0
        miou = kseg.metrics.MeanIoU(3)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=losses(), metrics={"ce": [miou]})
        plan.prepare(model)
        index, count = plan.shard
        share = slice(index * 4 // count, (index + 1) * 4 // count)
        targets = {k: (FULL if k == "keras" else MASKS)[share] for k in losses()}
        batch_iou = []
        record = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: batch_iou.append(float(logs["ce_mean_iou"]))
        )
        history = model.fit(
            IMAGES[share], targets, batch_size=4 // count, epochs=2, shuffle=False,
            verbose=0, callbacks=[record],
        ).history
        results = {f"history/{k}": np.asarray(v) for k, v in history.items()}
        results["batch_iou"] = np.asarray(batch_iou)
        results["counts"] = miou.exact_counts()
        results["miou"] = np.asarray(float(miou.result()))
        results["synchronized"] = np.asarray(synchronized)
        results["description"] = np.asarray(plan.description)
        for i, variable in enumerate(model.variables):  # by position: names get suffixes
            results[f"weight/{i:03d}/{variable.name}"] = keras.ops.convert_to_numpy(variable.value)
        np.savez(out_path.replace(".npz", f"-{plan.rank}.npz"), **results)


    if __name__ == "__main__":
        plan = plan_distribution(sys.argv[1])
        run(plan, sys.argv[2], sys.argv[3], sync=True)
    """
)


def _env(**extra):
    return {
        **os.environ,
        "PYTHONPATH": ROOT,
        "KERAS_BACKEND": "torch",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # gloo on CPU whatever the machine has; one thread per process on a small host.
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def _torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_two_processes_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    namespace = {"__name__": "worker"}
    exec(compile(WORKER, str(script), "exec"), namespace)
    keras.utils.set_random_seed(3)
    init = str(tmp_path / "init.weights.h5")
    namespace["build"]().save_weights(init)
    out = str(tmp_path / "two.npz")
    launch = [*_torchrun(), str(script), "local", init, out]
    workers = subprocess.Popen(
        launch, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        # The reference meanwhile: this process, one device, the whole batch, plain BatchNorm.
        from kseg.training import plan_distribution

        namespace["run"](plan_distribution("none"), init, str(tmp_path / "one.npz"), sync=False)
        output, _ = workers.communicate(timeout=240)
    finally:
        workers.kill()
    assert workers.returncode == 0, output[-6000:]
    one = dict(np.load(tmp_path / "one-0.npz"))
    two = dict(np.load(tmp_path / "two-0.npz"))
    other = dict(np.load(tmp_path / "two-1.npz"))
    assert "torch.distributed (gloo) over 2 processes" in str(two.pop("description"))
    assert "this is process 1 on cpu" in str(other.pop("description"))
    one.pop("description")
    assert int(two["synchronized"]) == 4  # one at the top, three in the ASPP
    assert sorted(one) == sorted(two)
    losses = [k for k in one if k.startswith("history/") and k.endswith("loss")]
    assert len(losses) == 7, losses  # the total and the six outputs'
    for key in losses:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
    weights = [k for k in one if k.startswith("weight/")]
    moving = [k for k in weights if "moving_" in k]
    assert len(moving) == 8, moving
    for key in weights:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-5, err_msg=key)
        # Both processes hold the same model, moving statistics included.
        np.testing.assert_allclose(other[key], two[key], rtol=1e-6, atol=1e-7, err_msg=key)
    np.testing.assert_array_equal(two["counts"], one["counts"])
    np.testing.assert_array_equal(other["counts"], one["counts"])
    labelled = int((namespace["MASKS"] != 255).sum())
    assert int(one["counts"].sum()) == labelled
    assert float(two["miou"]) == float(one["miou"])
    assert list(two["batch_iou"]) == list(one["batch_iou"])
    assert list(other["batch_iou"]) == list(one["batch_iou"])


RECIPE = "import sys; sys.path.insert(0, 'recipes'); import train; train.main(sys.argv[1:])"


def _recipe(logdir, *extra):
    args = ["--smoke", "--distribute", "local", "--batch-size", "4", "--logdir", str(logdir)]
    return [*_torchrun(), "--no-python", sys.executable, "-c", RECIPE, *args, *extra]


def _saved_step(logdir):
    path = logdir / "backup" / "training_metadata.json"
    try:
        return json.loads(path.read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


def test_a_killed_two_process_run_resumes(tmp_path):
    """The recipe on two processes: killed after a backup, it resumes from it."""
    logdir = tmp_path / "run"
    run = subprocess.Popen(
        _recipe(logdir, "--steps", "4", "--save-every", "1"),
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 180
        while _saved_step(logdir) is None and run.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        # SIGTERM: torchrun ends its workers (SIGKILL would leave them running alone).
        run.send_signal(signal.SIGTERM)
    finally:
        output, _ = run.communicate(timeout=60)
    saved = _saved_step(logdir)
    assert saved is not None and 1 <= saved < 4, output[-6000:]
    resumed = subprocess.run(
        _recipe(logdir, "--resume"),
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-6000:]
    assert f"Resuming after training step {saved} " in output, output[-6000:]
    assert "the run ends after step 4." in output
    assert output.count("Resuming after training step") == 1  # process 0 alone prints
    assert "global batch 4 = 2 x 2 per device" in output
    assert "torch.distributed (gloo) over 2 processes" in output
    assert _saved_step(logdir) == 4  # 2 epochs of 2 steps
    assert "Validation mIoU" in output
    assert (logdir / "best.keras").is_file()
