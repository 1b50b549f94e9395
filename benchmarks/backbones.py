"""DeepLabV3+ on each backbone family: parameters, 512x512 forward latency, training step.

One invocation measures every (backbone, backend) pair in its own subprocess and
prints one table, with the machine's 2048^3 float32 matmul speed and CPU flags
from the same run:

    python benchmarks/backbones.py                    # the default families, every backend
    python benchmarks/backbones.py --backbones resnet50,mobilenetv2 --backends jax
    python benchmarks/backbones.py --forward-size 64 --train-size 64 --repeats 2  # smoke

The model is `kseg.models.DeepLabV3Plus(num_classes=21, backbone=name,
output_stride=16)` (output stride 32 for the families that have no other, DenseNet
and VGG19), random weights, float32, channels_last. Forward: `predict_on_batch` of
one 512x512 image, median of `--repeats` calls after one untimed call (which
compiles; reported as "first"). Training step: `train_on_batch` of a batch of 4 at
256x256 with SGD (momentum 0.9) and `kseg.losses.SegmentationCrossEntropy`, median
of `--repeats` steps after one untimed step. JAX compiles (jit_compile=True, as the
recipes), TensorFlow runs tf.function without XLA and torch runs eagerly, as the
recipes choose on a CPU. Ratios are to the ResNet-50 row of the same backend, in the
same run.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _machine import cpu_model, has_avx512f, matmul_gflops  # noqa: E402
from train_step import time_steps  # noqa: E402

NUM_CLASSES = 21

#: The smallest member of each family, and the DeepLab v3+ paper's Xception-65.
DEFAULT_BACKBONES = (
    "resnet50",
    "mobilenetv2",
    "mobilenetv3small",
    "efficientnetb0",
    "efficientnetv2b0",
    "xception",
    "xception65",
    "densenet121",
    "convnexttiny",
    "resnet50v2",
    "vgg19",
)


def _output_stride(name):
    from kseg.backbones import applications

    if name in applications.NAMES:
        return min(s for s in applications.output_strides(name) if s >= 16)
    return 16


def _median_time(call, repeats):
    """(first call's seconds, median of `repeats` timed calls after it), as train_step.py times."""
    first, times, _ = time_steps(call, 1, repeats)
    return first, statistics.median(times)


def worker(args):
    import keras
    import numpy as np

    import kseg

    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    output_stride = _output_stride(args.backbone)
    model = kseg.models.DeepLabV3Plus(
        num_classes=NUM_CLASSES, backbone=args.backbone, output_stride=output_stride
    )
    result = {
        "backbone": args.backbone,
        "backend": backend,
        "output_stride": output_stride,
        "params": int(model.count_params()),
        "encoder_params": int(model.get_layer(args.backbone).count_params()),
    }
    size = args.forward_size
    x = keras.ops.convert_to_tensor(rng.uniform(0, 255, (1, size, size, 3)).astype("float32"))
    model.compile(jit_compile=backend == "jax")
    result["forward_first_s"], result["forward_s"] = _median_time(
        lambda: model.predict_on_batch(x), args.repeats
    )
    size = args.train_size
    x = keras.ops.convert_to_tensor(
        rng.uniform(0, 255, (args.batch, size, size, 3)).astype("float32")
    )
    y = keras.ops.convert_to_tensor(
        rng.integers(0, NUM_CLASSES, (args.batch, size, size)).astype("int32")
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=kseg.losses.SegmentationCrossEntropy(),
        jit_compile=backend == "jax",
    )
    model.optimizer.build(model.trainable_variables)
    result["train_first_s"], result["train_s"] = _median_time(
        lambda: model.train_on_batch(x, y), args.repeats
    )
    print("RESULT " + json.dumps(result), flush=True)


def measure(args, backbone, backend):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--backbone", backbone]
    cmd += ["--forward-size", str(args.forward_size), "--train-size", str(args.train_size)]
    cmd += ["--batch", str(args.batch), "--repeats", str(args.repeats)]
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            print(
                f"  {backbone} {backend}: forward {result['forward_s']:.3f} s, step "
                f"{result['train_s']:.3f} s ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    print(f"  {backbone} {backend}: failed\n    " + "\n    ".join(tail), file=sys.stderr)
    return {"backbone": backbone, "backend": backend, "error": tail[-1][:120] if tail else "?"}


def table(rows, backends, args):
    by = {(r["backbone"], r["backend"]): r for r in rows}
    names = list(dict.fromkeys(r["backbone"] for r in rows))
    header = "| backbone | OS | params (M): encoder / model |"
    for b in backends:
        header += (
            f" {b} forward {args.forward_size} (s) | {b} step b{args.batch}x{args.train_size} (s) |"
        )
    lines = [header, "|" + "---|" * (3 + 2 * len(backends))]
    for name in names:
        first = next((by[(name, b)] for b in backends if "params" in by.get((name, b), {})), None)
        cells = [name, "", ""]
        if first:
            cells[1] = str(first["output_stride"])
            cells[2] = f"{first['encoder_params'] / 1e6:.2f} / {first['params'] / 1e6:.2f}"
        for b in backends:
            r, ref = by.get((name, b), {}), by.get(("resnet50", b), {})
            for key in ("forward_s", "train_s"):
                if key not in r:
                    cells.append(r.get("error", "-"))
                    continue
                ratio = f" ({r[key] / ref[key]:.2f}x)" if key in ref else ""
                cells.append(f"{r[key]:.3f}{ratio}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=",".join(DEFAULT_BACKBONES))
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--forward-size", type=int, default=512)
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after one untimed")
    parser.add_argument("--timeout", type=int, default=1200, help="per measurement, s")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", default="resnet50", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    backends = [b for b in args.backends.split(",") if b]
    machine = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "avx512f": has_avx512f(),
        "matmul_2048_gflops_before": round(matmul_gflops(), 1),
        "load_before": os.getloadavg(),
    }
    print(f"# {json.dumps(machine)}", flush=True)
    rows = [
        measure(args, name, backend)
        for name in args.backbones.split(",")
        if name
        for backend in backends
    ]
    machine["matmul_2048_gflops_after"] = round(matmul_gflops(), 1)
    print(f"# {json.dumps(machine)}")
    print(table(rows, backends, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
