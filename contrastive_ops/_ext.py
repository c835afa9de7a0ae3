"""The one lazy loader of the CUDA extension behind ``backend="cuda"``.

Nothing imports the extension at module level: ``import contrastive_ops`` works without it. On
first use :func:`load` imports the prebuilt ``contrastive_ops._cuda_ext`` (built by ``setup.py``
when nvcc was found), or, where it was not built and nvcc and ninja are present with the sources
(an editable checkout), JIT-builds it with ``torch.utils.cpp_extension.load`` into
``$CONTRASTIVE_OPS_CUDA_BUILD_DIR`` (default ``build/cuda-jit`` in the checkout; targets from
``CONTRASTIVE_OPS_CUDA_ARCHS``). Either way the operators ``torch.ops.contrastive_ops_cuda.*`` get
registered. Failures are :class:`~contrastive_ops.errors.BackendUnavailableError` with the reason
and the fix.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import shutil
from pathlib import Path

from . import _build
from .errors import BackendUnavailableError

MODULE = "contrastive_ops._cuda_ext"
JIT_NAME = "contrastive_ops_cuda_jit"
OPS_NAMESPACE = "contrastive_ops_cuda"
FIX = (
    "build it with the CUDA toolkit (nvcc) on PATH: pip install --no-build-isolation -e . "
    "(CONTRASTIVE_OPS_BUILD_CUDA=1 makes a failed build an error)"
)


def prebuilt() -> bool:
    """Whether ``setup.py`` built the extension into the package."""
    return importlib.util.find_spec(MODULE) is not None


def jit_status() -> tuple[bool, str]:
    """``(possible, reason)``: can the extension be JIT-built here?"""
    missing = [name for name in _build.CU_SOURCES + _build.CPP_SOURCES if not (_build.CSRC / name).is_file()]
    if missing:
        return False, f"the sources ({_build.CSRC}) are not part of this install"
    if _build.find_nvcc() is None:
        return False, "nvcc was not found"
    if shutil.which("ninja") is None:
        return False, "ninja was not found (pip install ninja) for a JIT build"
    return True, "ok"


def build_dir() -> Path:
    return Path(os.environ.get("CONTRASTIVE_OPS_CUDA_BUILD_DIR") or _build.REPO / "build" / "cuda-jit")


def jit_build(directory: Path | None = None, archs: list[str] | None = None, verbose: bool = False) -> Path:
    """Compile the kernels with nvcc and the torch glue with ninja into ``directory``, load the
    library (registering the operators) and return its path. Rebuilds only what changed."""
    from torch.utils.cpp_extension import load as torch_load

    directory = Path(directory or build_dir())
    objects = _build.compile_kernels(directory / "kernels", archs, verbose=verbose)
    torch_load(
        name=JIT_NAME,
        sources=[str(_build.CSRC / name) for name in _build.CPP_SOURCES],
        extra_include_paths=_build.include_dirs(),
        extra_ldflags=[str(o) for o in objects] + _build.link_args(),
        build_directory=str(directory),
        with_cuda=False,
        is_python_module=False,
        verbose=verbose,
    )
    return directory / f"{JIT_NAME}.so"


@functools.cache
def load() -> str:
    """Load the extension once; returns where it came from. Raises BackendUnavailableError."""

    if prebuilt():
        try:
            return importlib.import_module(MODULE).__file__
        except (ImportError, OSError) as exc:
            raise BackendUnavailableError(
                f"the CUDA extension {MODULE} is built but fails to load ({exc}); rebuild it: {FIX}"
            ) from exc
    ok, why = jit_status()
    if not ok:
        raise BackendUnavailableError(f"the CUDA extension is not built and cannot be JIT-built here ({why}); {FIX}")
    try:
        return str(jit_build())
    except _build.BuildError as exc:
        raise BackendUnavailableError(f"the JIT build of the CUDA extension failed: {exc}") from exc


@functools.cache
def status() -> tuple[bool, str]:
    """``(usable, reason)`` of the extension itself, device aside. Loads a prebuilt extension (cheap)
    but never starts a JIT build: that happens on first use."""
    if prebuilt():
        try:
            load()
        except ValueError as exc:
            return False, str(exc)
        return True, "ok"
    ok, why = jit_status()
    if ok:
        return True, "ok (not prebuilt: JIT-built with nvcc and ninja on first use)"
    return False, f"the CUDA extension is not built ({why}); {FIX}"


def built_targets() -> list[str]:
    """What the loaded extension holds code for: machine code per SM target and embedded PTX,
    e.g. ``["sm_80", "sm_90", "compute_90"]``."""
    import torch

    load()
    return torch.ops.contrastive_ops_cuda.built_archs().split()


def built_archs() -> list[str]:
    """SM targets with machine code in the loaded extension, e.g. ``["sm_80", "sm_90"]``."""
    return [t for t in built_targets() if t.startswith("sm_")]


def describe() -> str:
    """One line for ``python -m contrastive_ops.info``: built or not, archs, where from."""
    if prebuilt():
        try:
            where = load()
        except ValueError as exc:
            return f"built but fails to load: {exc}"
        ptx = [t for t in built_targets() if t.startswith("compute_")]
        return f"built for {', '.join(built_archs())}{' + PTX ' + ', '.join(ptx) if ptx else ''} ({where})"
    ok, why = jit_status()
    if ok:
        return f"not built; JIT-buildable on first use (nvcc {_build.nvcc_version()}, ninja) into {build_dir()}"
    return f"not built ({why}); {FIX}"
