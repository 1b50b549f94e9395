"""Single-image inference latency: ONNX under onnxruntime, Keras on each backend, torchvision.

    python benchmarks/inference_latency.py                          # 1 x 512x512, the record
    python benchmarks/inference_latency.py --size 64 64 --repeats 2 --warmup 1   # smoke run
    python benchmarks/inference_latency.py --models deeplabv3plus --backends tensorflow,onnxruntime

Models (random weights, nothing downloads):

- `deeplabv3plus`: `kseg.models.DeepLabV3Plus(21)` (ResNet-50, output stride 16,
  `backbone_weights=None`).
- `deeplabv3`: kseg's DeepLab v3 in torchvision's layout, the closest match to the
  peer: `kseg.models.DeepLabV3` on a v1.5 ResNet-50 at output stride 8, no
  multi-grid, ASPP rates (12, 24, 36), a 3x3 ConvBNReLU of 256 before the
  classifier, as `kseg.convert.from_torchvision("deeplabv3_resnet50", ...)` builds
  it, holding the peer's own (random) weights. `kseg.models.DeepLabV3(21)` with its
  defaults runs at output stride 16 and does about a quarter of the peer's work in
  the last two stages, so it would not be a like-for-like comparison.

The peer: torchvision's `deeplabv3_resnet50(weights=None, weights_backbone=None,
aux_loss=False, num_classes=21)`, eager, in `torch.inference_mode()`, NCHW, the
input already normalised (kseg's models take RGB in [0, 255] and normalise inside).
It runs at the start and again at the end of the run; ratios are to the start.

Every measurement runs in its own subprocess. A first one (`KERAS_BACKEND=tensorflow`)
builds each model once, saves its weights (`.weights.h5`), exports its logits to ONNX
twice with `kseg.export.export_model(..., format="onnx")`: for any height and width
(what `recipes/export.py` writes by default) and for the benchmark's size (`size=(H,
W)`, `--size H W` there), and computes the reference logits on the image. Then, for
each model: TensorFlow, JAX and torch (`KERAS_BACKEND=...`: the model rebuilt and
the saved weights loaded) and onnxruntime on each export (CPUExecutionProvider,
default session options, then `intra_op_num_threads` = the number of CPUs).

The two exports are different graphs. With free height and width, tf2onnx cannot
turn TensorFlow's atrous convolutions (`SpaceToBatchND`, convolution,
`BatchToSpaceND`, with paddings computed from the input's shape) back into dilated
ONNX `Conv`s, nor fold the BatchNorm multiply-adds into them: the DeepLabV3+ graph
has about 840 nodes (SpaceToDepth / DepthToSpace, Pad, Slice, Concat, Cast, ...).
At a fixed size it is about 160 nodes, nearly all `Conv` and `Relu`.

The image is one random `1 x H x W x 3` float32 batch (seed 0), the same in every
process. Keras is timed with `model.predict_on_batch(x)`: one compiled call (a traced
`tf.function` on TensorFlow, `jax.jit` on JAX, eager under `torch.no_grad()` on torch)
and the NumPy conversion of its output, the path a serving loop or
`kseg.inference.predict` takes per batch; and with `model.predict(x, verbose=0)`, which
wraps the same compiled call in a data adapter, an epoch iterator and callbacks on
every call (the difference is Keras' per-call overhead). Each timing is the median
wall time (and process CPU time, all threads) of `--repeats` calls after `--warmup`
untimed ones; the first call (tracing, compilation) is reported apart. *Params* count weights and BatchNorm statistics (Keras'
`count_params`; the peer's state dict). *Peak RSS* is
`ru_maxrss` of the measuring subprocess (framework, weights, every call).
*max |diff|* compares the first output with the TensorFlow reference logits of the
same weights (the peer with the `deeplabv3` reference), a check that every row runs
the same network. The machine's GEMM ceiling (2048^3 float32 NumPy matmul, best of 3)
is measured at the start and the end of the run.
"""

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from _machine import cpu_model, has_avx512f, matmul_gflops

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MODELS = ("deeplabv3plus", "deeplabv3")
MODEL_LABELS = {
    "deeplabv3plus": "DeepLabV3Plus (OS 16)",
    "deeplabv3": "DeepLabV3 (torchvision layout, OS 8)",
}
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
BACKENDS = KERAS_BACKENDS + ("onnxruntime", "torchvision")
KERAS_CALLS = ("predict_on_batch", "predict")
NUM_CLASSES = 21

def import_torchvision():
    """torchvision's model definitions, beside a CPU torch wheel too."""
    from kseg.convert._torch_references import import_torch_reference

    return import_torch_reference("torchvision")


def torchvision_peer():
    """torchvision's DeepLabV3-ResNet50, random weights, in eval mode."""
    torchvision = import_torchvision()
    return torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, aux_loss=False, num_classes=NUM_CLASSES
    ).eval()


def image(height, width):
    """The benchmark's input: one RGB image in [0, 255], NHWC float32, seed 0."""
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (1, height, width, 3)).astype(np.float32)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux


def build_model(name):
    """The kseg model `name`, random weights, free input size."""
    sys.path.insert(0, ROOT)
    import kseg

    if name == "deeplabv3plus":
        return kseg.models.DeepLabV3Plus(NUM_CLASSES)
    from kseg.convert import torchvision as convert

    # The layout `kseg.convert.from_torchvision("deeplabv3_resnet50", ...)` builds.
    backbone = kseg.backbones.ResNet50(
        input_shape=(None, None, 3), output_stride=8, variant="v1.5", name="resnet50_v1.5"
    )
    return kseg.models.DeepLabV3(
        NUM_CLASSES,
        input_shape=(None, None, 3),
        backbone=backbone,
        multi_grid=None,
        aux_head=False,
        align_corners=False,
        normalization="torch",
        name="deeplabv3_resnet50",
        **convert._DEEPLAB,
    )


def logits_of(outputs):
    if isinstance(outputs, dict):
        outputs = outputs["main"]
    return np.asarray(outputs)


def time_calls(call, warmup, repeats):
    """(first call s, [wall s], [cpu s], first output) of `warmup + repeats` calls."""
    walls, cpus, first = [], [], None
    for _ in range(warmup + repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = call()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        if first is None:
            first = out
    return walls[0], walls[warmup:], cpus[warmup:], first


def summary(first_s, walls, cpus, output, reference_path, params):
    result = {
        "first_s": first_s,
        "median_ms": 1e3 * statistics.median(walls),
        "min_ms": 1e3 * min(walls),
        "cpu_ms": 1e3 * statistics.median(cpus),
        "timed": len(walls),
        "params": params,
        "peak_rss_mb": peak_rss_mb(),
    }
    if reference_path and os.path.exists(reference_path):
        reference = np.load(reference_path)
        result["max_diff"] = float(np.max(np.abs(output - reference)))
    return result


# ---------------------------------------------------------------- subprocesses


def child_prepare(args):
    """TensorFlow: weights, ONNX export and reference logits of each model."""
    import keras

    sys.path.insert(0, ROOT)
    import kseg

    x = image(*args.size)
    for stale in ["peer.pth"] + [f"{name}.reference.npy" for name in MODELS]:
        if os.path.exists(os.path.join(args.workdir, stale)):
            os.remove(os.path.join(args.workdir, stale))  # from an earlier run in --workdir
    done = {}
    for name in args.models:
        model = build_model(name)
        if name == "deeplabv3":
            import torch

            from kseg.convert import from_torchvision

            torch.manual_seed(0)
            peer = torchvision_peer()
            state = peer.state_dict()
            torch.save(state, os.path.join(args.workdir, "peer.pth"))
            converted = from_torchvision("deeplabv3_resnet50", state, num_classes=NUM_CLASSES)
            model.set_weights(converted.get_weights())
        model.save_weights(os.path.join(args.workdir, f"{name}.weights.h5"))
        np.save(
            os.path.join(args.workdir, f"{name}.reference.npy"),
            logits_of(model.predict_on_batch(x)),
        )
        start = time.perf_counter()
        if "onnxruntime" in args.backends:
            for shape, size in (("free", None), ("fixed", args.size)):
                path = os.path.join(args.workdir, f"{name}.{shape}.onnx")
                kseg.export.export_model(model, path, "onnx", size=size)
        done[name] = {"params": model.count_params(), "export_s": time.perf_counter() - start}
        keras.backend.clear_session()
    return done


def child_keras(args):
    """One Keras backend (`KERAS_BACKEND`), one model, one call (`--call`)."""
    import keras

    name = args.models[0]
    x = image(*args.size)
    model = build_model(name)
    model.load_weights(os.path.join(args.workdir, f"{name}.weights.h5"))
    if args.call == "predict_on_batch":

        def call():
            return logits_of(model.predict_on_batch(x))
    else:

        def call():
            return logits_of(model.predict(x, batch_size=1, verbose=0))

    first_s, walls, cpus, output = time_calls(call, args.warmup, args.repeats)
    result = summary(
        first_s,
        walls,
        cpus,
        output,
        os.path.join(args.workdir, f"{name}.reference.npy"),
        model.count_params(),
    )
    if keras.backend.backend() == "torch":
        import torch

        result["threads"] = torch.get_num_threads()
    return result


def child_onnxruntime(args):
    """onnxruntime on the export `--onnx`; `--threads 0`: default session options."""
    import onnxruntime

    name = args.models[0]
    options = onnxruntime.SessionOptions()
    if args.threads:
        options.intra_op_num_threads = args.threads
    session = onnxruntime.InferenceSession(
        os.path.join(args.workdir, f"{name}.{args.onnx}.onnx"),
        sess_options=options,
        providers=["CPUExecutionProvider"],
    )
    input_name = session.get_inputs()[0].name
    x = image(*args.size)

    def call():
        return session.run(None, {input_name: x})[0]

    first_s, walls, cpus, output = time_calls(call, args.warmup, args.repeats)
    return summary(
        first_s, walls, cpus, output, os.path.join(args.workdir, f"{name}.reference.npy"), None
    )


def child_torchvision(args):
    """The peer, eager, in `torch.inference_mode()`, with the weights `prepare` saved."""
    import torch

    model = torchvision_peer()
    weights = os.path.join(args.workdir, "peer.pth")
    if os.path.exists(weights):
        model.load_state_dict(torch.load(weights))
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    x = torch.from_numpy(((image(*args.size) / 255.0 - mean) / std).transpose(0, 3, 1, 2).copy())

    def call():
        with torch.inference_mode():
            return model(x)["out"].numpy().transpose(0, 2, 3, 1)

    first_s, walls, cpus, output = time_calls(call, args.warmup, args.repeats)
    result = summary(
        first_s,
        walls,
        cpus,
        output,
        os.path.join(args.workdir, "deeplabv3.reference.npy") if os.path.exists(weights) else None,
        # Parameters and BatchNorm statistics, as Keras' `count_params` counts them.
        sum(v.numel() for k, v in model.state_dict().items() if "num_batches" not in k),
    )
    result["threads"] = torch.get_num_threads()
    result["torch"] = torch.__version__
    return result


CHILDREN = {
    "prepare": child_prepare,
    "keras": child_keras,
    "onnxruntime": child_onnxruntime,
    "torchvision": child_torchvision,
}


def run_child(args, kind, backend="tensorflow", model=None, call=None, threads=0, onnx="free"):
    """Runs one measurement in a fresh process; its result dict, or {"error": ...}."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        kind,
        "--workdir",
        args.workdir,
        "--size",
        *(str(v) for v in args.size),
        "--warmup",
        str(args.warmup),
        "--repeats",
        str(args.repeats),
        "--models",
        model or ",".join(args.models),
        "--backends",
        ",".join(args.backends),
        "--threads",
        str(threads),
        "--onnx",
        onnx,
    ]
    if call:
        command += ["--call", call]
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-2:]
    return {"error": f"exit {done.returncode}: {' / '.join(tail)}"}


# ---------------------------------------------------------------- the table


def versions():
    names = ("keras", "tensorflow", "jax", "torch", "torchvision", "onnxruntime", "tf2onnx")
    found = []
    for name in names + ("numpy",):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def row(model, runtime, call, result, peer_ms):
    if "error" in result:
        return f"| {model} | {runtime} | {call} | {result['error']} | | | | | | | |"
    params = "" if result.get("params") is None else f"{result['params'] / 1e6:.1f}"
    ratio = "" if not peer_ms else f"{result['median_ms'] / peer_ms:.2f}x"
    diff = "" if "max_diff" not in result else f"{result['max_diff']:.1e}"
    return (
        f"| {model} | {runtime} | {call} | {result['median_ms']:.1f} | {result['min_ms']:.1f} "
        f"| {result['cpu_ms']:.1f} | {ratio} | {result['first_s']:.2f} | {params} "
        f"| {result['peak_rss_mb']:.0f} | {diff} |"
    )


def parse_list(parser, text, choices, flag):
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(values) - set(choices))
    if unknown or not values:
        parser.error(f"argument {flag}: expected some of {', '.join(choices)}; received {text!r}")
    return [v for v in choices if v in values]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
        help="image height and width; default: 512 512",
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed calls; default: 10")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls; default: 2")
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated, among {', '.join(BACKENDS)}; default: all",
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated; default: " + ",".join(MODELS)
    )
    parser.add_argument(
        "--calls",
        default=",".join(KERAS_CALLS),
        help="Keras calls timed; default: " + ",".join(KERAS_CALLS),
    )
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds per subprocess; default: 1800"
    )
    parser.add_argument("--child", choices=tuple(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument(
        "--workdir",
        help="folder for the weights, ONNX files and reference logits, kept after the run; "
        "default: a temporary folder",
    )
    parser.add_argument("--call", choices=KERAS_CALLS, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--onnx", choices=("free", "fixed"), default="free", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.repeats < 1 or min(args.size) < 1:
        parser.error(
            "expected --warmup >= 0, --repeats >= 1 and a positive --size; received "
            f"{args.warmup}, {args.repeats} and {args.size}"
        )
    args.size = tuple(args.size)
    args.backends = parse_list(parser, args.backends, BACKENDS, "--backends")
    args.models = parse_list(parser, args.models, MODELS, "--models")
    args.calls = parse_list(parser, args.calls, KERAS_CALLS, "--calls")
    if args.child:
        result = CHILDREN[args.child](args)
        print("RESULT " + json.dumps(result), flush=True)
        return

    started = time.perf_counter()
    height, width = args.size
    with tempfile.TemporaryDirectory(prefix="kseg-latency-") as workdir:
        if args.workdir:
            os.makedirs(args.workdir, exist_ok=True)
        else:
            args.workdir = workdir
        gflops_start = matmul_gflops()
        load_start = os.getloadavg()[0]
        peer = "torchvision" in args.backends
        results = []  # (model, runtime, call, result)
        if peer:
            results.append(("torchvision DeepLabV3-ResNet50 (start)", "torch eager", "inference_mode", {}))
        prepared = run_child(args, "prepare")
        if "error" in prepared:
            print(f"prepare (TensorFlow: weights, ONNX export) failed: {prepared['error']}")
            return
        if peer:
            results[0] = results[0][:3] + (run_child(args, "torchvision"),)
        for name in args.models:
            label = MODEL_LABELS[name]
            for backend in KERAS_BACKENDS:
                if backend in args.backends:
                    for call in args.calls:
                        result = run_child(args, "keras", backend, name, call)
                        results.append((label, f"keras {backend}", call, result))
            if "onnxruntime" in args.backends:
                for onnx in ("free", "fixed"):
                    for threads in (0, os.cpu_count()):
                        result = run_child(
                            args, "onnxruntime", model=name, threads=threads, onnx=onnx
                        )
                        if "error" not in result:
                            result["params"] = prepared[name]["params"]
                        export = "any size" if onnx == "free" else f"{height}x{width}"
                        options = f"intra-op threads {threads}" if threads else "default options"
                        runtime = f"onnxruntime, export for {export}, {options}"
                        results.append((label, runtime, "session.run", result))
        if peer:
            results.append(
                (
                    "torchvision DeepLabV3-ResNet50 (end)",
                    "torch eager",
                    "inference_mode",
                    run_child(args, "torchvision"),
                )
            )
        gflops_end = matmul_gflops()
    peer_ms = None
    if peer and "error" not in results[0][3]:
        peer_ms = results[0][3]["median_ms"]
    threads = next((r["threads"] for *_, r in results if "threads" in r), None)

    avx = {True: "yes", False: "no", None: "unknown"}[has_avx512f()]
    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, avx512f {avx}; matmul 2048^3 fp32 "
        f"{gflops_start:.0f} GFLOP/s at the start, {gflops_end:.0f} at the end; load average "
        f"(1 min) {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
        f"torch threads {threads if threads is not None else 'n/a'}."
    )
    print(f"Versions: {versions()}; Python {platform.python_version()}.")
    print(
        f"Batch 1 x {height}x{width} x 3, float32; {args.warmup} warm-up + {args.repeats} timed "
        f"calls per row, each row in its own process; ONNX export "
        + ", ".join(f"{n} {v['export_s']:.0f} s (both exports)" for n, v in prepared.items())
        + f"; whole run {time.perf_counter() - started:.0f} s."
    )
    print()
    print(
        "| model | runtime | call | median ms | min ms | CPU ms | vs peer | first call (s) "
        "| params (M) | peak RSS (MB) | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model, runtime, call, result in results:
        print(row(model, runtime, call, result, peer_ms))


if __name__ == "__main__":
    main()
