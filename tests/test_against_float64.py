"""Every loss configuration (tests/cases.py) × backend × dtype against its float64 reference: the
per-anchor loss and every input's gradient (of a randomly weighted sum, so each anchor's counts).

Two judgements (tests/helpers.py): fp32 on the CPU within ``FP32_REL`` of float64 (norm-wise); fp16
and bf16, and every dtype on a GPU, at most twice PyTorch's own error in that dtype (the naive
backend) plus a floor. The CPU backends: naive, chunked (16×16 tiles: several partial tiles at
N=37, R=23, D=40), triton (on a CPU in Triton's interpreter: fp32 and fp16 only, bf16 ``tl.dot``
is wrong there) and the CUDA extension's CPU path (one chunk; test_cuda_cpu.py runs it in small
chunks). On a GPU (marked ``gpu``): chunked, triton and cuda in fp32, fp16 and bf16.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from cases import CASES
from helpers import (
    DEVICE,
    FP32_REL,
    check_against_float64,
    cuda_extension_expected,
    make_inputs,
    route_cuda_to_cpu,
    skip_without_gpu_backend,
    skip_without_triton,
)

ALL = sorted(CASES)
# chunked in fp16/bf16 on the CPU
CHUNKED_HALF = ["info_nce_queue", "clip_tensor_scale", "supcon_few_classes", "nt_xent",
                "info_nce_symmetric_queue_labels", "hard_negative_beta1", "debiased_clamp", "siglip"]
# triton in fp16 (in the interpreter on a CPU: kept few, each takes seconds)
TRITON_FP16 = ["info_nce_queue", "info_nce_symmetric_queue", "nt_xent", "dcl", "clip_tensor_scale",
               "supcon_few_classes", "ring"]
# chunked and triton on a GPU; cuda there runs every case
GPU_NAMES = ["info_nce_queue", "info_nce_symmetric_queue", "nt_xent", "dcl", "clip_tensor_scale",
             "supcon_few_classes", "ring", "ring_queue_only"]
# cuda on a GPU in fp32: also within FP32_REL of float64
CUDA_GPU_FP32_REL = ["info_nce_symmetric_queue", "nt_xent", "clip_normalized", "supcon_many_classes", "dcl"]


def _rounding(dtype):
    """A gradient floor for chunked on a CPU: the gradients come back in the dtype, and rounding them
    to it alone costs up to half its ulp, which for bf16 (2^-9 relative) exceeds 1e-3."""
    return max(1e-3, torch.finfo(dtype).eps / 2)


@dataclass(frozen=True)
class Target:
    """Where and how a backend runs: ``backend=``, the device, what runs around it, what it needs."""

    backend: str
    device: torch.device
    context: Callable = contextlib.nullcontext
    marks: tuple = ()
    setup: Callable | None = None  # (monkeypatch) -> None: skips, fails or reroutes


def _tiles_16():
    from contrastive_ops.backends import chunked

    return chunked.block_size(16, 16)


def _cuda_cpu(monkeypatch):
    if not cuda_extension_expected():
        pytest.skip("the CUDA extension is not built here")
    route_cuda_to_cpu(monkeypatch)


CPU = torch.device("cpu")
GPU = torch.device("cuda")
TARGETS = {
    "naive": Target("naive", CPU),
    "chunked": Target("chunked", CPU, _tiles_16),
    "triton": Target("triton", DEVICE, marks=(pytest.mark.interpreter,), setup=lambda mp: skip_without_triton()),
    "cuda-cpu": Target("cuda", CPU, setup=_cuda_cpu),
    **{f"gpu-{b}": Target(b, GPU, marks=(pytest.mark.gpu,), setup=lambda mp, b=b: skip_without_gpu_backend(b))
       for b in ("chunked", "triton", "cuda")},
}

FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16
HALF_GPU_FLOOR = 1e-3
# (target, dtype, names, rel (or None), (loss floor, gradient floor) of the twice-PyTorch's-own bound (or None))
MATRIX = [
    ("naive", FP32, ALL, FP32_REL, None),
    ("chunked", FP32, ALL, FP32_REL, None),
    ("chunked", FP16, CHUNKED_HALF, None, (1e-3, _rounding(FP16))),
    ("chunked", BF16, CHUNKED_HALF, None, (1e-3, _rounding(BF16))),
    ("triton", FP32, ALL, FP32_REL, None),
    ("triton", FP16, TRITON_FP16, None, (1e-4, 1e-4)),
    ("cuda-cpu", FP32, ALL, FP32_REL, None),
    *[(f"gpu-{b}", dtype, GPU_NAMES, None, (floor, floor))
      for b in ("chunked", "triton") for dtype, floor in ((FP32, 1e-6), (FP16, HALF_GPU_FLOOR), (BF16, HALF_GPU_FLOOR))],
    *[("gpu-cuda", dtype, [name], FP32_REL if dtype == FP32 and name in CUDA_GPU_FP32_REL else None, (floor, floor))
      for name in ALL for dtype, floor in ((FP32, 1e-6), (FP16, HALF_GPU_FLOOR), (BF16, HALF_GPU_FLOOR))],
]

PARAMS = [pytest.param(name, target, dtype, rel, floors, marks=TARGETS[target].marks,
                       id=f"{name}-{target}-{str(dtype).removeprefix('torch.')}")
          for target, dtype, names, rel, floors in MATRIX for name in names]


@pytest.mark.parametrize(("name", "target", "dtype", "rel", "own_floors"), PARAMS)
def test_loss_and_every_gradient_against_float64(name, target, dtype, rel, own_floors, seed, monkeypatch):
    spec = TARGETS[target]
    if spec.setup is not None:
        spec.setup(monkeypatch)
    check_against_float64(CASES[name], make_inputs(CASES[name], dtype, spec.device), spec.backend, rel=rel,
                          own_floors=own_floors, context=spec.context, what=f"{name}/{target}/{dtype}")
