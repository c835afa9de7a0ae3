"""Backend registry and dispatch of the generic core.

=========  =============================================================  ==================
backend    what it is                                                       memory
=========  =============================================================  ==================
naive      materialized logits, autograd backward (oracle and baseline)    O(N·M)
chunked    pure PyTorch tiles, custom exact backward, any device           O((N+M)·D + tile)
triton     fused Triton kernels (``contrastive_ops.kernels``), CUDA only    O((N+M)·D)
cuda       CUDA C++ extension (``csrc/``), CUDA only                        O((N+M)·D)
=========  =============================================================  ==================

``"auto"`` picks a fused backend for CUDA tensors when one can run, else ``chunked``; it never
picks ``naive``.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Callable

import torch

from contrastive_ops.kernels import config as tile_config  # imports no Triton

from ..errors import BackendUnavailableError
from . import chunked, naive
from . import triton as triton_backend  # registers its torch.library ops; imports no Triton

__all__ = ["BACKENDS", "BackendUnavailableError", "available_backends", "backend_status", "compute_fn",
           "compute_terms", "resolve"]

BACKENDS = ("naive", "chunked", "triton", "cuda")
# Triton first: both run every loss, and the calibrated static model (benchmarks/static/, reports
# benchmarks/results/2026-12-03-static-*.md) puts the Triton kernels ahead on clip, info_nce, Ring and
# SigLIP at large D (42.1 vs 51.6, 8.2 vs 16.6, 5.3 vs 16.0, 34.8 vs 41.4 ms), and the extension needs a
# build. No GPU measurement yet.
AUTO_ORDER_CUDA = ("triton", "cuda", "chunked")


def _triton_status() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "Triton is not installed (pip install 'contrastive_ops[triton]')"
    from contrastive_ops import kernels

    if not kernels.KERNELS_PRESENT:
        return False, "this build ships no Triton kernels of the core"
    return True, "ok"


def _cuda_status() -> tuple[bool, str]:
    from contrastive_ops import _ext  # the extension's own loader; never imported at module level

    return _ext.status()


def backend_status(name: str, device: torch.device | None = None) -> tuple[bool, str]:
    """``(can_run, reason)`` for backend ``name`` on ``device`` (default: CPU)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")
    device = torch.device("cpu") if device is None else torch.device(device)
    if name in ("naive", "chunked"):
        return True, "ok"
    ok, why = _triton_status() if name == "triton" else _cuda_status()
    if not ok:
        return False, why
    if name == "triton" and device.type == "cpu" and tile_config.interpreting():
        return True, "ok (Triton interpreter: TRITON_INTERPRET=1)"
    if device.type != "cuda":
        hint = " (or on CPU tensors in Triton's interpreter: TRITON_INTERPRET=1)" if name == "triton" else ""
        return False, f"it runs on CUDA tensors only{hint}, these are on {device}"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is available"
    return True, "ok"


def available_backends(device: torch.device | None = None) -> list[str]:
    """Backends that can run on ``device`` (default: the current CUDA device if any, else CPU)."""
    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return [name for name in BACKENDS if backend_status(name, device)[0]]


def resolve(backend: str, device: torch.device) -> str:
    """The concrete backend name for ``backend`` on ``device`` (every backend computes every role of
    the core); raises if it cannot run there."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}: {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            for name in AUTO_ORDER_CUDA:
                if backend_status(name, device)[0]:
                    return name
        return "chunked"
    ok, why = backend_status(backend, device)
    if not ok:
        raise BackendUnavailableError(f"backend={backend!r} cannot run here: {why}")
    return backend


def compute_fn(backend: str) -> Callable:
    """The ``compute_terms(query, keys, extra, scale, spec)`` function of a concrete backend.

    Every backend module is imported statically (so ``torch.compile`` traces the dispatch); the
    Triton kernels and the extension themselves load on first use, so ``import contrastive_ops``
    needs neither Triton nor the extension.
    """
    if backend == "naive":
        return naive.compute_terms
    if backend == "chunked":
        return chunked.compute_terms
    if backend == "triton":
        return triton_backend.compute_terms
    if backend == "cuda":
        # imported here: importing it loads (or JIT-builds) the extension. A plain import
        # statement, unlike importlib, is traced by torch.compile.
        from . import cuda

        return cuda.compute_terms
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def compute_terms(query, keys, extra, scale, spec, backend: str = "auto", **bias):
    """The core's terms (:class:`contrastive_ops.core.ContrastiveTerms`) from ``backend`` (``"auto"``
    resolved for the query's device): the one entry point below the losses, for the functional API and
    the compat classes alike. ``query [N, D]``, ``keys [M, D]`` (may be ``query``), ``extra [R, D]`` or
    None, ``scale`` a float or 0-d tensor, ``spec`` a :class:`~contrastive_ops.core.RoleSpec`; ``bias=``
    only with ``spec.pairwise_sigmoid`` (backends that do not take the keyword serve every other loss)."""
    return compute_fn(resolve(backend, query.device))(query, keys, extra, scale, spec, **bias)
