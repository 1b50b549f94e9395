"""Input-pipeline throughput at Cityscapes size, beside the DeepLabV3+ training step it feeds.

Run (about 20 minutes on a busy 2-core machine, most of it the 512x1024 training step;
the pipeline is tf.data whatever the backend, the training step runs on `KERAS_BACKEND`):

    KERAS_BACKEND=tensorflow python benchmarks/input_pipeline.py
    python benchmarks/input_pipeline.py --images 8 --runs 2 --no-train   # quick, pipeline only

It writes `--images` fake Cityscapes-sized samples (2048x1024 RGB PNG images with
textured shapes and pixel noise, grayscale PNG masks of 19 classes with 255 outlines)
into a temporary VOC-layout folder and measures, in one process:

(a) decode alone: `kseg.data.voc_dataset` (Pillow decode, mask check) -> images/s;
(b) reader + `kseg.data.train_pipeline` at the papers' Cityscapes setting (random
    scale 0.5-2.0, pad, crop 512x1024, flip, batch 8) -> images/s, and the same
    augmentation from decoded images in memory (augmentation alone), beside the
    former order of `augment_sample` (resize the whole image, then pad and crop:
    `full-resize` rows) for a before/after figure;
(c) the training step the pipeline feeds: `kseg.models.DeepLabV3Plus` (ResNet-50,
    output stride 16, no pretrained weights, 19 classes) at crop 512x1024,
    `train_on_batch` seconds per image on this CPU (median after a compile step).

Every pipeline figure is the median of `--runs` timed passes after one warm-up pass;
*CPU ms/img* is the process CPU time (all threads) per image, from which the cores a
given images/s needs are estimated. It also prints the machine: core count, AVX-512,
and a 2048^3 float32 NumPy matmul in GFLOP/s (the CPU's practical ceiling).
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

import kseg  # noqa: E402
from kseg.data import augment  # noqa: E402
from kseg.data.synthetic import make_synthetic_sample  # noqa: E402

NUM_CLASSES = 19  # Cityscapes train ids
# The GPU step is estimated from a published training throughput of ResNet-50 v1.5 at
# 224x224 (NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5
# README, "Training performance results", 1 GPU, pytorch-21.03 NGC container), scaled by
# the ratio of forward multiply-adds: ResNet-50 v1.5 does 4.09 GMAC per 224x224 image
# (torchvision's model table, "GFLOPS" 4.09 for resnet50), DeepLabV3+ is counted below.
# It assumes both networks reach the same fraction of the GPU's peak.
RESNET50_GMAC = 4.09
RESNET50_TRAIN_IMG_S = (
    ("V100 16GB, FP32", 367),
    ("V100 16GB, mixed precision", 1200),
    ("A100 80GB, TF32", 938),
    ("A100 80GB, mixed precision", 2470),
)


# ----------------------------------------------------------------------------- machine


def machine_line():
    flags = ""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = line
                elif line.startswith("model name") and model in ("", platform.machine()):
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    avx512 = "yes" if " avx512f" in flags else "no"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return model, cores, avx512, load


def matmul_gflops(n=2048, repeats=5):
    """Median float32 n^3 matmul rate of NumPy's BLAS (all threads), in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / statistics.median(times) / 1e9


# ----------------------------------------------------------------------------- data


def write_cityscapes_like(root, num_images, height, width, image_format, seed=0):
    """Writes `num_images` image/mask pairs of `height` x `width` in the VOC layout.

    Four distinct synthetic samples are drawn (drawing one costs seconds at this size)
    and each file is one of them rolled sideways by a different offset, so that every
    file is different and compresses like the samples. The list file uses the
    two-path form, which lets the images be PNG files as in Cityscapes.

    Returns:
        (VOC2012 folder, mean image file size in MB).
    """
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    for d in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(voc, d), exist_ok=True)
    bases = [
        make_synthetic_sample(
            i, height=height, width=width, num_classes=NUM_CLASSES, seed=seed, boundary_width=2
        )
        for i in range(min(4, num_images))
    ]
    ext = {"png": ".png", "jpeg": ".jpg"}[image_format]
    lines, sizes = [], []
    for i in range(num_images):
        image, mask = bases[i % len(bases)]
        shift = (i // len(bases)) * (width // 7)
        image, mask = np.roll(image, shift, axis=1), np.roll(mask, shift, axis=1)
        name = f"city_{i:04d}"
        image_path = os.path.join(voc, "JPEGImages", name + ext)
        if image_format == "png":
            Image.fromarray(image, "RGB").save(image_path)
        else:
            Image.fromarray(image, "RGB").save(image_path, quality=95)
        Image.fromarray(mask, "L").save(os.path.join(voc, "SegmentationClass", name + ".png"))
        sizes.append(os.path.getsize(image_path))
        lines.append(f"/JPEGImages/{name}{ext} /SegmentationClass/{name}.png\n")
    with open(os.path.join(voc, "ImageSets", "Segmentation", "train.txt"), "w") as f:
        f.writelines(lines)
    return voc, statistics.mean(sizes) / 1e6


# ----------------------------------------------------------------------------- pipelines


def _full_resize_augment(image, mask, seed, crop_size, scale_range, mean, ignore_index):
    """The former order of `augment_sample` (no jitter): resize the whole image, pad, crop, flip.

    Same random draws as `kseg.data.augment_sample`, kept here only as the "before"
    row of the benchmark.
    """
    crop_h, crop_w = crop_size
    image = tf.convert_to_tensor(image, tf.float32)
    mask = tf.cast(mask, tf.int32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=8)
    scale = tf.random.stateless_uniform([], seeds[0], *scale_range)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    new_size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
    image = tf.image.resize(image, new_size, method="bilinear")
    mask = tf.cast(tf.image.resize(mask[..., None], new_size, method="nearest")[..., 0], tf.int32)
    shape = tf.shape(image)
    pad_h = tf.maximum(crop_h - shape[0], 0)
    pad_w = tf.maximum(crop_w - shape[1], 0)
    paddings = [[0, pad_h], [0, pad_w]]
    mean = tf.constant(mean, tf.float32)
    image = tf.pad(image - mean, paddings + [[0, 0]]) + mean
    mask = tf.pad(mask, paddings, constant_values=ignore_index)
    shape = tf.shape(image)
    top = tf.random.stateless_uniform([], seeds[4], 0, shape[0] - crop_h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seeds[5], 0, shape[1] - crop_w + 1, dtype=tf.int32)
    image = image[top : top + crop_h, left : left + crop_w]
    mask = mask[top : top + crop_h, left : left + crop_w]
    do_flip = tf.random.stateless_uniform([], seeds[6]) < 0.5
    image = tf.cond(do_flip, lambda: image[:, ::-1], lambda: image)
    mask = tf.cond(do_flip, lambda: mask[:, ::-1], lambda: mask)
    return tf.ensure_shape(image, (crop_h, crop_w, 3)), tf.ensure_shape(mask, (crop_h, crop_w))


def full_resize_pipeline(dataset, batch_size, crop_size, seed=0, scale_range=(0.5, 2.0)):
    """`train_pipeline`'s structure with `_full_resize_augment` (the "before" rows)."""
    randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    salt = tf.constant(seed, tf.int64)

    def _augment(sample, r):
        image, mask = sample
        return _full_resize_augment(
            image, mask, tf.stack([r, salt]), crop_size, scale_range, augment.IMAGENET_MEAN_RGB, 255
        )

    ds = tf.data.Dataset.zip((dataset, randoms))
    ds = ds.map(_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def time_passes(make_dataset, runs):
    """Iterates a fresh dataset `runs + 1` times (the first pass is warm-up).

    Returns (images/s of the median pass, CPU ms per image of the median pass, images).
    """
    walls, cpus, count = [], [], 0
    for r in range(runs + 1):
        ds = make_dataset()
        c0, t0 = time.process_time(), time.perf_counter()
        count = 0
        for element in ds:
            images = element[0]
            count += int(images.shape[0]) if images.shape.rank == 4 else 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if r:
            walls.append(wall)
            cpus.append(cpu)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return count / wall, 1000.0 * cpu / count, count


# ----------------------------------------------------------------------------- training step


def forward_macs(crop):
    """Forward multiply-adds of DeepLabV3+ for one `crop`-sized image.

    Counted while a copy of the model at 1/8 of the crop's height and width runs
    forward once: each Conv2D, DepthwiseConv2D and Dense call adds its output pixels
    times its kernel size; the total is scaled by the pixel ratio (every layer's cost
    is proportional to the pixel count but the ASPP image-pooling branch, a rounding
    error).
    """
    small = (max(crop[0] // 8, 16), max(crop[1] // 8, 16))
    model = kseg.models.DeepLabV3Plus(NUM_CLASSES, input_shape=(*small, 3))
    counts = []
    classes = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    originals = {cls: cls.call for cls in classes}

    def counting(original):
        def call(self, inputs, *args, **kwargs):
            outputs = original(self, inputs, *args, **kwargs)
            pixels = int(np.prod(outputs.shape[1:-1]))
            counts.append(pixels * int(np.prod(self.kernel.shape)))
            return outputs

        return call

    try:
        for cls, original in originals.items():
            cls.call = counting(original)
        model(np.zeros((1, *small, 3), "float32"), training=False)
    finally:
        for cls, original in originals.items():
            cls.call = original
    return sum(counts) * (crop[0] * crop[1]) / (small[0] * small[1])


def time_train_step(batch, crop, steps):
    """Median `train_on_batch` seconds of DeepLabV3+ (ResNet-50, OS 16) after one compile step."""
    macs = forward_macs(crop)
    model = kseg.models.DeepLabV3Plus(NUM_CLASSES, input_shape=(crop[0], crop[1], 3))
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        loss=kseg.losses.SegmentationCrossEntropy(),
    )
    rng = np.random.default_rng(0)
    x = keras.ops.convert_to_tensor(rng.uniform(0, 255, (batch, *crop, 3)).astype("float32"))
    y = keras.ops.convert_to_tensor(rng.integers(0, NUM_CLASSES, (batch, *crop)).astype("int32"))
    t0 = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - t0
    times, cpus = [], []
    for _ in range(steps):
        c0, t0 = time.process_time(), time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(times), statistics.median(cpus), first, macs


# ----------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16, help="image/mask files to write")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--formats", default="png,jpeg", help="comma list of png, jpeg")
    parser.add_argument("--crop", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=8, help="pipeline batch size")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the files per run")
    parser.add_argument("--runs", type=int, default=3, help="timed runs (median) after a warm-up")
    parser.add_argument("--no-before", action="store_true", help="skip the full-resize rows")
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=3)
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    for f in formats:
        if f not in ("png", "jpeg"):
            parser.error(f"--formats: expected png and/or jpeg. Received: {f!r}")
    if args.images < args.batch:
        parser.error(f"--images must be at least --batch ({args.batch}). Received: {args.images}")

    model, cores, avx512, load = machine_line()
    print(f"Machine: {model}, {cores} cores, avx512f: {avx512}, load average {load:.2f}")
    print(
        f"keras {keras.__version__} ({keras.backend.backend()}), tensorflow {tf.__version__}, "
        f"numpy {np.__version__}, python {platform.python_version()}"
    )
    gflops = matmul_gflops()
    print(f"2048^3 float32 matmul (NumPy BLAS): {gflops:.0f} GFLOP/s")

    crop = tuple(args.crop)
    rows = []  # (name, images/s, CPU ms/img)
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in formats:
            t0 = time.perf_counter()
            root, mb = write_cityscapes_like(
                os.path.join(tmp, fmt), args.images, args.height, args.width, fmt
            )
            print(
                f"\nWrote {args.images} {args.width}x{args.height} {fmt.upper()} pairs "
                f"(mean image file {mb:.1f} MB) in {time.perf_counter() - t0:.0f} s"
            )

            def reader(root=root):
                return kseg.data.voc_dataset(root, "train", num_classes=NUM_CLASSES).repeat(
                    args.epochs
                )

            rate, cpu, n = time_passes(reader, args.runs)
            rows.append((f"(a) decode, {fmt}", rate, cpu))
            print(f"  {rows[-1][0]}: {rate:.1f} img/s, {cpu:.0f} CPU ms/img ({n} images/run)")

            def pipeline(reader=reader):
                return kseg.data.train_pipeline(reader(), args.batch, crop, seed=0)

            rate, cpu, n = time_passes(pipeline, args.runs)
            rows.append((f"(b) decode + train_pipeline, {fmt}", rate, cpu))
            print(f"  {rows[-1][0]}: {rate:.1f} img/s, {cpu:.0f} CPU ms/img ({n} images/run)")
            if not args.no_before:

                def before(reader=reader):
                    return full_resize_pipeline(reader(), args.batch, crop)

                rate, cpu, n = time_passes(before, args.runs)
                rows.append((f"(b) decode + full-resize pipeline (before), {fmt}", rate, cpu))
                print(f"  {rows[-1][0]}: {rate:.1f} img/s, {cpu:.0f} CPU ms/img")

        # Augmentation alone: a few decoded samples held in memory (only here).
        samples = list(
            kseg.data.voc_dataset(root, "train", num_classes=NUM_CLASSES).take(args.batch)
        )
        images = tf.stack([s[0] for s in samples])
        masks = tf.stack([s[1] for s in samples])

        def in_memory():
            return tf.data.Dataset.from_tensor_slices((images, masks)).repeat(
                args.epochs * args.images // args.batch
            )

        rate, cpu, n = time_passes(
            lambda: kseg.data.train_pipeline(in_memory(), args.batch, crop, seed=0), args.runs
        )
        rows.append(("augment only (train_pipeline, decoded in memory)", rate, cpu))
        print(f"  {rows[-1][0]}: {rate:.1f} img/s, {cpu:.0f} CPU ms/img")
        if not args.no_before:
            rate, cpu, n = time_passes(
                lambda: full_resize_pipeline(in_memory(), args.batch, crop), args.runs
            )
            rows.append(("augment only, full-resize (before)", rate, cpu))
            print(f"  {rows[-1][0]}: {rate:.1f} img/s, {cpu:.0f} CPU ms/img")

    print("\n| measurement | images/s | CPU ms/img |")
    print("|---|---|---|")
    for name, rate, cpu in rows:
        print(f"| {name} | {rate:.1f} | {cpu:.0f} |")

    if args.no_train:
        return
    step, cpu, first, macs = time_train_step(args.train_batch, crop, args.train_steps)
    per_image = step / args.train_batch
    train_flops = 3 * 2 * macs  # forward + backward (about twice the forward)
    print(
        f"\n(c) DeepLabV3Plus R50 OS16 train_on_batch, batch {args.train_batch}, "
        f"{crop[0]}x{crop[1]}, {keras.backend.backend()}: {step:.2f} s/step "
        f"(CPU {cpu:.2f} s), {per_image:.2f} s/img = {1 / per_image:.2f} img/s; "
        f"first step {first:.1f} s; {train_flops / per_image / 1e9:.0f} GFLOP/s achieved"
    )
    print(
        f"Model: {macs / 1e9:.0f} GMAC forward per image (conv + dense layers), "
        f"~{train_flops / 1e9:.0f} GFLOP per training image (3x forward)"
    )
    pipe = [r for r in rows if r[0].startswith("(b) decode + train_pipeline")][0]
    print(
        f"\nPipeline on this machine: {pipe[1]:.1f} img/s vs the CPU step's "
        f"{1 / per_image:.2f} img/s: {pipe[1] * per_image:.0f}x the step's need."
    )
    ratio = macs / (RESNET50_GMAC * 1e9)
    print(
        f"GPU estimate: published ResNet-50 v1.5 training img/s at 224x224 / {ratio:.1f} "
        f"(DeepLabV3+ {crop[0]}x{crop[1]} forward MACs over ResNet-50's):"
    )
    print("| GPU | ResNet-50 img/s | DeepLabV3+ img/s needed | cores at the measured CPU ms/img |")
    print("|---|---|---|---|")
    for name, rate in RESNET50_TRAIN_IMG_S:
        need = rate / ratio
        print(f"| {name} | {rate} | {need:.1f} | {need * pipe[2] / 1000:.1f} |")


if __name__ == "__main__":
    main()
