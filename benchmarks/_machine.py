"""What the benchmarks record about the machine beside their figures."""

import platform
import time

import numpy as np


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (else what `platform` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(n=2048, tries=3):
    """float32 `n x n @ n x n` NumPy matmul throughput in GFLOP/s (best of `tries`)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def has_avx512f():
    """Whether the CPU has AVX-512 (TensorFlow turns oneDNN on only then); None if unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            return any("avx512f" in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return None
