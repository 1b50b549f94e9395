"""Data-parallel training on torch (`torch.distributed`, gloo on CPU): step time and all-reduce.

Usage:
    python benchmarks/torch_distributed.py            # starts torchrun itself, prints tables

Two measurements, each in processes started by `torchrun --standalone`:

- "steps": the median wall time of one `model.train_on_batch` of the recipes' compact
  DeepLabV3+ (one bottleneck per stage, width 16; 6 classes) on a global batch of 8
  images of 96 x 96, in one process (batch 8) and in two (4 each, gloo,
  `kseg.training.DistributionPlan.prepare`), with and without synchronised BatchNorm;
  SGD and `kseg.losses.SegmentationCrossEntropy`; 3 warm-up steps, median of 10.
- "allreduce": the median time to average one set of gradients over two processes,
  with the shapes of a model's trainable variables (the compact DeepLabV3+, and
  `kseg.models.DeepLabV3Plus(num_classes=21)` on ResNet-50, 40M parameters): one
  `all_reduce` per tensor, one per flattened bucket of 25 MB (kseg's choice,
  `kseg.training.distribute.average_gradients`), and a single flattened bucket.

Threads: torchrun sets `OMP_NUM_THREADS=1` in each process when it starts several; one
process is timed both with torch's default threads (every core) and with one thread.
"""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOBAL_BATCH, SIZE, CLASSES = 8, 96, 6


def _compact_model():
    sys.path.insert(0, os.path.join(ROOT, "recipes"))
    import _common

    return _common.build_model(
        "deeplabv3plus", CLASSES, backbone="compact", compact=_common.COMPACT_RESNET
    )


def _median_time(fn, warmup, repeats):
    import numpy as np

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def steps(sync):
    import keras
    import numpy as np

    import kseg
    from kseg.training import plan_distribution, synchronize_batch_norm

    plan = plan_distribution("auto")
    keras.utils.set_random_seed(0)
    model = _compact_model()
    if sync:
        synchronize_batch_norm(model)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=kseg.losses.SegmentationCrossEntropy())
    plan.prepare(model)
    index, count = plan.shard
    rng = np.random.default_rng(index)
    share = GLOBAL_BATCH // count
    x = rng.uniform(0, 255, (share, SIZE, SIZE, 3)).astype("float32")
    y = rng.integers(0, CLASSES, (share, SIZE, SIZE)).astype("int32")
    seconds = _median_time(lambda: model.train_on_batch(x, y), 3, 10)
    return {"processes": count, "sync_bn": sync, "s_per_step": seconds}


def allreduce():
    import keras
    import torch
    import torch.distributed as dist

    import kseg
    from kseg.training import plan_distribution
    from kseg.training.distribute import average_gradients

    plan_distribution("auto")
    rows = []
    models = {
        "compact DeepLabV3+": _compact_model,
        "DeepLabV3+ ResNet-50": lambda: kseg.models.DeepLabV3Plus(num_classes=21),
    }
    for name, build in models.items():
        shapes = [tuple(v.shape) for v in build().trainable_variables]
        grads = [torch.randn(shape) for shape in shapes]
        megabytes = sum(g.numel() for g in grads) * 4 / 2**20

        def per_tensor(grads=grads):
            for g in grads:
                dist.all_reduce(g)
                g /= dist.get_world_size()

        ways = {
            "per tensor": per_tensor,
            "25 MB buckets": lambda grads=grads: average_gradients(grads),
            "one bucket": lambda grads=grads: average_gradients(grads, bucket_bytes=None),
        }
        for way, fn in ways.items():
            dist.barrier()
            rows.append(
                {
                    "model": name,
                    "tensors": len(grads),
                    "MB": round(megabytes, 1),
                    "way": way,
                    "s": _median_time(fn, 2, 7),
                }
            )
        keras.backend.clear_session(free_memory=False)
    return rows


def _launch(processes, *args, threads=None):
    env = {**os.environ, "KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={processes}", os.path.abspath(__file__), "--worker", *args]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    rows = [json.loads(line[5:]) for line in out.stdout.splitlines() if line.startswith("JSON ")]
    if out.returncode or not rows:
        raise SystemExit(out.stdout[-3000:] + out.stderr[-3000:])
    return rows[0]


def main():
    if "--worker" in sys.argv:
        role = sys.argv[sys.argv.index("--worker") + 1]
        result = allreduce() if role == "allreduce" else steps(role == "sync")
        if int(os.environ.get("RANK", "0")) == 0:
            print("JSON " + json.dumps(result), flush=True)
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _machine

    print(f"CPU: {_machine.cpu_model()}, {os.cpu_count()} cores; load {os.getloadavg()}")
    print(
        f"| processes | threads each | --sync-bn | s/step (global batch {GLOBAL_BATCH}, {SIZE}^2) |"
    )
    print("|---|---|---|---|")
    cases = ((1, "plain", None), (1, "plain", 1), (2, "plain", None), (2, "sync", None))
    for processes, role, threads in cases:
        row = _launch(processes, role, threads=threads)
        shown = threads or (1 if processes > 1 else "default")
        sync = "yes" if row["sync_bn"] else "no"
        print(f"| {processes} | {shown} | {sync} | {row['s_per_step']:.3f} |")
    print()
    print("| model | tensors | MB | all-reduce | s |")
    print("|---|---|---|---|---|")
    for row in _launch(2, "allreduce"):
        print(
            f"| {row['model']} | {row['tensors']} | {row['MB']} | {row['way']} | {row['s']:.4f} |"
        )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
