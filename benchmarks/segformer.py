"""SegFormer forward and training-step time and peak memory per Keras backend, beside transformers.

    python benchmarks/segformer.py                          # B0 and B2, every backend + peer
    python benchmarks/segformer.py --variants mit_b0 --steps 2 --warmup 1   # quick look

Each measurement runs in its own subprocess (one backend, its own peak memory):

- *forward*: `model.predict_on_batch(x)` on one 512x512 image (inference mode, logits at
  the input size), the compiled predict function of each backend;
- *train*: `model.train_on_batch(x, y)` on 4 crops of 256x256 with AdamW (lr 6e-5, weight
  decay 0.01) and `kseg.losses.SegmentationCrossEntropy`.

The peer is `transformers`' `SegformerForSemanticSegmentation` with the same widths and
random weights, in plain PyTorch (`torch.no_grad()` and `model.eval()` for the forward;
`torch.optim.AdamW` and cross-entropy for the step), its logits upsampled to the input
size (bilinear, as its `post_process_semantic_segmentation` does) in both, so both sides
compute the same thing. Times are medians over `--steps` timed calls after `--warmup`
untimed ones; peak memory is the subprocess' `ru_maxrss`. The machine (CPU, AVX-512,
2048^3 float32 NumPy matmul GFLOP/s) is printed with the table.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _machine  # noqa: E402
from train_step import ROOT, _run, peak_rss_mb, summarize, time_steps  # noqa: E402

NUM_CLASSES = 150  # ADE20K
MODES = {"forward": (1, 512), "train": (4, 256)}  # (batch, size)
# (backend, jit_compile): each backend's default on a CPU (as train.py's --jit-compile auto).
CONFIGS = [("jax", True), ("tensorflow", False), ("torch", False)]
# transformers' SegformerConfig of each Mix Transformer (the paper's Table 6).
WIDTHS = {
    "mit_b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256),
    "mit_b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "mit_b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768),
}


def _data(batch, size, channels_first=False):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    if channels_first:
        x = x.transpose(0, 3, 1, 2)
    y = rng.integers(0, NUM_CLASSES, (batch, size, size)).astype("int64")
    return x, y


def run_kseg(args):
    import keras

    import kseg

    batch, size = MODES[args.mode]
    model = kseg.models.SegFormer(NUM_CLASSES, backbone=args.variant, input_shape=(size, size, 3))
    x, y = _data(batch, size)
    x = keras.ops.convert_to_tensor(x)
    if args.mode == "forward":

        def step():
            keras.ops.convert_to_numpy(model.predict_on_batch(x))

    else:
        y = keras.ops.convert_to_tensor(y.astype("int32"))
        model.compile(
            optimizer=keras.optimizers.AdamW(6e-5, weight_decay=0.01),
            loss=kseg.losses.SegmentationCrossEntropy(),
            jit_compile=args.jit,
        )

        def step():
            model.train_on_batch(x, y)

    first, times, cpu = time_steps(step, args.warmup, args.steps)
    result = summarize(times, cpu, batch)
    result.update(
        params=int(model.count_params()),
        first_step_s=first,
        peak_rss_mb=peak_rss_mb(),
        backend=keras.backend.backend(),
        jit_compile=bool(args.jit),
    )
    print("RESULT " + json.dumps(result), flush=True)


def run_peer(args):
    try:
        from kseg.convert._torch_references import import_torch_reference

        transformers = import_torch_reference("transformers")
        import torch
        import torch.nn.functional as F
    except Exception as error:  # ImportError, or torchvision's operator registration failing
        print("RESULT " + json.dumps({"error": f"peer not installed ({type(error).__name__})"}))
        return
    hidden, depths, decoder = WIDTHS[args.variant]
    config = transformers.SegformerConfig(
        hidden_sizes=hidden, depths=depths, decoder_hidden_size=decoder, num_labels=NUM_CLASSES
    )
    torch.manual_seed(0)
    model = transformers.SegformerForSemanticSegmentation(config)
    batch, size = MODES[args.mode]
    x, y = _data(batch, size, channels_first=True)
    x, y = torch.from_numpy(x / 255.0), torch.from_numpy(y)

    def logits():
        out = model(pixel_values=x).logits
        return F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False)

    if args.mode == "forward":
        model.eval()

        def step():
            with torch.no_grad():
                logits().numpy()

    else:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5, weight_decay=0.01)

        def step():
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(logits(), y, ignore_index=255).backward()
            optimizer.step()

    first, times, cpu = time_steps(step, args.warmup, args.steps)
    result = summarize(times, cpu, batch)
    result.update(
        params=sum(p.numel() for p in model.parameters()),
        first_step_s=first,
        peak_rss_mb=peak_rss_mb(),
        backend=f"torch {torch.__version__} (transformers {transformers.__version__})",
        jit_compile=False,
    )
    print("RESULT " + json.dumps(result), flush=True)


def measure(args, who, variant, mode, backend=None, jit=False):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", who, "--variant", variant]
    cmd += ["--mode", mode, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--jit"] if jit else []
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    env["KERAS_BACKEND"] = backend or "torch"
    label = f"{variant} {mode} {who} {backend or ''}"
    result = _run(cmd, env, label, args.timeout)
    result.update(who=who, variant=variant, mode=mode)
    result.setdefault("backend", backend)
    return result


def table(rows):
    lines = [
        "| model | mode | who | backend | params (M) | median s | CPU s | steps | "
        "x peer | peak RSS (MB) | x peer |",
        "|" + "---|" * 11,
    ]
    peers = {(r["variant"], r["mode"]): r for r in rows if r["who"] == "peer" and "error" not in r}
    for r in rows:
        head = f"| {r['variant']} | {r['mode']} | {r['who']} | {r['backend']} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} | | | | | | |")
            continue
        peer = peers.get((r["variant"], r["mode"]))
        ratio = f"{r['median_s'] / peer['median_s']:.2f}" if peer else ""
        memory = f"{r['peak_rss_mb'] / peer['peak_rss_mb']:.2f}" if peer else ""
        lines.append(
            f"{head} {r['params'] / 1e6:.2f} | {r['median_s']:.3f} | {r['cpu_s']:.3f} | "
            f"{r['steps']} | {ratio} | {r['peak_rss_mb']:.0f} | {memory} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="mit_b0,mit_b2")
    parser.add_argument("--modes", default="forward,train")
    parser.add_argument("--backends", default=",".join(b for b, _ in CONFIGS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--worker", choices=("kseg", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="mit_b0", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="forward", help=argparse.SUPPRESS)
    parser.add_argument("--jit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "kseg":
        return run_kseg(args)
    if args.worker == "peer":
        return run_peer(args)

    gflops = _machine.matmul_gflops()
    print(
        f"# {_machine.cpu_model()}, {os.cpu_count()} CPUs, AVX-512: {_machine.has_avx512f()}, "
        f"2048^3 float32 matmul {gflops:.0f} GFLOP/s, load {os.getloadavg()}",
        flush=True,
    )
    backends = [b for b in args.backends.split(",") if b]
    rows = []
    for variant in args.variants.split(","):
        for mode in args.modes.split(","):
            rows.append(measure(args, "peer", variant, mode))
            for backend, jit in CONFIGS:
                if backend in backends:
                    rows.append(measure(args, "kseg", variant, mode, backend, jit))
    print(f"# load after: {os.getloadavg()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
