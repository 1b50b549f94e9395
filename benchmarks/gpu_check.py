"""Training step and peak device memory on a GPU, per backend and precision, beside smp.

    bash benchmarks/gpu_check.sh OUT_DIR        # the whole GPU check (this + the op tests)
    python benchmarks/gpu_check.py --out DIR    # the timings alone
    python benchmarks/gpu_check.py --out DIR --allow-cpu --batch 2 --size 64 --steps 2
                                                # a dry run of the script on a CPU

What it measures: one `model.train_on_batch(x, y)` of kseg's separable DeepLabV3+
(`kseg.models.DeepLabV3Plus(num_classes=21, separable=True)`, ResNet-50 at output
stride 16, the layout of segmentation_models_pytorch's `DeepLabV3Plus`) compiled with
`SGD(0.01, momentum=0.9)` and `kseg.losses.SegmentationCrossEntropy()`, on each
backend the GPU's image has (torch, JAX; TensorFlow where installed), at three
precisions:

- float32: the default policy;
- bfloat16: `keras.config.set_dtype_policy("mixed_bfloat16")`;
- float16: `"mixed_float16"`, for which `compile` wraps the optimizer in Keras'
  `LossScaleOptimizer` (dynamic loss scaling).

The peer is smp's `DeepLabV3Plus("resnet50", encoder_output_stride=16,
encoder_weights=None, classes=21)` in a plain PyTorch loop, float32, or under
`torch.autocast` with bfloat16, or float16 with `torch.amp.GradScaler`: PyTorch's
own mixed precision. Batch and size default to 8 x 512 x 512 (a GPU-sized step);
the median over `--steps` timed steps follows `--warmup` untimed ones (the first,
with compilation, is reported apart). Each measurement runs in its own process, so
its peak device memory is its own: `torch.cuda.max_memory_allocated()` on torch,
the device's `peak_bytes_in_use` on JAX, TensorFlow's `get_memory_info()["peak"]`.
Every step ends with the loss read back to the host (`train_on_batch` returns it;
the peer calls `loss.item()`), so each timed step includes the whole device work.

Writes `gpu_check.jsonl` (one result per line) and `gpu_check.md` (the table and the
machine) to `--out`, and prints the table.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from train_step import summarize, time_steps  # noqa: E402

NUM_CLASSES = 21
PRECISIONS = ("float32", "bfloat16", "float16")
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


class NoGPU(RuntimeError):
    pass


# ----------------------------------------------------------------------------- workers


def _device_memory_peak(backend):
    """Peak bytes the framework held on the first GPU, or None where it cannot tell."""
    if backend == "torch":
        import torch

        return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    if backend == "jax":
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return tf.config.experimental.get_memory_info(gpus[0].name)["peak"] if gpus else None
    return None


def _device_name(backend, allow_cpu):
    """The GPU this backend computes on; raises `NoGPU` when it has none."""
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    elif backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "gpu":
            return device.device_kind
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    if allow_cpu:
        return "cpu (dry run)"
    raise NoGPU(f"the {backend} backend sees no GPU")


def run_kseg(args):
    import keras
    import numpy as np

    import kseg

    backend = keras.backend.backend()
    device = _device_name(backend, args.allow_cpu)
    keras.config.set_dtype_policy(POLICIES[args.precision])
    rng = np.random.default_rng(0)
    model = kseg.models.DeepLabV3Plus(
        num_classes=NUM_CLASSES, input_shape=(args.size, args.size, 3), separable=True
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss=kseg.losses.SegmentationCrossEntropy(),
    )
    x = keras.ops.convert_to_tensor(
        rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype("float32")
    )
    y = keras.ops.convert_to_tensor(
        rng.integers(0, NUM_CLASSES, (args.batch, args.size, args.size)).astype("int32")
    )
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    first, times, cpu = time_steps(
        lambda: model.train_on_batch(x, y), args.warmup, args.steps, args.budget
    )
    return {
        "model": "kseg DeepLabV3Plus(separable=True)",
        "backend": backend,
        "optimizer": type(model.optimizer).__name__,
        "device": device,
        "params": int(model.count_params()),
        "first_step_s": first,
        "peak_device_mb": _mb(_device_memory_peak(backend)),
        **summarize(times, cpu, args.batch),
    }


def run_smp(args):
    import torch

    from kseg.convert._torch_references import import_torch_reference

    try:
        smp = import_torch_reference("segmentation_models_pytorch")
    except Exception as e:  # noqa: BLE001 - any import failure means "not installed"
        return {"error": f"segmentation_models_pytorch not importable ({type(e).__name__})"}

    if torch.cuda.is_available():
        device = torch.device("cuda")
        name = torch.cuda.get_device_name(0)
    elif args.allow_cpu:
        device, name = torch.device("cpu"), "cpu (dry run)"
    else:
        raise NoGPU("torch sees no GPU")
    torch.manual_seed(0)
    model = smp.DeepLabV3Plus(
        "resnet50", encoder_output_stride=16, encoder_weights=None, classes=NUM_CLASSES
    ).to(device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device) * 255.0
    y = torch.randint(0, NUM_CLASSES, (args.batch, args.size, args.size), device=device)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(device.type) if args.precision == "float16" else None

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return loss.item()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    first, times, cpu = time_steps(step, args.warmup, args.steps, args.budget)
    return {
        "model": "smp DeepLabV3Plus (peer)",
        "backend": f"torch {torch.__version__}",
        "optimizer": "SGD" + (" + GradScaler" if scaler is not None else ""),
        "device": name,
        "params": sum(p.numel() for p in model.parameters()),
        "first_step_s": first,
        "peak_device_mb": _mb(_device_memory_peak("torch") if device.type == "cuda" else None),
        **summarize(times, cpu, args.batch),
    }


def _mb(value):
    return None if value is None else value / 2**20


def worker(args):
    try:
        result = run_smp(args) if args.worker == "smp" else run_kseg(args)
    except NoGPU as e:
        result = {"error": str(e)}
    result.update({"precision": args.precision, "batch": args.batch, "size": args.size})
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- driver


def _installed(module):
    return importlib.util.find_spec(module) is not None


def measure(args, who, backend, precision):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", who, "--precision", precision]
    cmd += ["--batch", str(args.batch), "--size", str(args.size), "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup), "--budget", str(args.budget)]
    cmd += ["--allow-cpu"] if args.allow_cpu else []
    env = dict(os.environ, KERAS_BACKEND=backend)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    label = f"{who} {backend} {precision}"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if lines:
            result = json.loads(lines[-1][len("RESULT ") :])
        else:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
            result = {"error": " | ".join(tail)[-300:] or f"exit code {proc.returncode}"}
    except subprocess.TimeoutExpired:
        result = {"error": f"timed out after {args.timeout} s"}
    result.setdefault("model", who)
    result.setdefault("backend", backend)
    result.update({"precision": precision, "wall_s": time.perf_counter() - t0})
    shown = result.get("error") or f"{result['median_s'] * 1000:.1f} ms/step"
    print(f"  {label}: {shown} ({result['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    return result


def table(rows):
    head = (
        "| model | backend | precision | optimizer | median ms/step | images/s | "
        "peak device MiB | first step (s) | ratio to peer (time) | ratio to peer (memory) |"
    )
    lines = [head, "|" + "---|" * 10]
    peers = {r["precision"]: r for r in rows if "peer" in r["model"] and "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['backend']} | {r['precision']} | error: "
                         f"{r['error'][:160]} | | | | | | |")  # fmt: skip
            continue
        peer = peers.get(r["precision"])
        time_ratio = memory_ratio = ""
        if peer is not None and "peer" not in r["model"]:
            time_ratio = f"{r['median_s'] / peer['median_s']:.2f}x"
            if r.get("peak_device_mb") and peer.get("peak_device_mb"):
                memory_ratio = f"{r['peak_device_mb'] / peer['peak_device_mb']:.2f}x"
        memory = f"{r['peak_device_mb']:.0f}" if r.get("peak_device_mb") else "n/a"
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['precision']} | {r.get('optimizer', '')} | "
            f"{r['median_s'] * 1000:.1f} | {r['images_per_s']:.1f} | {memory} | "
            f"{r['first_step_s']:.1f} | {time_ratio} | {memory_ratio} |"
        )
    return "\n".join(lines)


def machine(args):
    lines = [f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        lines.append(f"GPU: {smi.stdout.strip() or smi.stderr.strip()}")
    except (OSError, subprocess.TimeoutExpired) as e:
        lines.append(f"GPU: nvidia-smi unavailable ({type(e).__name__})")
    lines.append(
        f"host: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    versions = []
    for package in ("keras", "torch", "jax", "tensorflow", "segmentation-models-pytorch"):
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    lines.append("versions: " + ", ".join(versions))
    lines.append(
        f"batch {args.batch} x {args.size} x {args.size}, median of {args.steps} steps after "
        f"{args.warmup} warm-up steps"
    )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "gpu"))
    parser.add_argument("--backends", default="torch,jax,tensorflow")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timed steps")
    parser.add_argument("--timeout", type=int, default=150, help="seconds per measurement")
    parser.add_argument("--allow-cpu", action="store_true", help="a dry run without a GPU")
    parser.add_argument("--worker", choices=("kseg", "smp"), help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    precisions = [p for p in args.precisions.split(",") if p]
    for p in precisions:
        if p not in PRECISIONS:
            parser.error(f"--precisions: unknown precision {p!r}; choose from {PRECISIONS}")
    backends = [b for b in args.backends.split(",") if b]
    missing = [b for b in backends if not _installed(b)]
    backends = [b for b in backends if b not in missing]
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for precision in precisions:
        rows.append(measure(args, "smp", "torch", precision))
        for backend in backends:
            rows.append(measure(args, "kseg", backend, precision))
    text = f"{machine(args)}\nnot installed: {', '.join(missing) or 'none'}\n\n{table(rows)}\n"
    with open(os.path.join(args.out, "gpu_check.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
