#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels benchmarks/gpu_check.sh installs on a GPU
# machine that has PyTorch, JAX, timm and torchvision but no Keras and no network:
# Keras and the two packages it needs beyond those (namex, optree), and
# segmentation_models_pytorch, for Python 3.12 on x86-64 Linux.
set -eu
cd "$(dirname "$0")/.."
python_version=${PYTHON_VERSION:-3.12}
python3 -m pip download --no-deps --only-binary=:all: --python-version "$python_version" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    keras==3.15.1 namex optree segmentation-models-pytorch==0.6.0
ls .whl
