#!/usr/bin/env bash
# The GPU check, one command for a machine with a CUDA GPU (no network needed):
#
#     bash benchmarks/gpu_check_wheels.sh     # beforehand, where pip reaches PyPI: .whl/
#     bash benchmarks/gpu_check.sh OUT_DIR    # on the GPU machine, from the repository root
#
# 1. installs the wheels in .whl/ (Keras and what the GPU image may lack) into a
#    private folder, when there are any;
# 2. benchmarks/gpu_check.py: kseg's training step and peak device memory per backend
#    (float32, bfloat16, float16 with loss scaling) beside smp's in PyTorch;
# 3. the ops, layers, losses and metrics test suites on the GPU, torch then JAX.
# Everything it writes goes to OUT_DIR (default: $OUT, else benchmarks/results/gpu).
# Sized to finish in under 8 minutes on one H100: 330 s of timings, 100 s of tests
# per backend (a suite still running then is stopped; its log shows how far it got).
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/kseg-gpu-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/kseg-gpu-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_FORCE_GPU_ALLOW_GROWTH=true
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
start=$(date +%s)
timeout 330 python3 benchmarks/gpu_check.py --out "$out" 2>&1 | tee "$out/timings.log"
for backend in torch jax; do
    KERAS_BACKEND=$backend timeout 100 python3 -m pytest -q -n 8 -p no:cacheprovider \
        tests/ops tests/layers tests/losses tests/metrics >"$out/tests_$backend.log" 2>&1
    echo "tests on $backend (exit $?): $(tail -n 1 "$out/tests_$backend.log")"
done
echo "gpu check: $(( $(date +%s) - start )) s"
