"""The recipes' tests: recipes/ goes on sys.path, so tests import a recipe as a module."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = os.path.join(ROOT, "recipes")
if RECIPES not in sys.path:
    sys.path.insert(0, RECIPES)


def fine_tune_smoke(keras_file, logdir):
    """`train.py --smoke --init-from keras_file` under the tests' backend: the README's
    one-flag fine-tuning on the synthetic set's classes. Returns the run's `best.keras`
    model, after checking the run replaced the classifier for those classes."""
    import subprocess

    import keras

    from kseg.data.palette import SYNTHETIC_CLASSES

    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, os.path.join(RECIPES, "train.py"), "--smoke", "--init-from"]
        + [str(keras_file), "--logdir", str(logdir)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-3000:])
    classes = len(SYNTHETIC_CLASSES)
    if f"but classifier (new for {classes} classes)" not in result.stdout:
        raise AssertionError(f"the classifier was not replaced:\n{result.stdout[-3000:]}")
    tuned = keras.saving.load_model(os.path.join(logdir, "best.keras"), compile=False)
    if tuned.output.shape[-1] != classes:
        raise AssertionError(f"{tuned.output.shape[-1]} classes, expected {classes}")
    return tuned
