"""Weights saved under one backend load under the other two with equal outputs."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.helpers import BACKEND

# Builds the models, then either saves weights + outputs or loads weights and saves outputs.
SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    import kseg

    mode, folder = sys.argv[1], sys.argv[2]

    def backbone():
        return kseg.backbones.ResNet(blocks=(1, 1, 1, 1), width=4, output_stride=8)

    models = {
        "deeplabv3plus": kseg.models.DeepLabV3Plus(
            4, backbone=backbone(), aspp_filters=8, low_level_filters=4, decoder_filters=8
        ),
        "ginet": kseg.models.GINet(
            4, backbone=backbone(), jpu_width=8, reduce_filters=16, num_state=8, num_node=6,
            class_embeddings=np.random.default_rng(3).standard_normal((4, 5)).astype("float32"),
        ),
    }
    x = np.random.default_rng(0).uniform(0, 255, (2, 35, 41, 3)).astype("float32")
    for name, model in models.items():
        path = f"{folder}/{name}.weights.h5"
        if mode == "save":
            # Non-trivial BN statistics, so a mismatch in how they load would show.
            for w in model.non_trainable_weights:
                if "moving_variance" in w.path:
                    w.assign(np.random.default_rng(1).uniform(0.5, 2.0, w.shape))
                elif "moving_mean" in w.path:
                    w.assign(np.random.default_rng(2).normal(0, 0.1, w.shape))
            model.save_weights(path)
        else:
            model.load_weights(path)
        out = model(x, training=False)
        out = out if isinstance(out, dict) else {"main": out}
        for key, value in out.items():
            suffix = "" if mode == "save" else "_" + keras.backend.backend()
            np.save(f"{folder}/{name}_{key}{suffix}.npy", keras.ops.convert_to_numpy(value))
    """
)


def _run(backend, mode, folder):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, folder], env=env, check=True, capture_output=True
    )


def test_weights_load_under_the_other_backends(tmp_path):
    others = [
        b
        for b in ("tensorflow", "jax", "torch")
        if b != BACKEND and importlib.util.find_spec(b) is not None
    ]
    if not others:
        pytest.skip("no other Keras backend is installed")
    folder = str(tmp_path)
    _run(BACKEND, "save", folder)
    for other in others:
        _run(other, "load", folder)
    compared = 0
    for name in os.listdir(folder):
        if not name.endswith(".npy") or any(name.endswith(f"_{b}.npy") for b in others):
            continue
        reference = np.load(os.path.join(folder, name))
        for other in others:
            got = np.load(os.path.join(folder, name[:-4] + f"_{other}.npy"))
            np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4, err_msg=name)
            compared += 1
    # deeplabv3plus main, ginet main and class_nodes, under each other backend.
    assert compared == 3 * len(others)
