"""kseg.postprocess.dense_crf: the lattice's error against the exact CRF, and its speed.

Usage:
    python benchmarks/dense_crf.py                    # one subprocess per backend
    python benchmarks/dense_crf.py --backend jax      # one backend, in this process

Accuracy (`--error-size`, default 64 x 64, the largest size `method="auto"` runs exactly):
the refined probabilities of `method="lattice"` against `method="exact"` after 1 and 10
mean-field iterations, with DeepLab's defaults, on two synthetic inputs: "blocks" (RGB
blocks of 8 px with noise 6, one class per block, logits 1.5 above N(0, 1) noise, 21
classes: a network-like softmax) and "noise" (the same image, independent N(0, 1.5) logits
per pixel: mostly undecided pixels, where mean field amplifies small differences).

Speed (`--size`, default 375 x 500, a PASCAL VOC image; 21 classes, blocks of 25 px): the
median wall time of one `dense_crf` call with the defaults (lattice: both lattices built,
10 iterations), over `--repeats` calls after one warm-up, and pydensecrf (the authors' C++
permutohedral code) on the same input when it is installed.
"""

import argparse
import os
import platform
import subprocess
import sys
import time

import numpy as np

BACKENDS = ("tensorflow", "jax", "torch")


def _inputs(h, w, c, block, seed, kind):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // block + 1, w // block + 1, 3))
    image = np.repeat(np.repeat(coarse, block, 0), block, 1)[:h, :w]
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    if kind == "blocks":
        labels = rng.integers(0, c, (h // block + 1, w // block + 1))
        labels = np.repeat(np.repeat(labels, block, 0), block, 1)[:h, :w]
        logits = 1.5 * np.eye(c)[labels] + rng.normal(0, 1.0, (h, w, c))
    else:
        logits = rng.normal(0, 1.5, (h, w, c))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return image, (p / p.sum(-1, keepdims=True)).astype(np.float32)


def _pydensecrf(image, probs):
    import pydensecrf.densecrf as dcrf

    h, w, c = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    unary = -np.log(np.maximum(probs, 1e-8)).transpose(2, 0, 1).reshape(c, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
    crf.addPairwiseGaussian(sxy=3, compat=3, normalization=dcrf.NORMALIZE_AFTER)
    crf.addPairwiseBilateral(
        sxy=121, srgb=5, rgbim=image, compat=4, normalization=dcrf.NORMALIZE_AFTER
    )
    return np.array(crf.inference(10)).reshape(c, h, w).transpose(1, 2, 0)


def run_backend(args):
    from keras import ops

    import kseg

    backend = os.environ["KERAS_BACKEND"]
    h, w = args.error_size
    for kind in ("blocks", "noise"):
        image, probs = _inputs(h, w, 21, 8, 0, kind)
        for iterations in (1, 10):
            exact, lattice = (
                ops.convert_to_numpy(
                    kseg.postprocess.dense_crf(image, probs, iterations=iterations, method=m)
                )
                for m in ("exact", "lattice")
            )
            diff = np.abs(exact - lattice)
            same = (exact.argmax(-1) == lattice.argmax(-1)).mean()
            print(
                f"| {backend} | {kind} | {h}x{w} | {iterations} | {diff.mean():.5f} | "
                f"{diff.max():.3f} | {100 * same:.2f} % |",
                flush=True,
            )
    h, w = args.size
    image, probs = _inputs(h, w, 21, 25, 1, "blocks")
    fn = lambda: ops.convert_to_numpy(kseg.postprocess.dense_crf(image, probs))  # noqa: E731
    fn()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        refined = fn()
        times.append(time.perf_counter() - start)
    line = f"| {backend} | {h}x{w}x21 | lattice | {np.median(times):.2f} s |"
    try:
        start = time.perf_counter()
        reference = _pydensecrf(image, probs)
        seconds = time.perf_counter() - start
        line += f" {seconds:.2f} s | {np.abs(refined - reference).max():.1e} |"
    except ImportError:
        line += " n/a | n/a |"
    print(line, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, default=None)
    parser.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    parser.add_argument("--error-size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.backend is not None:
        os.environ["KERAS_BACKEND"] = args.backend
        run_backend(args)
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _machine

    print(
        f"Machine: {_machine.cpu_model()}, {os.cpu_count()} CPUs, AVX-512F "
        f"{_machine.has_avx512f()}, 2048^3 fp32 NumPy matmul {_machine.matmul_gflops():.0f} "
        f"GFLOP/s, load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}"
    )
    for backend in BACKENDS:
        argv = [sys.executable, os.path.abspath(__file__), "--backend", backend]
        argv += ["--size", *map(str, args.size), "--error-size", *map(str, args.error_size)]
        argv += ["--repeats", str(args.repeats)]
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        subprocess.run(argv, env=env, check=True)
    print(f"Load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
