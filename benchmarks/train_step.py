"""Median training-step time and peak memory of kseg models per Keras backend, beside a peer.

One invocation runs every measurement in its own subprocess (so that each has a
fresh process, one backend, and its own peak-memory figure) and prints one table:

    python benchmarks/train_step.py                       # DeepLabV3+ on every backend + peer
    python benchmarks/train_step.py --zoo                 # + every other builder, fastest backend
    python benchmarks/train_step.py --zoo --zoo-backend all --comparison "" --no-peer  # zoo only
    python benchmarks/train_step.py --profile             # + where the DeepLabV3+ step goes
    python benchmarks/train_step.py --batch 1 --size 64 --steps 2 --warmup 1   # smoke run
    python benchmarks/train_step.py --pairs all           # PAIRS: kseg beside its smp peer

A step is `model.train_on_batch(x, y)` after `model.compile(optimizer=SGD(0.01,
momentum=0.9), loss=kseg.losses.SegmentationCrossEntropy())`, on random images in
[0, 255] and random labels, float32, with the batch already converted to backend
tensors. The reported time is the median over `--steps` timed steps after `--warmup`
untimed ones (the first of which includes tracing/compilation, reported separately).
Peak memory is `ru_maxrss` of the measuring subprocess: the largest resident set the
whole process ever had (framework, weights, optimizer state, activations, compiler).

The peer, segmentation_models_pytorch's `DeepLabV3Plus("resnet50",
encoder_output_stride=16, encoder_weights=None)`, is timed with a plain PyTorch loop
(`benchmarks/_peer_smp.py`) in the interpreter given by `--peer-python` (default: this
one). When segmentation_models_pytorch cannot be imported there, the table says
"peer not installed" and the kseg rows are still measured.
"""

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NUM_CLASSES = 21

# name -> (builder, extra kwargs). The first two are the DeepLabV3+ comparison.
MODELS = {
    "DeepLabV3Plus": ("DeepLabV3Plus", {}),
    "DeepLabV3Plus-separable": ("DeepLabV3Plus", {"separable": True}),
    "DeepLabV3": ("DeepLabV3", {}),
    "DeepLabV2": ("DeepLabV2", {}),
    "DeepLabV1": ("DeepLabV1", {}),
    "PSPNet": ("PSPNet", {}),
    "GCUNet": ("GCUNet", {}),
    "GloReNet": ("GloReNet", {}),
    "GINet": ("GINet", {}),
    "FCN32s": ("FCN32s", {}),
    "FCN16s": ("FCN16s", {}),
    "FCN8s": ("FCN8s", {}),
    "UNet": ("UNet", {}),
    "SegNet": ("SegNet", {}),
}
COMPARISON = ["DeepLabV3Plus", "DeepLabV3Plus-separable"]

# Models in smp's exact layout, built by `kseg.convert.smp` (the layout `from_smp` gives
# an smp checkpoint of that class), on smp's default ResNet-34 (`ENCODERS`).
SMP_LAYOUTS = {
    "Unet-r34": ("Unet", "resnet34"),
    "FPN-r34": ("FPN", "resnet34"),
    "Linknet-r34": ("Linknet", "resnet34"),
    "UnetPlusPlus-r34": ("UnetPlusPlus", "resnet34"),
    "UPerNet-r34": ("UPerNet", "resnet34"),
}
MODELS.update(
    {
        "SegFormer-B0": ("SegFormer", {"backbone": "mit_b0"}),
        "SegFormer-B2": ("SegFormer", {"backbone": "mit_b2"}),
    }
)

# `--pairs`: kseg model -> (smp class, encoder, smp keyword arguments, kseg backends). The
# kseg model and the peer have the same layout except where the README's table says
# "sized" (PSPNet: smp's PSPNet is not dilated and stops at stride 8, so the peer is smp's
# DeepLabV3 on the same dilated ResNet-50 at output stride 8).
PAIRS = {
    "DeepLabV3Plus-separable": (
        "DeepLabV3Plus",
        "resnet50",
        {"encoder_output_stride": 16},
        "torch",
    ),
    "PSPNet": ("DeepLabV3", "resnet50", {"encoder_output_stride": 8}, "torch"),
    "Unet-r34": ("Unet", "resnet34", {}, "torch"),
    "SegFormer-B0": ("Segformer", "mit_b0", {}, "torch"),
    "SegFormer-B2": ("Segformer", "mit_b2", {}, "torch"),
    "FPN-r34": ("FPN", "resnet34", {}, "all"),
    "Linknet-r34": ("Linknet", "resnet34", {}, "all"),
    "UnetPlusPlus-r34": ("UnetPlusPlus", "resnet34", {}, "all"),
    "UPerNet-r34": ("UPerNet", "resnet34", {}, "all"),
}

# (backend, jit_compile, image data format): what a user gets by default on a CPU
# (JAX: XLA; TensorFlow: Keras' "auto" is plain tf.function on a CPU-only machine;
# torch: eager), plus TensorFlow with XLA and torch with channels_first tensors.
CONFIGS = [
    ("jax", True, "channels_last"),
    ("tensorflow", False, "channels_last"),
    ("tensorflow", True, "channels_last"),
    ("torch", False, "channels_last"),
    ("torch", False, "channels_first"),
]
BACKENDS = tuple(dict.fromkeys(c[0] for c in CONFIGS))


def peak_rss_mb():
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_steps(step, warmup, steps, budget=None):
    """Runs `step` warmup + steps times.

    With a `budget` in seconds, fewer timed steps (at least 2) are run when the last
    warm-up step says that `steps` of them would take longer than the budget.
    Returns (first-call seconds, timed wall seconds, timed process-CPU seconds); the
    CPU time adds up every thread of the process, so it can exceed the wall time.
    """
    first = last = None
    for i in range(warmup):
        t0 = time.perf_counter()
        step()
        last = time.perf_counter() - t0
        if i == 0:
            first = last
    if budget and last and warmup > 1 and steps * last > budget:
        steps = max(2, int(budget / last))
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return first, times, cpu


def summarize(times, cpu, batch):
    median = statistics.median(times)
    return {
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "cpu_s": statistics.median(cpu),
        "images_per_s": batch / median,
        "steps": len(times),
    }


# ----------------------------------------------------------------------------- worker


def _build(model_key, size, data_format):
    import kseg

    shape = (size, size, 3) if data_format == "channels_last" else (3, size, size)
    if model_key in SMP_LAYOUTS:
        from kseg.convert import smp

        arch, encoder = SMP_LAYOUTS[model_key]
        architecture = smp.ARCHITECTURES[arch]
        return architecture.build(
            dict(architecture.options), NUM_CLASSES, smp.ENCODERS[encoder], shape, "torch",
            model_key.lower().replace("-", "_"),
        )  # fmt: skip
    builder, kwargs = MODELS[model_key]
    return getattr(kseg.models, builder)(num_classes=NUM_CLASSES, input_shape=shape, **kwargs)


def _loss():
    import keras

    try:
        import kseg

        return kseg.losses.SegmentationCrossEntropy()
    except AttributeError:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _submodel(model, part):
    """The DeepLabV3+ model cut after `part`, with a cheap head so it trains."""
    import keras

    if part == "backbone":
        feature = model.get_layer("aspp").input
    elif part == "aspp":
        feature = model.get_layer("aspp").output
    else:
        raise ValueError(f"Unknown part. Received: part={part}")
    pooled = keras.layers.GlobalAveragePooling2D(name="bench_pool")(feature)
    logits = keras.layers.Dense(NUM_CLASSES, name="bench_head")(pooled)
    return keras.Model(model.inputs, logits, name=f"{model.name}_{part}")


def run_kseg_worker(args):
    """Measures one (model, backend, jit_compile, data format) in this process."""
    import keras
    import numpy as np

    keras.config.set_image_data_format(args.data_format)
    if args.keras_bn:
        # The "before" rows: every BatchNormalization keeps Keras' own computation.
        import kseg._backend

        kseg._backend.use_fused_batch_norm = lambda model: 0
    if args.keras_conv:
        # ... and every convolution Keras' own layout copies.
        import kseg._backend

        kseg._backend.use_direct_conv = lambda model: 0
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    model = _build(args.model, args.size, args.data_format)
    if args.part != "full":
        model = _submodel(model, args.part)
    build_s = time.perf_counter() - t0

    shape = (args.batch, args.size, args.size, 3)
    if args.data_format == "channels_first":
        shape = (args.batch, 3, args.size, args.size)
    x = keras.ops.convert_to_tensor(rng.uniform(0, 255, shape).astype("float32"))
    outputs = model.output
    if args.part != "full":
        y = rng.integers(0, NUM_CLASSES, (args.batch,)).astype("int32")
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        y = keras.ops.convert_to_tensor(y)
    else:
        y = keras.ops.convert_to_tensor(
            rng.integers(0, NUM_CLASSES, (args.batch, args.size, args.size)).astype("int32")
        )
        loss = _loss()
        if isinstance(outputs, dict):
            # Extra outputs (auxiliary logits, GINet class nodes) are not trained here:
            # only the main logits carry a loss.
            loss = {"main": loss}
            y = {"main": y}
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss=loss,
        jit_compile=args.jit,
    )

    def step():
        model.train_on_batch(x, y)

    first, times, cpu = time_steps(step, args.warmup, args.steps, args.budget)
    result = summarize(times, cpu, args.batch)
    result.update(
        {
            "model": args.model if args.part == "full" else f"{args.model}[{args.part}]",
            "backend": keras.backend.backend(),
            "jit_compile": bool(args.jit),
            "data_format": args.data_format,
            "params": int(model.count_params()),
            "keras_bn": bool(args.keras_bn),
            "keras_conv": bool(args.keras_conv),
            "build_s": build_s,
            "first_step_s": first,
            "peak_rss_mb": peak_rss_mb(),
        }
    )
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- driver


def _parse_result(stdout):
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return None


def _run(cmd, env, label, timeout):
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        print(f"  {label}: timed out after {timeout} s", file=sys.stderr, flush=True)
        return {"error": f"timed out after {timeout} s"}
    result = _parse_result(proc.stdout)
    if result is None:
        text = re.sub(r"\x1b\[[0-9;]*m", "", proc.stderr or proc.stdout or "")
        tail = text.strip().splitlines()[-8:]
        errors = [line for line in text.splitlines() if re.match(r"^\w*(Error|Exception)\b", line)]
        message = (errors[-1] if errors else f"exit code {proc.returncode}")[:120]
        print(f"  {label}: failed:\n    " + "\n    ".join(tail), file=sys.stderr, flush=True)
        return {"error": message}
    print(
        f"  {label}: {result.get('median_s', float('nan')):.3f} s/step "
        f"(first {result.get('first_step_s') or 0:.1f} s, total {time.perf_counter() - t0:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    return result


def _common_flags(args):
    return [
        "--batch", str(args.batch),
        "--size", str(args.size),
        "--steps", str(args.steps),
        "--warmup", str(args.warmup),
        "--budget", str(args.budget),
    ]  # fmt: skip


def measure_kseg(
    args, model, backend, jit, data_format, part="full", size=None, batch=None, keras_layers=False
):
    sub = argparse.Namespace(**vars(args))
    sub.size = size or args.size
    sub.batch = batch or args.batch
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", model]
    cmd += ["--data-format", data_format, "--part", part]
    cmd += _common_flags(sub) + (["--jit"] if jit else [])
    cmd += ["--keras-bn", "--keras-conv"] if keras_layers else []
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=ROOT)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    label = f"{model}[{part}] {backend} jit={jit} {data_format} b{sub.batch} {sub.size}px"
    label += " keras-layers" if keras_layers else ""
    result = _run(cmd, env, label, args.timeout)
    result["keras_layers"] = keras_layers
    result.setdefault("model", model if part == "full" else f"{model}[{part}]")
    result.update(
        {"backend": backend, "jit_compile": jit, "data_format": data_format}
        if "error" in result
        else {}
    )
    result["batch"], result["size"] = sub.batch, sub.size
    return result


def measure_peer(args, arch="DeepLabV3Plus", encoder="resnet50", kwargs=None):
    python = args.peer_python or sys.executable
    cmd = [python, os.path.join(HERE, "_peer_smp.py")] + _common_flags(args)
    cmd += ["--num-classes", str(NUM_CLASSES), "--arch", arch, "--encoder", encoder]
    if kwargs is not None:
        cmd += ["--kwargs", json.dumps(kwargs)]
    result = _run(cmd, dict(os.environ), f"peer smp {arch} {encoder} torch", args.timeout)
    if result.get("error", "").startswith("peer not installed") or "not installed" in str(
        result.get("error", "")
    ):
        result = {"error": "peer not installed"}
    result.setdefault("model", f"smp.{arch}")
    result.setdefault("backend", "torch (peer)")
    result.setdefault("jit_compile", False)
    result.setdefault("data_format", "channels_first")
    result["batch"], result["size"] = args.batch, args.size
    return result


def format_table(rows):
    header = (
        "| model | backend | jit_compile | layout | batch x size | params (M) | "
        "median s/step | min s/step | CPU s/step | steps | images/s | first step (s) | "
        "peak RSS (MB) |"
    )
    lines = [header, "|" + "---|" * 13]
    for r in rows:
        layout = "NHWC" if r.get("data_format") == "channels_last" else "NCHW"
        size = f"{r['batch']} x {r['size']}"
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['backend']} | {r['jit_compile']} | {layout} | {size} | "
                f"{r['error']} | | | | | | | |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['jit_compile']} | {layout} | {size} | "
            f"{r['params'] / 1e6:.1f} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['cpu_s']:.3f} | "
            f"{r['steps']} | "
            f"{r['images_per_s']:.2f} | "
            f"{r['first_step_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def versions(peer_python):
    out = {"python": platform.python_version(), "machine": platform.machine()}
    code = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        "for p in ('keras', 'jax', 'jaxlib', 'tensorflow', 'torch', 'numpy',\n"
        "          'segmentation-models-pytorch', 'torchvision', 'timm'):\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    for who, python in (("kseg", sys.executable), ("peer", peer_python or sys.executable)):
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
        try:
            out[who] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            out[who] = {}
    out["cpus"] = os.cpu_count()
    out["load_before"] = os.getloadavg()
    return out


def format_pairs(rows):
    lines = [
        "| model | run | params (M) | median s/step | CPU s/step | peak RSS (MB) | "
        "time / smp | RSS / smp |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, group in rows:
        peer = group.get("smp")
        for label, r in group.items():
            if "error" in r:
                lines.append(f"| {name} | {label} | {r['error']} | | | | | |")
                continue
            ratio = rss = ""
            if peer and "error" not in peer and label != "smp":
                ratio = f"{r['median_s'] / peer['median_s']:.2f}x"
                rss = f"{r['peak_rss_mb'] / peer['peak_rss_mb']:.2f}x"
            lines.append(
                f"| {name} | {label} | {r['params'] / 1e6:.1f} | {r['median_s']:.3f} | "
                f"{r['cpu_s']:.3f} | {r['peak_rss_mb']:.0f} | {ratio} | {rss} |"
            )
    return "\n".join(lines)


def run_pairs(args):
    """Each kseg model of `PAIRS` beside its smp peer, in one run, with the GEMM ceiling."""
    from _machine import cpu_model, has_avx512f, matmul_gflops

    info = versions(args.peer_python)
    info["cpu"] = cpu_model()
    info["avx512f"] = has_avx512f()
    info["matmul_gflops_start"] = matmul_gflops()
    print(f"# {json.dumps(info)}", flush=True)
    names = list(PAIRS) if args.pairs == "all" else [n.strip() for n in args.pairs.split(",")]
    rows = []
    for name in names:
        arch, encoder, kwargs, backends = PAIRS[name]
        group = {"smp": measure_peer(args, arch, encoder, kwargs)}
        if not args.no_before:
            group["torch, Keras' layers (before)"] = measure_kseg(
                args, name, "torch", False, "channels_last", keras_layers=True
            )
        group["torch"] = measure_kseg(args, name, "torch", False, "channels_last")
        if backends == "all":
            group["jax"] = measure_kseg(args, name, "jax", True, "channels_last")
            group["tensorflow"] = measure_kseg(args, name, "tensorflow", False, "channels_last")
        rows.append((name, group))
    info["matmul_gflops_end"] = matmul_gflops()
    info["load_after"] = os.getloadavg()
    print(f"# {json.dumps({k: info[k] for k in ('matmul_gflops_end', 'load_after')})}")
    print(format_pairs(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument(
        "--budget",
        type=float,
        default=300.0,
        help="timed seconds per measurement: fewer timed steps (at least 2) beyond it",
    )
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--no-xla", action="store_true", help="skip TensorFlow with XLA")
    parser.add_argument("--no-nchw", action="store_true", help="skip torch channels_first")
    parser.add_argument("--peer-python", default=os.environ.get("KSEG_BENCH_PEER_PYTHON"))
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--zoo", action="store_true", help="also every other builder")
    parser.add_argument("--zoo-models", default=",".join(m for m in MODELS if m not in COMPARISON))
    parser.add_argument(
        "--zoo-backend",
        default=None,
        help="backend(s) of the zoo rows, comma-separated or 'all' (default: fastest in this run)",
    )
    parser.add_argument("--profile", action="store_true", help="time DeepLabV3+ parts")
    parser.add_argument(
        "--comparison",
        default=",".join(COMPARISON),
        help="DeepLabV3+ variants timed on every backend ('' for none)",
    )
    parser.add_argument("--timeout", type=int, default=1800, help="per measurement, s")
    parser.add_argument("--json", default=None, help="also write all results here")
    # Worker-only flags.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="DeepLabV3Plus", help=argparse.SUPPRESS)
    parser.add_argument("--jit", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-format", default="channels_last", help=argparse.SUPPRESS)
    parser.add_argument("--part", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--keras-bn", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-before", action="store_true", help="--pairs without the torch rows on Keras' layers"
    )
    parser.add_argument("--keras-conv", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--pairs",
        default=None,
        help="measure these PAIRS ('all' or comma-separated names) against their smp peers, "
        "with torch rows before (Keras' BatchNorm and Conv2D calls) and after (kseg's torch "
        "paths), and nothing else",
    )
    args = parser.parse_args(argv)

    if args.worker:
        run_kseg_worker(args)
        return 0
    if args.pairs:
        return run_pairs(args)

    info = versions(args.peer_python)
    print(f"# {json.dumps(info)}", flush=True)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    configs = [
        c
        for c in CONFIGS
        if c[0] in backends
        and not (args.no_xla and c[0] == "tensorflow" and c[1])
        and not (args.no_nchw and c[2] == "channels_first")
    ]
    rows = []
    if not args.no_peer:
        rows.append(measure_peer(args))
    for model in [m.strip() for m in args.comparison.split(",") if m.strip()]:
        for backend, jit, data_format in configs:
            rows.append(measure_kseg(args, model, backend, jit, data_format))

    timed = [r for r in rows if r["model"] == "DeepLabV3Plus" and "error" not in r]
    fastest = min(timed, key=lambda r: r["median_s"]) if timed else None
    if fastest is not None:
        print(
            f"# fastest kseg DeepLabV3Plus: {fastest['backend']} jit={fastest['jit_compile']} "
            f"{fastest['data_format']}",
            flush=True,
        )
    target_cfg = None
    if fastest is not None:
        target_cfg = (fastest["backend"], fastest["jit_compile"], fastest["data_format"])
    zoo_cfgs = [target_cfg] if target_cfg else []
    if args.zoo_backend:
        # The default configuration of each named backend (the first listed in CONFIGS).
        names = BACKENDS if args.zoo_backend == "all" else args.zoo_backend.split(",")
        zoo_cfgs = [next(c for c in CONFIGS if c[0] == b.strip()) for b in names]

    if args.profile and target_cfg:
        for model in [m.strip() for m in args.comparison.split(",") if m.strip()] or COMPARISON:
            for part in ("backbone", "aspp"):
                rows.append(measure_kseg(args, model, *target_cfg, part=part))
    if args.zoo:
        for cfg in zoo_cfgs:
            for model in [m.strip() for m in args.zoo_models.split(",") if m.strip()]:
                rows.append(measure_kseg(args, model, *cfg))

    if not args.no_peer:
        # Timed again at the end, to show how the load drifted during the run; the
        # comparison uses the faster of the two peer measurements.
        rows.append(measure_peer(args))
    info["load_after"] = os.getloadavg()
    print(f"# load average after: {info['load_after']}")
    print(format_table(rows))
    peers = [r for r in rows if r["model"] == "smp.DeepLabV3Plus" and "error" not in r]
    peer = min(peers, key=lambda r: r["median_s"]) if peers else None
    for name in COMPARISON:
        best = [r for r in rows if r["model"] == name and "error" not in r]
        if best and peer is not None:
            b = min(best, key=lambda r: r["median_s"])
            print(
                f"# {name} fastest ({b['backend']} jit={b['jit_compile']} {b['data_format']}): "
                f"{b['median_s']:.3f} s/step = {b['median_s'] / peer['median_s']:.2f}x the peer "
                f"({peer['median_s']:.3f} s/step)"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
