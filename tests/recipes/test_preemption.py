"""A training run killed with SIGKILL after a mid-epoch save resumes at that step (train.py).

The recipe runs in subprocesses under the current backend, in --smoke mode on
the synthetic dataset (32 px; U-Net, the model quickest to compile; 2 steps per
epoch): 2 epochs with a save at every step. The first run is stopped for good
(SIGKILL) right after its save at step 1, the middle of epoch 1 (before any
validation, which keeps the test cheap); `--resume`, run in the test process
(`train.main`, as tests/recipes/test_datasets.py does, which saves a second start
of the libraries), must finish the run with exactly 4 optimizer steps in all.
"""

import json
import os
import signal
import subprocess
import sys
import threading

import h5py
import keras
import pytest
import train  # recipes/train.py (tests/recipes/__init__.py puts recipes/ on sys.path)

from tests.recipes import RECIPES, ROOT

EPOCHS, STEPS_PER_EPOCH, SAVE_EVERY = 2, 2, 1  # --smoke has 2 steps per epoch
KILL_AT = 1  # the first save inside an epoch

# Runs train.py with its backup callback holding still after the first save made inside an
# epoch, so that the kill lands right after that save and nowhere else.
DRIVER = """
import sys, time
sys.path.insert(0, {recipes!r})
import kseg.training

save = kseg.training.BackupAndRestore._save_model

def save_then_hold(self):
    save(self)
    if self._step % self.params["steps"]:
        print("MID-EPOCH SAVE AFTER STEP", self._step, flush=True)
        time.sleep(600)

kseg.training.BackupAndRestore._save_model = save_then_hold
import train
train.main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def env():
    """The subprocess' environment: this backend and kseg, and JAX's compilation cache of
    tests/conftest.py, which the resumed run in this process shares."""
    environ = dict(os.environ)
    environ["KERAS_BACKEND"] = keras.backend.backend()
    environ["PYTHONPATH"] = os.pathsep.join([ROOT, environ.get("PYTHONPATH", "")])
    environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    return environ


def _start_and_kill_after_mid_epoch_save(env, logdir, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(recipes=RECIPES))
    args = ["--smoke", "--model", "unet", "--epochs", EPOCHS, "--save-every", SAVE_EVERY]
    args += ["--logdir", logdir]
    process = subprocess.Popen(
        [sys.executable, str(driver), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(300, process.kill)
    watchdog.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("MID-EPOCH SAVE AFTER STEP"):
                os.kill(process.pid, signal.SIGKILL)
                break
        process.wait(timeout=60)
    finally:
        watchdog.cancel()
        process.stdout.close()
    output = "".join(lines)
    if not lines or not lines[-1].startswith("MID-EPOCH SAVE AFTER STEP"):
        raise AssertionError(f"the run ended before a mid-epoch save:\n{output[-4000:]}")
    assert process.returncode == -signal.SIGKILL
    return output


def _metadata(logdir):
    with open(logdir / "backup" / "training_metadata.json") as f:
        return json.load(f)


def _saved_optimizer_steps(logdir):
    # Keras writes the optimizer's variables in order, `iterations` first.
    with h5py.File(logdir / "backup" / "latest.weights.h5", "r") as f:
        return int(f["optimizer"]["vars"]["0"][()])


def test_killed_run_resumes_at_its_mid_epoch_save_and_does_the_configured_steps(
    env, tmp_path, capsys
):
    logdir = tmp_path / "run"
    output = _start_and_kill_after_mid_epoch_save(env, logdir, tmp_path)
    assert f"MID-EPOCH SAVE AFTER STEP {KILL_AT}" in output
    assert _metadata(logdir) == {"epoch": 0, "step": KILL_AT, "iterations": KILL_AT}
    assert _saved_optimizer_steps(logdir) == KILL_AT
    # As if an earlier validation had scored 0.99 (the kill came before any): the resumed
    # run must read that score back, and keep the model that has it.
    placeholder = b"the model that scored 0.99"
    (logdir / "best.keras").write_bytes(placeholder)
    (logdir / "best.json").write_text('{"val_mean_iou": 0.99}')

    train.main(["--resume", "--logdir", str(logdir)])
    stdout = capsys.readouterr().out
    assert "Configuration (smoke)" in stdout and "Model unet" in stdout  # the saved arguments
    assert (
        f"Resuming after training step {KILL_AT} (epoch 1, step 1 of {STEPS_PER_EPOCH})" in stdout
    )
    # Keras counts epochs from the interrupted one, which now ends 1 step later than it
    # would have; the last is cut short so that the run ends at its configured step.
    assert "Epoch 1/2" in stdout and "Epoch 2/2" in stdout
    total = EPOCHS * STEPS_PER_EPOCH
    assert _metadata(logdir) == {"epoch": EPOCHS, "step": total, "iterations": total}
    assert _saved_optimizer_steps(logdir) == total  # not more, not fewer
    assert stdout.count("val_mean_iou did not improve from 0.99000") == EPOCHS
    assert (logdir / "best.keras").read_bytes() == placeholder
    # Nothing half-written is left behind.
    leftovers = [n for d in (logdir, logdir / "backup") for n in os.listdir(d) if ".tmp-" in n]
    assert leftovers == []


def test_save_every_defaults_and_checks(tmp_path, capsys):
    assert train.parse_args(["--smoke"]).save_every == 1
    assert train.parse_args([]).save_every == 50  # demo: 125 steps in its one epoch
    voc = ["--dataset", "voc", "--data-dir", str(tmp_path)]
    assert train.parse_args(voc).save_every == 500
    assert train.parse_args([*voc, "--save-every", "0"]).save_every == 0
    # A resumed run takes the saved value unless the command line gives one.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "args.json").write_text('{"smoke": true, "save_every": 7}')
    resume = ["--resume", "--logdir", str(tmp_path / "run")]
    assert train.parse_args(resume).save_every == 7
    assert train.parse_args([*resume, "--save-every", "3"]).save_every == 3
    with pytest.raises(SystemExit):
        train.parse_args(["--smoke", "--save-every", "-1"])
    assert "argument --save-every: must be >= 0, got -1" in capsys.readouterr().err
