#!/usr/bin/env bash
# Set up a fresh CPU machine: a virtual environment in .venv with the CPU build of torch, the
# package (editable) with its test extras and Triton (whose kernels the tests run in Triton's
# interpreter), and the peers the compat tests and the benchmark compare against.
# lightly and open_clip are installed without their dependencies: both pull torchvision, which
# has no CPU build here, and the tests load only their torch-only loss modules (tests/peers.py).
# With nvcc on PATH the editable install also builds the CUDA extension (csrc/); without it, the
# package installs without that backend.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip setuptools wheel
python -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}" numpy
# --no-build-isolation: setup.py builds the CUDA extension against this torch when nvcc is found
# (CONTRASTIVE_OPS_BUILD_CUDA / CONTRASTIVE_OPS_CUDA_ARCHS steer it; see csrc/README.md)
python -m pip install --quiet --no-build-isolation -e ".[test,train,triton]"
python -m pip install --quiet --no-deps "lightly==1.6.0" "open_clip_torch==3.3.0"
# sentence-transformers with its dependencies (transformers, tokenizers, ...; torch is already here)
python -m pip install --quiet "sentence-transformers==6.2.0"
# Triton 3.6 (the GPU machines' version) beside it, for the interpreter tests under both versions
# (tests/test_triton_versions.py puts this folder first on PYTHONPATH); 3.6's interpreter needs
# NumPy < 2.4 (it converts one-element arrays to Python ints)
python -m pip install --quiet --no-deps --upgrade --target .venv/triton-3.6 "triton==3.6.0" "numpy==2.3.5"
# the benchmark's CUDA-only peers (pure-Python wheels; their adapters are checked in tests/test_benchmark_peers.py)
python -m pip install --quiet --no-deps "inf-cl==1.2.1" "memeff==0.3.1" "siglip-kernel==0.1.2"
python -c "import torch, contrastive_ops; print('torch', torch.__version__, '| contrastive_ops', contrastive_ops.__version__)"
