"""Images per second of whole-image prediction on images of many sizes, size buckets off and on.

    KERAS_BACKEND=jax python benchmarks/inference_sizes.py                # 20 sizes, 3 repeats
    KERAS_BACKEND=torch python benchmarks/inference_sizes.py --repeats 1 --images 4   # smoke run

The model is the compact demo DeepLabV3+ of the recipes
(`recipes/_common.build_model("deeplabv3plus", 6, backbone="compact",
compact=_common.COMPACT_RESNET)`), random weights. The images are `--images`
random RGB images of as many different sizes, height and width drawn between
`--min-size` and `--max-size` (seed 0), predicted one at a time with
`kseg.inference.predict(model, image[None], size_buckets=...)`, as
`recipes/predict.py` does.

Each repeat builds a fresh model (so that nothing compiled is reused) and
times two passes over the images: the first (cold) includes every
compilation/trace the sizes cause, the second (warm) only runs. The table gives
the median images/s over the repeats for `size_buckets=False` and `True`,
side by side, with the number of distinct input shapes the model saw, the
machine's matmul ceiling (a 2048^3 float32 NumPy matmul, best of 3, in GFLOP/s)
and whether the CPU has AVX-512F.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np
from _machine import has_avx512f, matmul_gflops

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "recipes"))


class Recorder:
    """Calls the model's `predict_on_batch`, recording the input shapes."""

    def __init__(self, model):
        self.model = model
        self.shapes = set()

    def __call__(self, x):
        self.shapes.add(tuple(x.shape))
        return self.model.predict_on_batch(x)


def run(images, size_buckets):
    """(cold images/s, warm images/s, distinct shapes) with a fresh model."""
    import _common

    import kseg

    model = _common.build_model(
        "deeplabv3plus", 6, backbone="compact", compact=_common.COMPACT_RESNET
    )
    recorder = Recorder(model)
    rates = []
    for _ in range(2):
        start = time.perf_counter()
        for image in images:
            kseg.inference.predict(recorder, image[None], size_buckets=size_buckets)
        rates.append(len(images) / (time.perf_counter() - start))
    return rates[0], rates[1], len(recorder.shapes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="images (sizes); default: 20")
    parser.add_argument("--min-size", type=int, default=64, help="smallest side; default: 64")
    parser.add_argument("--max-size", type=int, default=160, help="largest side; default: 160")
    parser.add_argument("--repeats", type=int, default=3, help="fresh models; default: 3")
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeats < 1 or not 1 <= args.min_size <= args.max_size:
        parser.error(
            "expected --images >= 1, --repeats >= 1 and 1 <= --min-size <= --max-size; "
            f"received {args.images}, {args.repeats}, {args.min_size}, {args.max_size}"
        )
    import keras

    rng = np.random.default_rng(0)
    sizes = []
    while len(sizes) < args.images:
        size = tuple(int(v) for v in rng.integers(args.min_size, args.max_size + 1, 2))
        if size not in sizes or len(sizes) >= (args.max_size - args.min_size + 1) ** 2:
            sizes.append(size)
    images = [rng.uniform(0, 255, size + (3,)).astype(np.float32) for size in sizes]
    results = {}
    for buckets in (False, True):
        runs = [run(images, buckets) for _ in range(args.repeats)]
        results[buckets] = [statistics.median(r[i] for r in runs) for i in range(3)]
    avx = {True: "yes", False: "no", None: "unknown"}[has_avx512f()]
    print(
        f"backend {keras.backend.backend()}, {args.images} images of {len(set(sizes))} sizes "
        f"in [{args.min_size}, {args.max_size}] px, batch 1, median of {args.repeats}; "
        f"matmul 2048^3 fp32 {matmul_gflops():.0f} GFLOP/s, avx512f {avx}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'':24}{'size_buckets=False':>20}{'size_buckets=True':>20}")
    for i, label in enumerate(("cold pass (images/s)", "warm pass (images/s)")):
        print(f"{label:24}{results[False][i]:>20.2f}{results[True][i]:>20.2f}")
    print(f"{'input shapes':24}{results[False][2]:>20.0f}{results[True][2]:>20.0f}")


if __name__ == "__main__":
    main()
