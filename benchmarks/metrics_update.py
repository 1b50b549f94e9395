"""Median time of one metric update: kseg.metrics.MeanIoU next to keras.metrics.MeanIoU.

Usage:
    python benchmarks/metrics_update.py                 # spawns one process per backend
    python benchmarks/metrics_update.py --backend jax   # one backend, in this process

One update of an 8x256x256x21 float32 logits batch with int32 labels (about 5% set to
the ignore value 255). Both metrics take the argmax inside and skip label 255. For each
metric two modes are timed:

- "eager": `metric.update_state(y_true, y_pred)` called from Python.
- "fit": the update the way `model.fit`/`evaluate` runs it: on JAX
  `jax.jit(metric.stateless_update_state)` (the trainer jits the whole step); on
  TensorFlow `tf.function(update_state)` without XLA (what Keras'
  `jit_compile="auto"` picks on a CPU-only machine) and with XLA
  (`jit_compile=True`, the "auto" choice with a GPU); on torch the trainer runs
  eagerly, so "fit" equals "eager".

Each timing ends with the state copied to NumPy (so asynchronous backends finish), takes
the median over the repeats and excludes 3 warm-up calls (tracing and compilation).
Both wall-clock and process CPU time are printed: on a shared machine the wall time
includes waiting for a core, the CPU time does not.
"""

import argparse
import os
import platform
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
SHAPE = (8, 256, 256, 21)


def _inputs():
    import numpy as np

    rng = np.random.default_rng(0)
    logits = rng.standard_normal(SHAPE).astype("float32")
    labels = rng.integers(0, SHAPE[-1], SHAPE[:3]).astype("int32")
    labels[rng.random(SHAPE[:3]) < 0.05] = 255
    return labels, logits


def _timed(fn, sync, warmup=3, repeats=20, budget_s=60.0):
    import numpy as np

    for _ in range(warmup):
        sync(fn())
    walls, cpus = [], []
    start = time.perf_counter()
    while len(walls) < repeats and (len(walls) < 3 or time.perf_counter() - start < budget_s):
        t0, c0 = time.perf_counter(), time.process_time()
        sync(fn())
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return 1e3 * float(np.median(walls)), 1e3 * float(np.median(cpus)), len(walls)


def _modes(metric, y_true, y_pred, backend):
    """Returns {mode: (callable, sync)} for one metric."""
    import numpy as np
    from keras import ops

    def sync_vars(_=None):
        for v in metric.variables:
            np.asarray(ops.convert_to_numpy(v))

    modes = {"eager": (lambda: metric.update_state(y_true, y_pred), sync_vars)}
    if backend == "jax":
        import jax

        step = jax.jit(metric.stateless_update_state)
        state = [v.value for v in metric.variables]

        def run():
            return step(state, y_true, y_pred)

        def sync(new_state):
            jax.block_until_ready(new_state)

        modes["fit (jax.jit)"] = (run, sync)
    elif backend == "tensorflow":
        import tensorflow as tf

        xla = tf.function(metric.update_state, jit_compile=True)
        graph = tf.function(metric.update_state, jit_compile=False)
        modes["fit (tf.function, XLA)"] = (lambda: xla(y_true, y_pred), sync_vars)
        modes["fit (tf.function, no XLA)"] = (lambda: graph(y_true, y_pred), sync_vars)
    else:
        modes["fit (eager trainer)"] = modes["eager"]
    return modes


def run_backend(backend):
    os.environ["KERAS_BACKEND"] = backend
    import keras
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import kseg

    labels, logits = _inputs()
    y_true = keras.ops.convert_to_tensor(labels)
    y_pred = keras.ops.convert_to_tensor(logits)
    k = SHAPE[-1]
    metrics = {
        "kseg.metrics.MeanIoU": kseg.metrics.MeanIoU(k, ignore_index=255),
        "keras.metrics.MeanIoU": keras.metrics.MeanIoU(
            k, ignore_class=255, sparse_y_true=True, sparse_y_pred=False
        ),
    }
    rows = {}
    for name, metric in metrics.items():
        for mode, (fn, sync) in _modes(metric, y_true, y_pred, backend).items():
            try:
                rows.setdefault(mode, {})[name] = _timed(fn, sync)
            except Exception as e:  # a failing peer is a result too
                rows.setdefault(mode, {})[name] = f"error: {type(e).__name__}: {str(e)[:80]}"
    # Both metrics agree (checked on the eager state).
    kseg_miou = float(metrics["kseg.metrics.MeanIoU"].result())
    versions = {"keras": keras.__version__, "numpy": np.__version__}
    if backend == "jax":
        import jax

        versions["jax"] = jax.__version__
    elif backend == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    else:
        import torch

        versions["torch"] = torch.__version__
    print(f"## backend={backend}  " + "  ".join(f"{a}={b}" for a, b in versions.items()))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}; kseg mIoU after the runs {kseg_miou:.4f}"
    )
    print(
        "| mode | kseg MeanIoU ms (wall / cpu) | keras MeanIoU ms (wall / cpu) | speed-up (wall) |"
    )
    print("|---|---|---|---|")
    for mode, cells in rows.items():
        texts = []
        for name in metrics:
            cell = cells.get(name)
            texts.append(
                cell if isinstance(cell, str) else f"{cell[0]:.1f} / {cell[1]:.1f} (n={cell[2]})"
            )
        a, b = cells.get("kseg.metrics.MeanIoU"), cells.get("keras.metrics.MeanIoU")
        ratio = f"{b[0] / a[0]:.1f}x" if not isinstance(a, str) and not isinstance(b, str) else "-"
        print(f"| {mode} | {texts[0]} | {texts[1]} | {ratio} |")
    print(flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, default=None)
    args = parser.parse_args()
    if args.backend:
        run_backend(args.backend)
        return
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for backend in BACKENDS:
        subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--backend", backend], env=env, check=False
        )


if __name__ == "__main__":
    main()
