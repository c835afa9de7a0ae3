"""The static model of any Triton kernel, ours or another project's: compile it for sm_90a, read its
SASS, and model one launch (every figure MODELED).

    from benchmarks.static.any_kernel import model_kernel
    result = model_kernel(my_kernel, signature={"X": "*bf16", "N": "i32", ...},
                          constexprs={"BLOCK": 1024}, grid=(4096,), flops=0.0, dram_bytes=2**30,
                          warps=4, stages=3, ksteps=32)
    result["modeled_ms"], result["bound"]

``signature`` types every argument that is not a constexpr in Triton's strings (``*bf16``, ``*fp32``,
``i32``, ``fp32``, ...); arguments the JIT would specialize (an integer equal to 1, e.g. a unit
stride) belong in ``constexprs``. Pointers and the integers named in ``divisible`` get the JIT's
``tt.divisibility = 16`` mark (16-byte-aligned tensors, sizes and strides multiples of 16).
``ksteps`` is the trip count of the kernel's innermost MMA loop per tile (for a kernel without MMA,
of its largest innermost loop) and ``tiles_per_program`` the iterations of the loop around it, both
per program. The time is :meth:`.model.Launch.model`'s; ``flops`` are the launch's useful MMA FLOPs.
"""
from __future__ import annotations

import importlib
import inspect
import math
import os

from .model import H200, Device, KernelStats, Launch

os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def resolve(kernel):
    """A Triton ``JITFunction`` from itself or from ``(module, name)``."""
    if isinstance(kernel, tuple):
        module, name = kernel
        return getattr(importlib.import_module(module), name)
    return kernel


def compile_kernel(kernel, signature: dict, constexprs: dict, warps: int = 4, stages: int = 3,
                   divisible: tuple = (), arch: int = 90) -> KernelStats:
    """Compile ``kernel`` for ``sm_{arch}`` (sm_90a) and read registers, spills, shared memory and SASS."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .triton_report import read_compiled

    kernel = resolve(kernel)
    names = list(inspect.signature(kernel.fn).parameters)
    sig = {}
    for name in names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in signature:
            sig[name] = signature[name]
        else:
            raise ValueError(f"argument {name!r} of {kernel.fn.__name__} has no type in the signature")
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in sig.items()
             if t.startswith("*") or n in divisible}
    compiled = triton.compile(ASTSource(kernel, sig, dict(constexprs), attrs=attrs),
                              target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages})
    return read_compiled(compiled, kernel.fn.__name__, warps, stages)


def model_kernel(kernel, signature: dict, constexprs: dict, grid, flops: float, dram_bytes: float,
                 warps: int = 4, stages: int = 3, ksteps: int = 1, tiles_per_program: float = 1.0,
                 divisible: tuple = (), dtype: str = "bfloat16", device: Device = H200,
                 stats: KernelStats | None = None) -> dict:
    """Modeled time of one launch of ``kernel`` over ``grid`` (MODELED): ``modeled_ms``, ``bound``
    (``mma``, ``issue``, ``mma+epilogue (serial)`` or ``memory``), the parts, and ``stats`` (the
    compiled variant: registers, spills, MMA kind, SASS per tile, warp specialization)."""
    stats = stats or compile_kernel(kernel, signature, constexprs, warps, stages, divisible)
    programs = math.prod(grid) if isinstance(grid, (tuple, list)) else int(grid)
    launch = Launch(stats.kernel, stats, programs, tiles_per_program, ksteps, flops, dram_bytes)
    return {**launch.model(device, dtype), "stats": stats, "ctas_per_sm": stats.ctas_per_sm(device)}
