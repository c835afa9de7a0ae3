"""Static kernel report: what the compiled Triton kernels are on Hopper, and a roofline model of the
headline workloads built from it. No GPU needed.

    python -m benchmarks.kernel_report                      # markdown on stdout
    python -m benchmarks.kernel_report --json rows.json     # and one JSON row per workload × kernel
    python -m benchmarks.kernel_report --subset ci          # the few variants CI checks

Every kernel variant a workload launches is compiled ahead of time for sm_90a by Triton's own
compiler (16-byte-aligned pointers and sizes, as the JIT marks them for real shapes); Triton's bundled
ptxas (``-v``) gives registers and spills, its cuobjdump the SASS. From the SASS: the MMA kind and count
(HGMMA = wgmma, HMMA = mma.sync), and the instructions of one tile iteration — the smallest loop that
contains the dot product's k-loop, with the k-loop counted once per ``BLOCK_D`` step of D.

The model (every figure it gives is *modeled*, never measured) charges each launch the largest of:

* MMA: its useful dot-product FLOPs at the device's matmul rate;
* issue: its SASS instructions per tile × warps, at 4 warp-instructions per clock per SM;
* MUFU: its exp/log instructions per tile × threads, at 16 per clock per SM;
* memory: its DRAM bytes at the copy bandwidth,

per wave of CTAs (wave quantization included), assuming those overlap perfectly, plus, for a Triton
kernel running one CTA per SM, an exposed refill of the operand pipeline at every tile (its k-loop
restarts there: ``refill_cycles``, an L2-latency assumption). cuBLAS products
(``torch.mm`` in the chunk route) are charged at the matmul rate or their bytes, whichever is larger.
:data:`H200` holds the constants; the benchmark suite passes the rates it measured instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# the kernels must be decorated for compiling, not interpreting: before any Triton import
os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    sms: int
    clock_hz: float  # sustained SM clock under MMA load (assumed)
    mma_flops: dict  # dtype -> dense matmul FLOP/s (bf16/fp16 measured on an H200 here; tf32 assumed half)
    dram_bytes_s: float  # copy bandwidth (measured on an H200 here)
    issue_per_clock: int = 4  # warp-instructions per clock per SM (4 schedulers)
    mufu_per_clock: int = 16  # exp2/log2/rcp lanes per clock per SM
    regs_per_sm: int = 65536
    smem_per_sm: int = 227 * 1024  # usable by one CTA's dynamic shared memory
    threads_per_sm: int = 2048
    refill_cycles: int = 500  # a tile's first operand loads (L2 hits), exposed with one CTA per SM (assumed)


#: H100/H200-class device (sm_90a, 132 SMs). 790 TFLOP/s bf16 and 4.3 TB/s were measured on an H200;
#: the clock and the tf32 rate are assumptions.
H200 = Device(name="H200 (sm_90a, 132 SMs)", sms=132, clock_hz=1.83e9,
              mma_flops={"bfloat16": 790e12, "float16": 790e12, "float32": 395e12}, dram_bytes_s=4.3e12)

DTYPE_TYPES = {"bfloat16": "*bf16", "float16": "*fp16", "float32": "*fp32"}
ITEMSIZE = {"bfloat16": 2, "float16": 2, "float32": 4}
INTS = {"N", "M", "M_TOTAL", "D", "GUIDE_D", "stride_q", "stride_c", "stride_gr", "stride_gc", "stride_dq", "stride_dc",
        "stride_x", "stride_g", "stride_dx", "stride_ds", "row0", "col0", "chunk_rows", "chunk_cols"}
INT_POINTERS = {"POS": "*i64", "SELF": "*i64", "ROW_LABELS": "*i64", "COL_LABELS": "*i64", "ROW_DEN": "*i32",
                "ROW_POS_N": "*i32", "PART_DEN": "*i32", "PART_POS_N": "*i32", "COUNT": "*i32",
                "RANK_TOP": "*i32", "RANK_BOTTOM": "*i32"}
FEATURES = {"Q", "C", "QH", "CH", "X", "DX", "DS", "GUIDE_ROWS", "GUIDE_COLS"}  # the guide in the features' dtype
SWITCHES = ("HAS_POS", "HAS_LABELS", "MASK_LABELS", "HAS_SELF", "KEY_NEGATIVES", "DECOUPLED", "HAS_BAND",
            "NORMALIZE", "COLUMN_TERMS", "HARD_NEGATIVES", "PAIRWISE_SIGMOID")


# ---------------------------------------------------------------------------------------------
# compiling one variant and reading its code
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class KernelStats:
    """What the compiler made of one kernel variant."""

    kernel: str
    warps: int
    stages: int
    registers: int
    spill_stores: int
    spill_loads: int
    shared: int
    mma_kind: str  # "wgmma" (HGMMA), "mma.sync" (HMMA), "none"
    mma_count: int  # static MMA instructions in the whole kernel
    tile_instructions: int  # per thread, one tile iteration with its k-loop once (see kloop_instructions)
    kloop_instructions: int  # per thread, one step of the dot product's k-loop (0: no k-loop)
    tile_mufu: int  # MUFU instructions in one tile iteration outside the k-loop
    total_instructions: int
    # per-branch counts (plain tiles / the others), where the kernel has the plain-tile branch
    plain: KernelStats | None = None
    general: KernelStats | None = None
    plain_fraction: float = 0.0  # share of the workload's tiles that are plain (set per launch)

    def per_tile(self, ksteps: int) -> float:
        if self.plain is not None and self.general is not None:
            f = self.plain_fraction
            return f * self.plain.per_tile(ksteps) + (1 - f) * self.general.per_tile(ksteps)
        return self.tile_instructions + self.kloop_instructions * (ksteps - 1)

    def mufu_per_tile(self) -> float:
        if self.plain is not None and self.general is not None:
            f = self.plain_fraction
            return f * self.plain.tile_mufu + (1 - f) * self.general.tile_mufu
        return self.tile_mufu

    def ctas_per_sm(self, device: Device) -> int:
        threads = 32 * self.warps
        by_regs = device.regs_per_sm // (max(8, math.ceil(self.registers / 8) * 8) * threads)
        by_smem = device.smem_per_sm // self.shared if self.shared else 32
        return max(0, min(by_regs, by_smem, device.threads_per_sm // threads, 32))


def _tool(name: str) -> str:
    import triton

    base = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    for candidate in (f"{name}-blackwell", name):  # the newer ptxas reads the PTX versions Triton writes
        if (base / candidate).is_file() and subprocess.run([str(base / candidate), "--version"], capture_output=True,
                                                           check=False).returncode == 0:
            return str(base / candidate)
    raise FileNotFoundError(f"Triton's bundled {name} was not found under {base}")


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)([.A-Z0-9_x]*)\s*([^;]*);")


def _parse_sass(text: str):
    """``[(address, opcode, modifiers, operands)]`` of the instructions of one kernel's SASS."""
    return [(int(m.group(1), 16), m.group(3), m.group(4), m.group(5)) for m in _SASS_LINE.finditer(text)]


def _loops(instructions):
    """Loops as ``(start, end)`` address pairs, from the backward branches."""
    loops = []
    for address, opcode, _, operands in instructions:
        if opcode == "BRA":
            target = re.search(r"0x([0-9a-f]+)", operands)
            if target and int(target.group(1), 16) < address:
                loops.append((int(target.group(1), 16), address))
    return loops


def _sass_stats(instructions):
    mma = [i for i in instructions if i[1] in ("HGMMA", "HMMA")]
    kind = "wgmma" if any(i[1] == "HGMMA" for i in mma) else ("mma.sync" if mma else "none")
    loops = _loops(instructions)

    def inside(loop):
        return [i for i in instructions if loop[0] <= i[0] <= loop[1]]

    def has_mma(loop):
        return any(i[1] in ("HGMMA", "HMMA") for i in inside(loop))

    # k-loops: loops with MMA containing no other loop with MMA
    mma_loops = [lp for lp in loops if has_mma(lp)]
    kloops = [lp for lp in mma_loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in mma_loops)]
    # the tile loop: the smallest loop strictly containing a k-loop; a kernel of one tile per program
    # (no such loop) counts as a whole
    outer = [lp for lp in loops if any(lp != k and lp[0] <= k[0] and k[1] <= lp[1] for k in kloops)]
    if outer:
        tile = min(outer, key=lambda lp: lp[1] - lp[0])
    else:
        tile = (instructions[0][0], instructions[-1][0]) if instructions else (0, 0)
    body = inside(tile)
    inner = [k for k in kloops if tile != k and tile[0] <= k[0] and k[1] <= tile[1]]
    in_kloop = {i[0] for k in inner for i in inside(k)}
    kloop_instructions = len(inside(inner[0])) if inner else 0
    mufu = sum(1 for i in body if i[1] == "MUFU" and i[0] not in in_kloop)
    return kind, len(mma), len(body), kloop_instructions, mufu


def with_defaults(kernel, constexprs: dict) -> dict:
    """``constexprs`` plus the defaults of ``kernel``'s constexpr parameters it leaves out (switches
    that the launch passes only when they are on)."""
    out = dict(constexprs)
    for name, param in inspect.signature(kernel.fn).parameters.items():
        if name not in out and param.default is not inspect.Parameter.empty:
            out[name] = param.default
    return out


def kernel_signature(kernel, feature_type: str, constexprs: dict) -> dict:
    """Triton's compile signature of ``kernel``: constexprs, i32 sizes, typed pointers. ``constexprs``
    must name every constexpr parameter (see :func:`with_defaults`)."""
    sig = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in INTS:
            sig[name] = "i32"
        elif name == "beta":
            sig[name] = "fp32"
        elif name in FEATURES:
            sig[name] = feature_type
        else:
            sig[name] = INT_POINTERS.get(name, "*fp32")
    return sig


def aligned(kernel, signature: dict) -> dict:
    """Triton's ``tt.divisibility = 16`` marks on every pointer and integer argument, as the JIT
    specializes them for real shapes (16-byte-aligned tensors, sizes and strides multiples of 16)."""
    names = list(inspect.signature(kernel.fn).parameters)
    return {(names.index(k),): [["tt.divisibility", 16]] for k, v in signature.items()
            if v.startswith("*") or v == "i32"}


@functools.cache
def _fixed_branches():
    """Stand-ins for ``tiles.plain_tile`` that decide every tile alike (see :func:`compile_stats`)."""
    import triton

    @triton.jit
    def always_plain(row0, c0, inside, rows, row_mask, N, M, M_TOTAL, POS, SELF, HAS_POS, HAS_SELF, KEY_NEGATIVES,
                     BLOCK_M, BLOCK_N):
        return True

    @triton.jit
    def never_plain(row0, c0, inside, rows, row_mask, N, M, M_TOTAL, POS, SELF, HAS_POS, HAS_SELF, KEY_NEGATIVES,
                    BLOCK_M, BLOCK_N):
        return False

    return {"plain": always_plain, "general": never_plain}


def _reset_hashes(module) -> None:
    from triton.runtime.jit import JITFunction

    for value in vars(module).values():
        if isinstance(value, JITFunction):
            value.hash = None


@functools.cache
def compile_stats(module: str, kernel_name: str, dtype: str, constexpr_items: tuple, warps: int, stages: int,
                  branch: str = "both", arch: int = 90) -> KernelStats:
    """Compile ``module.kernel_name`` for ``sm_{arch}`` (sm_90a on Hopper) and read its code.

    ``branch``: ``"both"`` is the kernel as shipped (registers, spills and shared memory come from it);
    ``"plain"`` / ``"general"`` compile it with every tile taken as plain / not plain (``plain_tile``
    replaced by a constant), so that the SASS of one tile iteration counts the instructions of that
    branch alone: the static count of the shipped kernel holds both."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    mod = importlib.import_module(module)
    kernel = getattr(mod, kernel_name)
    params = inspect.signature(kernel.fn).parameters
    constexprs = with_defaults(kernel, {k: v for k, v in constexpr_items if k in params})
    signature = kernel_signature(kernel, DTYPE_TYPES[dtype], constexprs)
    original = getattr(mod, "plain_tile", None)
    if branch != "both" and original is not None:
        mod.plain_tile = _fixed_branches()[branch]
        _reset_hashes(mod)
    try:
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs=aligned(kernel, signature)),
                                  target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": warps, "num_stages": stages})
    finally:
        if branch != "both" and original is not None:
            mod.plain_tile = original
            _reset_hashes(mod)
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = Path(tmp, "k.ptx"), Path(tmp, "k.cubin")
        ptx.write_text(compiled.asm["ptx"])
        cubin.write_bytes(compiled.asm["cubin"])
        target = re.search(r"\.target\s+(\S+)", compiled.asm["ptx"]).group(1)
        verbose = subprocess.run([_tool("ptxas"), f"-arch={target}", "-v", str(ptx), "-o", str(Path(tmp, "v.cubin"))],
                                 capture_output=True, text=True, check=True).stderr
        sass = subprocess.run([_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    registers = int(re.search(r"Used (\d+) registers", verbose).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", verbose)
    kind, mma_count, tile_instr, kloop_instr, mufu = _sass_stats(_parse_sass(sass))
    return KernelStats(kernel=kernel_name, warps=warps, stages=stages, registers=registers,
                       spill_stores=int(spills.group(1)) if spills else 0,
                       spill_loads=int(spills.group(2)) if spills else 0, shared=compiled.metadata.shared,
                       mma_kind=kind, mma_count=mma_count, tile_instructions=tile_instr,
                       kloop_instructions=kloop_instr, tile_mufu=mufu,
                       total_instructions=len(_parse_sass(sass)))


# ---------------------------------------------------------------------------------------------
# workloads and the launches they make
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
    """One loss call, forward + backward: logits ``n × m_total`` (``m`` in-batch keys) of dimension d."""

    loss: str
    n: int
    m: int
    d: int
    dtype: str
    flags: tuple  # switches as (name, value) pairs
    extra: int = 0  # extra negatives (queue rows)
    ring_radix_bits: int = 0  # > 0: a Ring band is selected first

    @property
    def m_total(self) -> int:
        return self.m + self.extra

    def switch(self, name: str) -> bool:
        return dict(self.flags)[name]

    def floor_flops(self) -> float:
        """Useful dot-product FLOPs of forward + backward: S, S again, dQ and dK."""
        return 8.0 * self.n * self.m_total * self.d


def _flags(**on) -> tuple:
    base = dict.fromkeys(SWITCHES, False)
    base.update(on)
    return tuple(sorted(base.items()))


#: the roles of the modeled losses (switches as the triton backend sets them) and their Ring radix bits
MODELED_LOSSES = {
    "clip": ({"HAS_POS": True, "KEY_NEGATIVES": True, "COLUMN_TERMS": True}, 0),
    "info_nce": ({"HAS_POS": True, "KEY_NEGATIVES": True, "NORMALIZE": True}, 0),
    "siglip": ({"HAS_POS": True, "KEY_NEGATIVES": True, "NORMALIZE": True, "DECOUPLED": True, "PAIRWISE_SIGMOID": True}, 0),
    "supcon": ({"HAS_LABELS": True, "HAS_SELF": True, "KEY_NEGATIVES": True, "NORMALIZE": True}, 0),
    "ring": ({"HAS_POS": True, "KEY_NEGATIVES": True, "NORMALIZE": True, "HAS_BAND": True}, 4),
}


def workload(loss: str, n: int, m: int, d: int, dtype: str) -> Workload:
    flags, radix_bits = MODELED_LOSSES[loss]
    return Workload(loss, n, m, d, dtype, _flags(**flags), ring_radix_bits=radix_bits)


def headline_workloads(d_values=(128, 768), n: int = 65536) -> list[Workload]:
    """The workloads of the report: the headlines (symmetric CLIP and InfoNCE, bf16, 65536²) and one
    of each role family (SupCon and Ring at half the batch), at D = 128 and 768."""
    return [workload(loss, n // 2 if loss in ("supcon", "ring") else n, n // 2 if loss in ("supcon", "ring") else n,
                     d, "bfloat16") for d in d_values for loss in MODELED_LOSSES]


def modeled_ms(loss: str, n: int, m: int, d: int, dtype: str, mma_tflops: float | None = None,
               bandwidth_bytes_s: float | None = None) -> float | None:
    """The model's forward + backward milliseconds of the triton backend for one benchmark point, with
    the default tile configs and, when given, the rates measured on this device; None for a loss
    the model does not cover. For the benchmark suite's rows (measured beside modeled)."""
    if loss not in MODELED_LOSSES:
        return None
    device = H200
    if mma_tflops:
        device = dataclasses.replace(device, mma_flops={"bfloat16": mma_tflops * 1e12, "float16": mma_tflops * 1e12,
                                                        "float32": mma_tflops * 0.5e12})
    if bandwidth_bytes_s:
        device = dataclasses.replace(device, dram_bytes_s=bandwidth_bytes_s)
    return default_configs(workload(loss, n, m, d, dtype), device)[1]["modeled_ms"]


@dataclasses.dataclass
class Launch:
    """One kernel launch (or a group of equal ones) of a workload, with its modeled time."""

    kernel: str
    variant: KernelStats | None  # None: a library call (cuBLAS GEMM, torch elementwise)
    programs: int
    tiles_per_program: float
    ksteps: int
    flops: float
    dram_bytes: float
    note: str = ""

    def model(self, device: Device, dtype: str) -> dict:
        """Modeled milliseconds: the largest of the MMA, issue, MUFU and memory times, plus for a
        Triton tile kernel the operand pipeline's refill at every tile (its k-loop restarts per tile;
        another CTA on the SM hides it)."""
        mma_s = self.flops / device.mma_flops[dtype]
        mem_s = self.dram_bytes / device.dram_bytes_s
        parts = {"mma_ms": mma_s * 1e3, "memory_ms": mem_s * 1e3, "issue_ms": 0.0, "mufu_ms": 0.0}
        refill_ms = 0.0
        if self.variant is not None:
            v = self.variant
            ctas = max(1, v.ctas_per_sm(device))
            waves = math.ceil(self.programs / (device.sms * ctas))
            per_sm_tiles = waves * self.tiles_per_program * ctas
            cycles_issue = per_sm_tiles * v.per_tile(self.ksteps) * v.warps / device.issue_per_clock
            cycles_mufu = per_sm_tiles * v.mufu_per_tile() * 32 * v.warps / device.mufu_per_clock
            parts["issue_ms"] = cycles_issue / device.clock_hz * 1e3
            parts["mufu_ms"] = cycles_mufu / device.clock_hz * 1e3
            # MMA with wave quantization: the busiest SM does per_sm_tiles tiles of the average tile's FLOPs
            tile_flops = self.flops / max(1.0, self.programs * self.tiles_per_program)
            parts["mma_ms"] = max(parts["mma_ms"], per_sm_tiles * tile_flops * device.sms / device.mma_flops[dtype] * 1e3)
            if ctas == 1:
                refill_ms = per_sm_tiles * device.refill_cycles / device.clock_hz * 1e3
        bound = max(parts, key=parts.get)
        return {**parts, "refill_ms": refill_ms, "modeled_ms": parts[bound] + refill_ms,
                "bound": bound.removesuffix("_ms")}


def _stats(module, name, w: Workload, config, extra=(), plain_fraction=0.0):
    """The variant of ``module.name`` that ``w`` launches with ``config``, with its per-branch counts
    where it has the plain-tile branch and ``w``'s roles allow plain tiles."""
    constexprs = dict(w.flags)
    constexprs.update(INPUT_PRECISION="tf32" if w.dtype == "float32" else "ieee",
                      BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_D=config.block_d_for(w.d))
    constexprs.update(extra)
    key = (module, name, w.dtype, tuple(sorted(constexprs.items())), config.num_warps, config.num_stages)
    stats = dataclasses.replace(compile_stats(*key))
    import importlib

    if hasattr(importlib.import_module(module), "plain_tile") and plain_fraction > 0:
        stats.plain, stats.general = compile_stats(*key, branch="plain"), compile_stats(*key, branch="general")
        stats.plain_fraction = plain_fraction
    return stats


def plain_fraction(w: Workload, config, columns_first: bool = False) -> float:
    """Share of ``w``'s tiles that ``tiles.plain_tile`` finds plain: none with labels or a Ring band;
    else all but those holding a positive or self pair (one index per row: the ``ceil(BM/BN)`` tiles of
    a row block's diagonal each, for ``columns_first`` programs ``ceil(BN/BM)``) and the edges."""
    if w.switch("HAS_LABELS") or w.switch("MASK_LABELS") or w.switch("HAS_BAND"):
        return 0.0
    per_index = _cdiv(config.block_n, config.block_m) if columns_first else _cdiv(config.block_m, config.block_n)
    special = (int(w.switch("HAS_POS")) + int(w.switch("HAS_SELF"))) * per_index
    across = _cdiv(w.n, config.block_m) if columns_first else _cdiv(w.m_total, config.block_n)
    return max(0.0, 1.0 - special / across)


def _cdiv(a, b):
    return -(-a // b)


def _row_products_switches(d: int) -> dict:
    return {"ROW_GRAD": True, "ACC_D": max(16, 1 << (d - 1).bit_length())}


def row_products_used(w: Workload) -> bool:
    """Whether the triton backend's forward forms the rows' gradient products for ``w`` (as it does
    when the rows' gradient is asked for)."""
    from contrastive_ops.kernels import config as cfg

    return hasattr(cfg, "row_grad_supported") and cfg.row_grad_supported(dict(w.flags), w.d)


def launches(w: Workload, fwd_config, bwd_config, device: Device) -> list[Launch]:
    """The launches of one forward + backward of ``w`` on the current kernels, tiles as configured."""
    from contrastive_ops.kernels import contrastive_bwd as bwd

    item = ITEMSIZE[w.dtype]
    n, mt, d = w.n, w.m_total, w.d
    inputs = (n + mt) * d * item
    out: list[Launch] = []
    f, b = fwd_config, bwd_config
    ks_f = _cdiv(d, f.block_d_for(d))
    row_blocks = _cdiv(n, f.block_m)
    col_tiles = _cdiv(mt, f.block_n)
    if w.switch("NORMALIZE"):
        out.append(Launch("inverse norms", None, 0, 0, 1, 0.0, inputs, note="torch-free Triton row pass"))
    if w.ring_radix_bits:
        passes = 32 // w.ring_radix_bits
        stats = _stats("contrastive_ops.kernels.ring_select", "_ring_select_kernel", w, f,
                       {"RADIX_BITS": w.ring_radix_bits})
        slots = device.sms * max(1, stats.ctas_per_sm(device))
        out.append(Launch("ring select", stats, row_blocks, col_tiles * passes, ks_f,
                          2.0 * n * mt * d * passes, inputs * _cdiv(row_blocks, slots) * passes,
                          note=f"{passes} radix passes, each recomputing every tile"))
    # forward: persistent programs; symmetric losses own [P, M] column partials; row-only losses with
    # one positive per row also form the rows' gradient products (an online softmax times Ĉ)
    row_products = row_products_used(w)
    if row_products and w.switch("NORMALIZE"):
        out.append(Launch("unit columns (the row products' operand)", None, 0, 0, 1, 0.0, 2 * mt * d * item))
    extra_f = _row_products_switches(d) if row_products else {}
    fwd_stats = _stats("contrastive_ops.kernels.contrastive_fwd", "_contrastive_fwd_kernel", w, f, extra_f,
                       plain_fraction=plain_fraction(w, f))
    slots = device.sms * max(1, fwd_stats.ctas_per_sm(device))
    programs = min(row_blocks, device.sms) if w.switch("COLUMN_TERMS") else row_blocks
    partial_bytes = row_blocks * w.m * 16 * 2 if w.switch("COLUMN_TERMS") else 0
    operand_passes = 2 if row_products else 1  # Ĉ is read beside the raw columns
    out.append(Launch("forward" + (" + row products" if row_products else ""), fwd_stats, programs,
                      row_blocks / programs * col_tiles, ks_f, (4.0 if row_products else 2.0) * n * mt * d,
                      n * d * item + operand_passes * mt * d * item * _cdiv(row_blocks, slots) + partial_bytes
                      + (n * d * 4 if row_products else 0)))
    # backward
    registers = bwd.uses_registers(b, d) if hasattr(bwd, "uses_registers") else b.block_d_for(d) >= d
    ks_b = _cdiv(d, b.block_d_for(d))
    grads = (n + mt) * d * 4  # fp32 dQ̂, dĈ
    if row_products:  # dQ̂ = s·(g_lse·A + g_pos·ĉ_pos): fp32 rows read and written, a gather of Ĉ
        # A read, dQ̂ written and scaled (fp32), the positives' columns gathered, Q̂ read for the scale
        out.append(Launch("backward dQ̂ from the row products (torch)", None, 0, 0, 1, 0.0,
                          n * d * (4 + 4 + 4 + item) + n * d * item))
    if registers or not hasattr(bwd, "_contrastive_bwd_ds_kernel"):
        sliced = not registers  # the former route: fp32 rows read and written per tile in global memory
        extra = {"ONE_D_BLOCK": registers}
        passes = [("backward dQ", "_contrastive_bwd_dq_kernel", _cdiv(n, b.block_m), _cdiv(mt, b.block_n), b.block_m),
                  ("backward dC", "_contrastive_bwd_dc_kernel", _cdiv(mt, b.block_n), _cdiv(n, b.block_m), b.block_n)]
        for name, kernel, programs, tiles, rows in passes[1:] if row_products else passes:
            stats = _stats("contrastive_ops.kernels.contrastive_bwd", kernel, w, b, extra,
                           plain_fraction=plain_fraction(w, b, columns_first=kernel.endswith("dc_kernel")))
            slots = device.sms * max(1, stats.ctas_per_sm(device))
            traffic = programs * tiles * 8.0 * rows * d if sliced else 0.0
            out.append(Launch(name, stats, programs, tiles, ks_b, 4.0 * n * mt * d,
                              inputs * _cdiv(programs, slots) + grads / 2 + traffic,
                              note="fp32 rows read+written per tile" if sliced else "accumulators in registers"))
    else:
        rows, cols = bwd.chunk_shape(n, mt, item, b)
        chunks = _cdiv(n, rows) * _cdiv(mt, cols)
        stats = _stats("contrastive_ops.kernels.contrastive_bwd", "_contrastive_bwd_ds_kernel", w, b,
                       plain_fraction=plain_fraction(w, b))
        tiles = _cdiv(min(rows, n), b.block_m) * _cdiv(min(cols, mt), b.block_n)
        ds_bytes = float(n) * mt * item
        # one program per tile, over all chunks (a launch per chunk of `tiles` programs)
        out.append(Launch("backward dS chunks", stats, tiles * chunks, 1, ks_b, 2.0 * n * mt * d,
                          ds_bytes + inputs * _cdiv(n, rows),
                          note=f"{chunks} chunks of {rows}×{cols}; each launch {tiles} tiles"))
        row_chunks, col_chunks = _cdiv(n, rows), _cdiv(mt, cols)
        # per chunk and product: dS and the other side's rows read, an fp32 product written, then read
        # and added into the fp32 rows (4 fp32 row passes); one scaling pass over dQ̂, dĈ at the end
        if row_products:  # only the dĈ products
            gemm_bytes = ds_bytes + col_chunks * n * d * item + 16.0 * d * row_chunks * mt + grads
            out.append(Launch("backward dĈ += dSᵀ·Q̂ (torch.mm)", None, 0, 0, 1, 2.0 * n * mt * d,
                              gemm_bytes, note="cuBLAS, fp32 output, added into the fp32 rows"))
        else:
            gemm_bytes = (2 * ds_bytes + row_chunks * mt * d * item + col_chunks * n * d * item
                          + 16.0 * d * (col_chunks * n + row_chunks * mt) + 2 * grads)
            out.append(Launch("backward dQ += dS·Ĉ, dĈ += dSᵀ·Q̂ (torch.mm)", None, 0, 0, 1, 4.0 * n * mt * d,
                              gemm_bytes, note="cuBLAS, fp32 output, added into the fp32 rows"))
    if w.switch("NORMALIZE") and hasattr(bwd, "unit_rows"):
        # Q̂ and Ĉ read and written; with row products only Q̂ (no dQ product needs Ĉ)
        unit_bytes = 2 * n * d * item if row_products else 2 * inputs
        out.append(Launch("unit rows (the products' operands)", None, 0, 0, 1, 0.0, unit_bytes))
    out.append(Launch("normalize backward" if w.switch("NORMALIZE") else "cast gradients", None, 0, 0, 1, 0.0,
                      grads + inputs * 2))
    return out


def model_workload(w: Workload, fwd_config, bwd_config, device: Device = H200) -> tuple[list[dict], dict]:
    """Rows per launch and the total of ``w`` (modeled)."""
    rows = []
    for launch in launches(w, fwd_config, bwd_config, device):
        m = launch.model(device, w.dtype)
        v = launch.variant
        rows.append({
            "loss": w.loss, "n": w.n, "m": w.m_total, "d": w.d, "dtype": w.dtype, "mode": "fwd_bwd",
            "backend": "triton", "kernel": launch.kernel,
            "config": None if v is None else (bwd_config if launch.kernel.startswith("backward") else fwd_config).as_list(),
            "registers": None if v is None else v.registers, "spill_bytes": None if v is None else v.spill_stores,
            "shared_bytes": None if v is None else v.shared, "ctas_per_sm": None if v is None else v.ctas_per_sm(device),
            "mma": None if v is None else f"{v.mma_kind} ×{v.mma_count}",
            "instructions_per_tile": None if v is None else round(v.per_tile(launch.ksteps)),
            "mufu_per_tile": None if v is None else round(v.mufu_per_tile(), 1),
            "plain_tiles": None if v is None or v.plain is None else round(v.plain_fraction, 4), "note": launch.note, **m,
        })
    total = sum(r["modeled_ms"] for r in rows)
    floor = w.floor_flops() / device.mma_flops[w.dtype] * 1e3
    total_row = {"loss": w.loss, "n": w.n, "m": w.m_total, "d": w.d, "dtype": w.dtype, "mode": "fwd_bwd",
                 "backend": "triton", "kernel": "total", "modeled_ms": total, "floor_ms": floor,
                 "share_of_matrix_rate": floor / total if total else None,
                 "fwd_config": fwd_config.as_list(), "bwd_config": bwd_config.as_list()}
    return rows, total_row


def best_configs(w: Workload, device: Device = H200):
    """The forward and backward configs among the tuner's candidates with the smallest modeled time
    (the tuner itself picks by measurement on the GPU). A Ring backward keeps the forward's config."""
    from contrastive_ops.kernels import config as cfg

    best = None
    fwd_candidates = cfg.GPU_CONFIGS
    bwd_candidates = cfg.backward_candidates(w.d) if hasattr(cfg, "backward_candidates") else (None,)
    for f in fwd_candidates:
        for b in bwd_candidates:
            b = f if (b is None or w.ring_radix_bits) else b
            try:
                rows, total = model_workload(w, f, b, device)
            except Exception as exc:  # noqa: BLE001  (a candidate that does not compile is skipped, with why)
                print(f"# {w.loss} d={w.d}: config {f.as_list()}/{b.as_list()} skipped: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
                continue
            if best is None or total["modeled_ms"] < best[1]["modeled_ms"]:
                best = (rows, total)
            if b is f:
                break
    return best


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------


def variant_table(stats_rows: list[tuple[str, KernelStats]], device: Device = H200) -> str:
    lines = [("| variant | warps/stages | regs | spill B (st/ld) | shared KB | CTAs/SM | MMA "
              "| SASS/tile plain · other (k-step) | MUFU/tile plain · other |"), "|---|---|---|---|---|---|---|---|---|"]
    for label, s in stats_rows:
        if s.plain is not None:
            sass = f"{s.plain.tile_instructions} · {s.general.tile_instructions} ({s.general.kloop_instructions})"
            mufu = f"{s.plain.tile_mufu} · {s.general.tile_mufu}"
        else:
            sass, mufu = f"{s.tile_instructions} ({s.kloop_instructions})", str(s.tile_mufu)
        lines.append(f"| {label} | {s.warps}/{s.stages} | {s.registers} | {s.spill_stores}/{s.spill_loads} | "
                     f"{s.shared / 1024:.0f} | "
                     f"{s.ctas_per_sm(device)} | {s.mma_kind} ×{s.mma_count} | {sass} | {mufu} |")
    return "\n".join(lines)


def _fmt(x, digits=2):
    return "" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def workload_table(results) -> str:
    lines = ["| workload | kernel | config | regs | spills B | MMA | SASS/tile | bound | modeled ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for rows, total in results:
        name = f"{total['loss']} {total['dtype']} {total['n']}×{total['m']}×{total['d']}"
        for r in rows:
            lines.append(f"| {name} | {r['kernel']} | {_fmt(r['config'])} | {_fmt(r['registers'])} | "
                         f"{_fmt(r['spill_bytes'])} | {_fmt(r['mma'])} | {_fmt(r['instructions_per_tile'])} | "
                         f"{r['bound']} | {r['modeled_ms']:.2f} |")
        lines.append(f"| **{name}** | **total** (floor {total['floor_ms']:.1f} ms) | fwd {total['fwd_config']}, "
                     f"bwd {total['bwd_config']} | | | | | {total['share_of_matrix_rate']:.2f} of matrix rate | "
                     f"**{total['modeled_ms']:.1f}** |")
    return "\n".join(lines)


def default_configs(w: Workload, device: Device = H200):
    """The model of ``w`` with the first candidate of each list (what CI can afford to compile)."""
    from contrastive_ops.kernels import config as cfg

    f = cfg.GPU_CONFIGS[0]
    return model_workload(w, f, f if w.ring_radix_bits else cfg.backward_candidates(w.d)[0], device)


def variant_row(label: str, s: KernelStats, device: Device = H200) -> dict:
    """A JSON row of one compiled variant (no workload: ``kernel`` names the variant)."""
    row = {"kernel": label, "registers": s.registers, "spill_stores": s.spill_stores, "spill_loads": s.spill_loads,
           "shared_bytes": s.shared, "ctas_per_sm": s.ctas_per_sm(device), "mma": s.mma_kind, "mma_count": s.mma_count,
           "sass_per_tile": s.tile_instructions, "sass_per_k_step": s.kloop_instructions, "mufu_per_tile": s.tile_mufu,
           "warps": s.warps, "stages": s.stages}
    if s.plain is not None:
        row.update(plain_sass_per_tile=s.plain.tile_instructions, general_sass_per_tile=s.general.tile_instructions)
    return row


def config_variants():
    """Every tuning candidate of the forward and of the backward × bf16/fp16/fp32(tf32) × D ∈ {128, 768}
    for the symmetric CLIP roles, as shipped (both branches)."""
    from contrastive_ops.kernels import config as cfg

    fwd, bwd = "contrastive_ops.kernels.contrastive_fwd", "contrastive_ops.kernels.contrastive_bwd"
    for d in (128, 768):
        for dtype in ("bfloat16", "float16", "float32"):
            w = workload("clip", 65536, 65536, d, dtype)
            rows_only = workload("info_nce", 65536, 65536, d, dtype)
            for f in cfg.GPU_CONFIGS:
                yield f"forward {dtype} D={d} {f.as_list()}", _stats(fwd, "_contrastive_fwd_kernel", w, f)
                if row_products_used(rows_only):
                    yield (f"forward + row products (info_nce) {dtype} D={d} {f.as_list()}",
                           _stats(fwd, "_contrastive_fwd_kernel", rows_only, f, _row_products_switches(d)))
            for b in cfg.backward_candidates(d):
                names = (("dQ", "_contrastive_bwd_dq_kernel"), ("dC", "_contrastive_bwd_dc_kernel")) if d <= 256 else (
                    ("dS", "_contrastive_bwd_ds_kernel"),)
                for short, kernel in names:
                    yield f"backward {short} {dtype} D={d} {b.as_list()}", _stats(bwd, kernel, w, b)


def ci_variants():
    """``(label, stats)`` of the kernel variants CI compiles and checks: the headline CLIP's forward and
    backward at D = 128 (bf16, registers) and D = 768 (fp16, dS chunks), with their default configs,
    and InfoNCE's forward with row products (D = 128, bf16)."""
    from contrastive_ops.kernels import config as cfg

    w128 = workload("clip", 65536, 65536, 128, "bfloat16")
    w768 = dataclasses.replace(w128, d=768, dtype="float16")
    fwd, bwd = "contrastive_ops.kernels.contrastive_fwd", "contrastive_ops.kernels.contrastive_bwd"
    f = cfg.GPU_CONFIGS[0]
    yield "forward clip bf16 D=128", _stats(fwd, "_contrastive_fwd_kernel", w128, f,
                                            plain_fraction=plain_fraction(w128, f))
    b128 = cfg.backward_candidates(128)[0]
    yield "backward dQ clip bf16 D=128", _stats(bwd, "_contrastive_bwd_dq_kernel", w128, b128,
                                                plain_fraction=plain_fraction(w128, b128))
    w_rows = workload("info_nce", 65536, 65536, 128, "bfloat16")
    yield "forward + row products info_nce bf16 D=128", _stats(fwd, "_contrastive_fwd_kernel", w_rows, f,
                                                               _row_products_switches(128),
                                                               plain_fraction=plain_fraction(w_rows, f))
    b768 = cfg.backward_candidates(768)[0]
    yield "backward dS clip fp16 D=768", _stats(bwd, "_contrastive_bwd_ds_kernel", w768, b768,
                                                plain_fraction=plain_fraction(w768, b768))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write one JSON row per workload × kernel (and a 'total' row each) here")
    parser.add_argument("--subset", choices=("headline", "all", "ci"), default="all",
                        help="headline: the two headline workloads; all: every workload of the report; ci: the "
                             "variants CI checks")
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--mma-tflops", type=float, help="measured bf16/fp16 matmul rate (TFLOP/s)")
    parser.add_argument("--bandwidth-tbs", type=float, help="measured copy bandwidth (TB/s)")
    args = parser.parse_args(argv)
    device = H200
    if args.mma_tflops or args.bandwidth_tbs:
        mma = dict(device.mma_flops)
        if args.mma_tflops:
            mma = {"bfloat16": args.mma_tflops * 1e12, "float16": args.mma_tflops * 1e12,
                   "float32": args.mma_tflops * 0.5e12}
        device = dataclasses.replace(device, mma_flops=mma, name=device.name + " (measured rates)",
                                     dram_bytes_s=(args.bandwidth_tbs * 1e12 if args.bandwidth_tbs else device.dram_bytes_s))
    import triton

    print(f"# Static kernel report (sm_90a, Triton {triton.__version__}); every time below is MODELED for "
          f"{device.name}: {device.mma_flops['bfloat16'] / 1e12:.0f} TFLOP/s bf16, "
          f"{device.dram_bytes_s / 1e12:.1f} TB/s, {device.clock_hz / 1e9:.2f} GHz\n")
    if args.subset == "ci":
        variants = list(ci_variants())
        print(variant_table(variants, device) + "\n")
        results = [default_configs(w, device) for w in headline_workloads(n=args.n)
                   if (w.loss, w.d) in (("clip", 768), ("info_nce", 128))]
        rows = [variant_row(label, stats, device) for label, stats in variants]
    else:
        workloads = headline_workloads(n=args.n)
        if args.subset == "headline":
            workloads = [w for w in workloads if (w.loss, w.d) in (("clip", 768), ("info_nce", 128))]
        results = [r for r in (best_configs(w, device) for w in workloads) if r is not None]
        rows = []
        if args.subset == "all":
            variants = list(config_variants())
            print(variant_table(variants, device) + "\n")
            rows = [variant_row(label, stats, device) for label, stats in variants]
    print(workload_table(results))
    cuda_rows = []
    if args.subset != "ci":
        from contrastive_ops import _build

        if _build.find_nvcc() is None:
            print("\n(the CUDA extension's section needs nvcc: not on this machine)")
        else:
            from benchmarks import cuda_report

            workloads = [w for w in headline_workloads(n=args.n)
                         if args.subset == "all" or (w.loss, w.d) in (("clip", 768), ("info_nce", 128))]
            text, cuda_rows = cuda_report.section(device, workloads)
            print("\n" + text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows + [row for wrows, total in results for row in wrows + [total]] + cuda_rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
