"""Peak memory and time of one DeepLabV3+ forward through kseg.inference, per backend.

    python benchmarks/inference_memory.py                        # batch 1 x 512x512
    python benchmarks/inference_memory.py --size 4x512x1024      # the issue's case
    python benchmarks/inference_memory.py --backends torch --repeats 1

The model is `kseg.models.DeepLabV3Plus(21)` (ResNet-50, output stride 16, random
weights: `backbone_weights=None`). Each measurement runs in its own subprocess
(`KERAS_BACKEND=...`): it builds the model, reads its resident set size (RSS,
`/proc/self/statm`), then runs `--warmup` + `--repeats` forwards of one random
`(B, H, W, 3)` batch through `kseg.inference.forward._run_model`, the function that every
kseg inference call (`predict`, `predict_probabilities`, `sliding_window_logits`,
`evaluate`) runs each batch through. *RSS before* is that RSS (framework, model
weights, input); *peak above it* is the process's peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) minus it, over all the forwards, so it
includes the first call's tracing or compilation on TensorFlow and
JAX. *First* is the first forward's time, *median* the median of the timed ones.
`--mmap-threshold BYTES` runs every subprocess with glibc's `MALLOC_MMAP_THRESHOLD_`
fixed (by default glibc raises the threshold to the size of each large block freed,
up to 32 MiB, and keeps later freed blocks below it in the heap, where they count in
the RSS).

Backends: TensorFlow and JAX run `model.predict_on_batch` (compiled: a traced
`tf.function`, XLA on JAX); torch runs `kseg.inference.lean_call` (the runner
that frees each intermediate tensor after its last use), and again with the
runner off (`predict_on_batch`, Keras' functional call, which holds every
intermediate tensor until it returns). The machine's GEMM ceiling (a 2048^3
float32 NumPy matmul, best of 3, GFLOP/s, at the start and the end of the run)
and whether the CPU has AVX-512F are printed with the table.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
from _machine import has_avx512f, matmul_gflops

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: (backend, runner) rows in table order; runner None: the backend's only path.
ROWS = (("tensorflow", None), ("jax", None), ("torch", "on"), ("torch", "off"))


def current_rss_bytes():
    """The process's resident set size now (Linux `/proc/self/statm`)."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def measure(batch, height, width, runner, warmup, repeats):
    """One subprocess's measurement (`KERAS_BACKEND` already set); returns a dict."""
    sys.path.insert(0, ROOT)
    import keras

    import kseg
    from kseg.inference import forward

    if runner == "off":
        forward._runs_lean = lambda model: False
    model = kseg.models.DeepLabV3Plus(21)
    x = np.random.default_rng(0).uniform(0, 255, (batch, height, width, 3)).astype(np.float32)
    lean = forward._runs_lean(model)
    before = current_rss_bytes()
    times = []
    for _ in range(warmup + repeats):
        start = time.perf_counter()
        logits = forward._run_model(model, x, "main", "channels_last")
        times.append(time.perf_counter() - start)
        del logits
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    timed = times[warmup:] or times
    return {
        "backend": keras.backend.backend(),
        "lean": lean,
        "rss_before_mb": before / 1e6,
        "peak_above_mb": (peak - before) / 1e6,
        "first_s": times[0],
        "median_s": statistics.median(timed),
        "timed": len(timed),
    }


def run_child(backend, runner, args):
    """Runs `measure` in a fresh process with `KERAS_BACKEND=backend`; a dict or an error."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--size",
        args.size,
        "--warmup",
        str(args.warmup),
        "--repeats",
        str(args.repeats),
        "--runner",
        runner or "on",
    ]
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    if args.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {done.returncode}: {' / '.join(tail)}"}


def parse_size(text):
    try:
        values = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected BATCHxHEIGHTxWIDTH such as 1x512x512; received {text!r}"
        )
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        type=parse_size,
        default="1x512x512",
        help="BATCHxHEIGHTxWIDTH; default: 1x512x512",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards; default: 1")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards; default: 3")
    parser.add_argument(
        "--backends",
        default="tensorflow,jax,torch",
        help="comma-separated backends; default: tensorflow,jax,torch",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds per subprocess; default: 1800"
    )
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=None,
        help="run every subprocess with glibc's MALLOC_MMAP_THRESHOLD_=BYTES (a fixed "
        "threshold: freed blocks above it go back to the system); default: glibc's own",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runner", choices=("on", "off"), default="on", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.repeats < 1:
        parser.error(
            f"expected --warmup >= 0 and --repeats >= 1; received {args.warmup} and {args.repeats}"
        )
    if args.mmap_threshold is not None and args.mmap_threshold < 0:
        parser.error(f"expected --mmap-threshold >= 0; received {args.mmap_threshold}")
    batch, height, width = (int(v) for v in args.size.lower().split("x"))
    if args.child:
        print(json.dumps(measure(batch, height, width, args.runner, args.warmup, args.repeats)))
        return
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - {"tensorflow", "jax", "torch"})
    if unknown:
        parser.error(f"expected backends among tensorflow, jax, torch; received {unknown}")

    gflops_start = matmul_gflops()
    results = []
    for backend, runner in ROWS:
        if backend in backends:
            results.append((backend, runner, run_child(backend, runner, args)))
    gflops_end = matmul_gflops()

    avx = {True: "yes", False: "no", None: "unknown"}[has_avx512f()]
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    malloc = (
        "glibc's default malloc thresholds"
        if args.mmap_threshold is None
        else f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}"
    )
    print(
        f"DeepLabV3Plus(21), ResNet-50, batch {batch} x {height}x{width}, float32; "
        f"{args.warmup} warm-up + {args.repeats} timed forwards; matmul 2048^3 fp32 "
        f"{gflops_start:.0f} GFLOP/s at the start, {gflops_end:.0f} at the end; "
        f"avx512f {avx}; {os.cpu_count()} CPUs; load average {load} (1/5/15 min) at the end; "
        f"{malloc}"
    )
    print()
    tf_peak = next(
        (r["peak_above_mb"] for b, _, r in results if b == "tensorflow" and "error" not in r),
        None,
    )
    print(
        "| backend | path | first forward (s) | median forward (s) | RSS before (MB) "
        "| peak above it (MB) | peak / TensorFlow's |"
    )
    print("|---|---|---|---|---|---|---|")
    for backend, runner, result in results:
        if "error" in result:
            print(f"| {backend} | {runner or ''} | {result['error']} | | | | |")
            continue
        if backend == "torch":
            path = "lean_call" if result["lean"] else "predict_on_batch (runner off)"
        else:
            path = "predict_on_batch (compiled)"
        ratio = "" if tf_peak is None else f"{result['peak_above_mb'] / tf_peak:.2f}x"
        print(
            f"| {backend} | {path} | {result['first_s']:.2f} | {result['median_s']:.2f} "
            f"| {result['rss_before_mb']:.0f} | {result['peak_above_mb']:.0f} | {ratio} |"
        )


if __name__ == "__main__":
    main()
