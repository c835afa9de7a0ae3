"""The Triton kernels as compiled for Hopper, and the launches of one loss call modeled from them.

Every kernel variant a workload launches is compiled ahead of time for sm_90a by Triton's own
compiler (16-byte-aligned pointers and sizes, as the JIT marks them for real shapes); Triton's bundled
ptxas (``-v``) gives registers and spills, its cuobjdump the SASS (:mod:`.sass`). :func:`launches`
lists what one forward + backward launches, and :mod:`.model` turns each launch into modeled time.
Entry point: ``python -m benchmarks.static``.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from .model import (
    H200,
    ITEMSIZE,
    MODELED_LOSSES,
    Device,
    KernelStats,
    Launch,
    Workload,
    cdiv,
    fmt,
    sort_alu_ops,
    workload,
)
from .ring_buffer import buffer_search
from .sass import parse_sass, sass_stats, tool

# the kernels must be decorated for compiling, not interpreting: before any Triton import
os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


DTYPE_TYPES = {"bfloat16": "*bf16", "float16": "*fp16", "float32": "*fp32"}
# the flat (ungrouped) arguments of the normalization kernels; the core's kernels take their arguments in
# the groups of ``kernels.problem.GROUPS``, typed from that table
FLAT_TYPES = {"X": "F", "DX": "F", "G": "*fp32", "R": "*fp32", "N": "i32", "D": "i32", "stride_x": "i32",
              "stride_g": "i32", "stride_dx": "i32", "COUNTS": "*i32", "FILLED": "*i32", "first_block": "i32",
              "RANKS": "*i32", "first_row": "i32", "row_count": "i32", "PASSES": "*i32"}


# ---------------------------------------------------------------------------------------------
# compiling one variant and reading its code
# ---------------------------------------------------------------------------------------------


def with_defaults(kernel, constexprs: dict) -> dict:
    """``constexprs`` plus the defaults of ``kernel``'s constexpr parameters it leaves out (switches
    that the launch passes only when they are on), with the role switches given by name gathered
    into the kernels' ``ROLE`` tuple (as ``kernels.problem.role_constexprs`` does for a launch)."""
    from contrastive_ops.kernels.problem import NO_GUIDE, role_constexprs
    from contrastive_ops.kernels.tiles import ROLE_SWITCHES

    params = inspect.signature(kernel.fn).parameters
    out = dict(constexprs)
    if "ROLE" in params and "ROLE" not in out:
        flags = {**dict.fromkeys(ROLE_SWITCHES, False), **NO_GUIDE, **out}
        out = {**out, "ROLE": role_constexprs(flags)["ROLE"]}
    out = {name: value for name, value in out.items() if name in params}  # e.g. switches it does not take
    for name, param in params.items():
        if name not in out and param.default is not inspect.Parameter.empty:
            out[name] = param.default
    return out


def kernel_signature(kernel, feature_type: str, constexprs: dict) -> dict:
    """Triton's compile signature of ``kernel``: constexprs, and every argument group of
    ``kernels.problem.GROUPS`` as the tuple of its members' types (``F``: ``feature_type``).
    ``constexprs`` must name every constexpr parameter (see :func:`with_defaults`)."""
    from contrastive_ops.kernels.problem import GROUPS

    def typed(kind: str) -> str:
        return feature_type if kind == "F" else kind

    sig = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in GROUPS:
            sig[name] = tuple(typed(kind) for _, kind in GROUPS[name])
        else:
            sig[name] = typed(FLAT_TYPES.get(name, "*fp32"))
    return sig


def aligned(kernel, signature: dict) -> dict:
    """Triton's ``tt.divisibility = 16`` marks on every pointer and integer argument (members of a
    group included), as the JIT specializes them for real shapes (16-byte-aligned tensors, sizes and
    strides multiples of 16)."""
    names = list(inspect.signature(kernel.fn).parameters)
    marks = {}
    for name, kind in signature.items():
        members = kind if isinstance(kind, tuple) else (kind,)
        for j, member in enumerate(members):
            if member.startswith("*") or member == "i32":
                path = (names.index(name), j) if isinstance(kind, tuple) else (names.index(name),)
                marks[path] = [["tt.divisibility", 16]]
    return marks


@functools.cache
def _fixed_branches():
    """Stand-ins for ``tiles.plain_tile`` that decide every tile alike (see :func:`compile_stats`)."""
    import triton

    @triton.jit
    def always_plain(row0, c0, inside, rows, row_mask, N, M, M_TOTAL, roles, ROLE, BLOCK_M, BLOCK_N):
        return True

    @triton.jit
    def never_plain(row0, c0, inside, rows, row_mask, N, M, M_TOTAL, roles, ROLE, BLOCK_M, BLOCK_N):
        return False

    @triton.jit
    def bounded_when_normalized(scale, M_TOTAL, BLOCK_N, NORMALIZE):
        return NORMALIZE

    return {"plain": always_plain, "general": never_plain, "bounded": bounded_when_normalized}


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
    branch alone: the static count of the shipped kernel holds both. These also take normalized logits
    as bounded (``tiles.logits_bounded``: ``|scale| <= 40``, a temperature of at least 0.025)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    mod = importlib.import_module(module)
    kernel = getattr(mod, kernel_name)
    constexprs = with_defaults(kernel, dict(constexpr_items))
    signature = kernel_signature(kernel, DTYPE_TYPES[dtype], constexprs)
    original = getattr(mod, "plain_tile", None)
    bounded = getattr(mod, "logits_bounded", None)
    if branch != "both" and original is not None:
        mod.plain_tile = _fixed_branches()[branch]
        if bounded is not None:  # the modeled scales are within tiles.BOUNDED_SCALE_MAX
            mod.logits_bounded = _fixed_branches()["bounded"]
        _reset_hashes(mod)
    try:
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs=aligned(kernel, signature)),
                                  target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": warps, "num_stages": stages})
    finally:
        if branch != "both" and original is not None:
            mod.plain_tile = original
            if bounded is not None:
                mod.logits_bounded = bounded
            _reset_hashes(mod)
    # a pipelined kernel issues each tile's product once, with no loop over D
    return read_compiled(compiled, kernel_name, warps, stages, reduction_loop=not constexprs.get("PIPELINE", False))


def read_compiled(compiled, name: str, warps: int, stages: int, reduction_loop: bool = True) -> KernelStats:
    """Registers and spills (Triton's bundled ``ptxas -v`` on the kernel's PTX) and the SASS counts
    (its ``cuobjdump``, :func:`.sass.sass_stats`) of one compiled Triton kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = Path(tmp, "k.ptx"), Path(tmp, "k.cubin")
        ptx.write_text(compiled.asm["ptx"])
        cubin.write_bytes(compiled.asm["cubin"])
        target = re.search(r"\.target\s+(\S+)", compiled.asm["ptx"]).group(1)
        verbose = subprocess.run([tool("ptxas"), f"-arch={target}", "-v", str(ptx), "-o", str(Path(tmp, "v.cubin"))],
                                 capture_output=True, text=True, check=True).stderr
        sass = subprocess.run([tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    registers = int(re.search(r"Used (\d+) registers", verbose).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", verbose)
    return stats_from_sass(name, warps, stages, registers, int(spills.group(1)) if spills else 0,
                           int(spills.group(2)) if spills else 0, compiled.metadata.shared, parse_sass(sass),
                           reduction_loop)


def stats_from_sass(name: str, warps: int, stages: int, registers: int, spill_stores: int, spill_loads: int,
                    shared: int, instructions, reduction_loop: bool = True) -> KernelStats:
    """A :class:`.model.KernelStats` from a kernel's resources and its parsed SASS (``reduction_loop``
    as :func:`.sass.sass_stats`)."""
    s = sass_stats(instructions, reduction_loop)
    return KernelStats(kernel=name, warps=warps, stages=stages, registers=registers, spill_stores=spill_stores,
                       spill_loads=spill_loads, shared=shared, mma_kind=s.mma_kind, mma_count=s.mma_count,
                       tile_instructions=s.tile_instructions, kloop_instructions=s.kloop_instructions,
                       tile_mufu=s.tile_mufu, total_instructions=s.total_instructions,
                       tile_exposed=s.tile_exposed, tile_overlapped=s.tile_overlapped,
                       kloop_exposed=s.kloop_exposed, kloop_overlapped=s.kloop_overlapped,
                       kloop_mufu=s.kloop_mufu, specialized=s.specialized,
                       tile_exposed_chain=s.tile_exposed_chain, kloop_exposed_chain=s.kloop_exposed_chain)


# ---------------------------------------------------------------------------------------------
# workloads and the launches they make
# ---------------------------------------------------------------------------------------------


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


def _stats(module, name, w: Workload, config, extra=(), plain_fraction=0.0):
    """The variant of ``module.name`` that ``w`` launches with ``config``, with its per-branch counts
    where it has the plain-tile branch and ``w``'s roles allow plain tiles."""
    constexprs = dict(w.flags)
    constexprs.update(INPUT_PRECISION="tf32" if w.dtype == "float32" else "ieee",
                      BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_D=config.block_d_for(w.d))
    constexprs.update(extra)
    import importlib
    import inspect

    from contrastive_ops.kernels import config as cfg

    kernel = getattr(importlib.import_module(module), name)
    if "PIPELINE" in inspect.signature(kernel.fn).parameters and hasattr(cfg, "pipelined"):
        constexprs.setdefault("PIPELINE", cfg.pipelined(config, w.d))  # as the launch decides
    key = (module, name, w.dtype, tuple(sorted(constexprs.items())), config.num_warps, config.num_stages)
    stats = dataclasses.replace(compile_stats(*key))
    if hasattr(importlib.import_module(module), "plain_tile") and plain_fraction > 0:
        stats.plain, stats.general = compile_stats(*key, branch="plain"), compile_stats(*key, branch="general")
        stats.plain_fraction = plain_fraction
    return stats


def plain_fraction(w: Workload, config, columns_first: bool = False) -> float:
    """Share of ``w``'s tiles that ``tiles.plain_tile`` finds plain: none with labels; else all but those
    holding a positive or self pair (one index per row: the ``ceil(BM/BN)`` tiles of a row block's
    diagonal each, for ``columns_first`` programs ``ceil(BN/BM)``) and the edges. With a Ring band a
    plain tile tests the band alone (its branch is compiled with the band)."""
    if w.switch("HAS_LABELS") or w.switch("MASK_LABELS"):
        return 0.0
    per_index = cdiv(config.block_n, config.block_m) if columns_first else cdiv(config.block_m, config.block_n)
    special = (int(w.switch("HAS_POS")) + int(w.switch("HAS_SELF"))) * per_index
    across = cdiv(w.n, config.block_m) if columns_first else cdiv(w.m_total, config.block_n)
    return max(0.0, 1.0 - special / across)




def _row_products_switches(d: int) -> dict:
    return {"ROW_GRAD": True, "ACC_D": max(16, 1 << (d - 1).bit_length())}


def row_products_used(w: Workload) -> bool:
    """Whether the triton backend's forward forms the rows' gradient products for ``w`` (as it does
    when the rows' gradient is asked for)."""
    from contrastive_ops.kernels import config as cfg

    return hasattr(cfg, "row_grad_supported") and cfg.row_grad_supported(dict(w.flags), w.d)


def ring_select_mode() -> str:
    """The triton backend's Ring selection as shipped: ``"bracketed"`` (spans from a sample, a gathering
    pass, a search in its buffer) where the kernels have it, else ``"radix"``."""
    from contrastive_ops.kernels import ring_select

    if not hasattr(ring_select, "ring_band_bracketed"):
        return "radix"
    from contrastive_ops.backends.triton import _ring_select_mode

    return _ring_select_mode()


def ring_launches(w: Workload, f, device: Device, mode: str | None = None) -> list[Launch]:
    """The Ring selection's launches (``mode``: ``"bracketed"`` or ``"radix"``, default as shipped).

    Bracketed (``kernels.ring_select.ring_band_bracketed``): the halves of ``SAMPLE_COLUMNS`` columns by
    ``torch.mm`` and sorted per row (two spans per row from them), one gathering pass over the tiles that
    writes the candidates inside the spans to each row's buffer, and the search in the buffer. The buffers'
    fill and the search's reads per row are those of the selection's own search kernel on random unit
    vectors of the workload's row length (``ring_buffer.buffer_search``). The radix search then runs only
    for rows that the spans miss or whose entries overflow, charged here as none (none of the simulated rows
    at 4096, 32768 or 65536 columns; rows with many candidates tied at a span's end, or a sample far off
    the row's distribution, add up to one radix search of their row blocks)."""
    from contrastive_ops.kernels import ring_select as rs

    mode = mode or ring_select_mode()
    item = ITEMSIZE[w.dtype]
    n, mt, d = w.n, w.m_total, w.d
    inputs = (n + mt) * d * item
    ks_f = cdiv(d, f.block_d_for(d))
    row_blocks = cdiv(n, f.block_m)
    col_tiles = cdiv(mt, f.block_n)
    module = "contrastive_ops.kernels.ring_select"
    if mode == "radix":
        passes = 32 // w.ring_radix_bits
        stats = _stats(module, "_ring_select_kernel", w, f, {"RADIX_BITS": w.ring_radix_bits})
        resident = device.sms * max(1, stats.ctas_per_sm(device))
        return [Launch("ring select", stats, row_blocks, col_tiles * passes, ks_f,
                       2.0 * n * mt * d * passes, inputs * cdiv(row_blocks, resident) * passes,
                       note=f"{passes} radix passes, each recomputing every tile")]
    s = min(mt, rs.SAMPLE_COLUMNS)
    out = [Launch(f"ring sample: {s} columns' halves (torch.mm), sorted per row (torch.sort)", None, 0, 0, 1,
                  2.0 * n * s * d, n * s * 4 * 3 + n * d * item, alu_ops=sort_alu_ops(n, s),
                  gemms=((n, s, d, 1, 4, False),), note="estimates only: the spans")]
    search = buffer_search(mt, *w.ring)
    entries, fill = search["entries"], search["fill"]
    g = rs.gather_config(f)
    plain = plain_fraction(w, g)
    gather = _stats(module, "_ring_gather_kernel", w, g, {"BUFFER": entries}, plain_fraction=plain)
    resident = device.sms * max(1, gather.ctas_per_sm(device))
    select = compile_stats(module, "_buffer_search_kernel", w.dtype,
                           (("BUFFER", entries), ("CHUNK", rs.SEARCH_CHUNK), ("ROWS", rs.SEARCH_ROWS)), rs.SELECT_WARPS, 1)
    # its k-loop counts each entry at the two searches' pivots: two compares (FSET) per entry and thread
    per_trip = max(1, select.kloop_overlapped.get("FSET", 0) // 2 * 32 * rs.SELECT_WARPS)
    chunks = rs.row_chunks(n, g.block_m, entries)
    for _first, blocks in chunks:  # a launch of each kind per chunk of row blocks
        rows = min(n, blocks * g.block_m)
        # the products: the tile's own and its prefix sums (the taken pairs times the upper-triangular ones)
        out.append(Launch("ring gather spans", gather, blocks, cdiv(mt, g.block_n), ks_f,
                          2.0 * rows * mt * d + 2.0 * rows * mt * g.block_n,
                          (rows * d * item + mt * d * item) * cdiv(blocks, resident) + rows * fill * 4 + 3 * rows * 4,
                          note=f"one pass over the tiles ({len(chunks)} chunks of rows): {fill:.0f} of {entries} "
                               "entries filled per row (mean)"))
        out.append(Launch("ring search in the buffer", select, rows, search["passes"], fill / per_trip, 0.0,
                          rows * fill * 4 + 9 * rows * 4,
                          note=f"{search['passes']:.1f} reads of a row's buffer (mean; both ranks)"))
    return out


def pair_route_used(w: Workload) -> bool:
    """Whether the triton backend forms ``w``'s gradient in the forward (``backends.triton.pair_route``:
    siglip_loss with a mean or a sum)."""
    backend = importlib.import_module("contrastive_ops.backends.triton")
    return hasattr(backend, "pair_route") and w.loss == "siglip" and w.switch("PAIRWISE_SIGMOID")


def ds_chunk_launches(w: Workload, b, name: str, dq_products: bool = True, extra=(),
                      extra_bytes: float = 0.0) -> list[Launch]:
    """The dS chunk route (``kernels.contrastive_bwd``, D beyond the registers' or SigLIP's formed
    gradient): one program per tile over every chunk (a launch per chunk), then per chunk the cuBLAS
    products dQ̂ += dS·Ĉ (``dq_products``) and dĈ += dSᵀ·Q̂ at the measured rates of their shapes.
    ``name`` begins each launch's name; ``extra``: the dS kernel's further constexprs (their bytes:
    ``extra_bytes``)."""
    from contrastive_ops.kernels import contrastive_bwd as bwd

    item = ITEMSIZE[w.dtype]
    n, mt, d = w.n, w.m_total, w.d
    inputs = (n + mt) * d * item
    grads = (n + mt) * d * 4
    rows, cols = bwd.chunk_shape(n, mt, item, b)
    chunks = cdiv(n, rows) * cdiv(mt, cols)
    stats = _stats("contrastive_ops.kernels.contrastive_bwd", "_contrastive_bwd_ds_kernel", w, b, dict(extra),
                   plain_fraction=plain_fraction(w, b))
    tiles = cdiv(min(rows, n), b.block_m) * cdiv(min(cols, mt), b.block_n)
    ds_bytes = float(n) * mt * item
    out = [Launch(f"{name} dS chunks" + (" with the pair losses" if extra else ""), stats, tiles * chunks, 1,
                  cdiv(d, b.block_d_for(d)), 2.0 * n * mt * d, ds_bytes + inputs * cdiv(n, rows) + extra_bytes,
                  note=f"{chunks} chunks of {rows}×{cols}; each launch {tiles} tiles")]
    row_chunks, col_chunks = cdiv(n, rows), cdiv(mt, cols)
    chunk_r, chunk_c = min(rows, n), min(cols, mt)  # each chunk's products (cuBLAS: the measured rate of its shape)
    # per chunk and product: dS and the other side's rows read, an fp32 product written, then read
    # and added into the fp32 rows (4 fp32 row passes); one scaling pass over dQ̂, dĈ at the end
    if dq_products:
        gemm_bytes = (2 * ds_bytes + row_chunks * mt * d * item + col_chunks * n * d * item
                      + 16.0 * d * (col_chunks * n + row_chunks * mt) + 2 * grads)
        out.append(Launch(f"{name} dQ += dS·Ĉ, dĈ += dSᵀ·Q̂ (torch.mm)", None, 0, 0, 1, 4.0 * n * mt * d, gemm_bytes,
                          note="cuBLAS, fp32 output, added into the fp32 rows",
                          gemms=((chunk_r, d, chunk_c, chunks, 4, True), (chunk_c, d, chunk_r, chunks, 4, True))))
    else:  # the forward's row products made dQ̂: only the dĈ products
        gemm_bytes = ds_bytes + col_chunks * n * d * item + 16.0 * d * row_chunks * mt + grads
        out.append(Launch(f"{name} dĈ += dSᵀ·Q̂ (torch.mm)", None, 0, 0, 1, 2.0 * n * mt * d, gemm_bytes,
                          note="cuBLAS, fp32 output, added into the fp32 rows",
                          gemms=((chunk_c, d, chunk_r, chunks, 4, True),)))
    return out


def pair_launches(w: Workload, b, device: Device) -> list[Launch]:
    """SigLIP's gradient formed in the forward (``kernels.contrastive_bwd.pair_forward``): one pass of dS
    chunks that also sums the pair losses, their cuBLAS products, and a backward that only scales them."""
    item = ITEMSIZE[w.dtype]
    n, mt, d = w.n, w.m_total, w.d
    loss_parts = float(n) * cdiv(mt, b.block_n) * 4 * 2  # a partial per row and column tile, written, then summed
    return ds_chunk_launches(w, b, "pair forward:", extra=(("PAIR_LOSS", True),), extra_bytes=loss_parts) + [
        Launch("backward: the forward's products scaled" + (", normalize backward" if w.switch("NORMALIZE") else ""),
               None, 0, 0, 1, 0.0, 2 * (n + mt) * d * 4 + (n + mt) * d * item * 2)]


def launches(w: Workload, fwd_config, bwd_config, device: Device) -> list[Launch]:
    """The launches of one forward + backward of ``w`` on the current kernels, tiles as configured."""
    from contrastive_ops.kernels import contrastive_bwd as bwd

    item = ITEMSIZE[w.dtype]
    n, mt, d = w.n, w.m_total, w.d
    inputs = (n + mt) * d * item
    out: list[Launch] = []
    f, b = fwd_config, bwd_config
    ks_f = cdiv(d, f.block_d_for(d))
    row_blocks = cdiv(n, f.block_m)
    col_tiles = cdiv(mt, f.block_n)
    if w.switch("NORMALIZE"):
        out.append(Launch("inverse norms", None, 0, 0, 1, 0.0, inputs, note="torch-free Triton row pass"))
    if w.ring_radix_bits:
        out.extend(ring_launches(w, f, device))
        # the band as halves (kernels.band), once for the forward and once for the backward: 33 bisection
        # steps per row, each about ten instructions on [N] (reads v_lo, v_hi, rq; writes h_lo, h_hi)
        for _ in range(2):
            out.append(Launch("Ring band in halves (bisection per row)", None, 0, 0, 1, 0.0, 5 * n * 4,
                              alu_ops=2 * 33 * 10 * n))
    if pair_route_used(w):
        return out + pair_launches(w, b, device)
    # forward: persistent programs; symmetric losses own [P, M] column partials; row-only losses with
    # one positive per row also form the rows' gradient products (an online softmax times Ĉ)
    row_products = row_products_used(w)
    if row_products and w.switch("NORMALIZE"):
        out.append(Launch("unit columns (the row products' operand)", None, 0, 0, 1, 0.0, 2 * mt * d * item))
    extra_f = _row_products_switches(d) if row_products else {}
    fwd_stats = _stats("contrastive_ops.kernels.contrastive_fwd", "_contrastive_fwd_kernel", w, f, extra_f,
                       plain_fraction=plain_fraction(w, f))
    resident = device.sms * max(1, fwd_stats.ctas_per_sm(device))
    programs = min(row_blocks, device.sms) if w.switch("COLUMN_TERMS") else row_blocks
    partial_bytes = row_blocks * w.m * 16 * 2 if w.switch("COLUMN_TERMS") else 0
    operand_passes = 2 if row_products else 1  # Ĉ is read beside the raw columns
    out.append(Launch("forward" + (" + row products" if row_products else ""), fwd_stats, programs,
                      row_blocks / programs * col_tiles, ks_f, (4.0 if row_products else 2.0) * n * mt * d,
                      n * d * item + operand_passes * mt * d * item * cdiv(row_blocks, resident) + partial_bytes
                      + (n * d * 4 if row_products else 0)))
    # backward
    registers = bwd.uses_registers(b, d) if hasattr(bwd, "uses_registers") else b.block_d_for(d) >= d
    ks_b = cdiv(d, b.block_d_for(d))
    grads = (n + mt) * d * 4  # fp32 dQ̂, dĈ
    if row_products:  # dQ̂ = s·(g_lse·A + g_pos·ĉ_pos): fp32 rows read and written, a gather of Ĉ
        # A read, dQ̂ written and scaled (fp32), the positives' columns gathered, Q̂ read for the scale
        # (the positives' product as an fp32 temporary: written, then read by the add)
        out.append(Launch("backward dQ̂ from the row products (torch)", None, 0, 0, 1, 0.0,
                          n * d * (4 + 4 + 4 + item) + n * d * item + 8 * n * d))
    if registers or not hasattr(bwd, "_contrastive_bwd_ds_kernel"):
        sliced = not registers  # the former route: fp32 rows read and written per tile in global memory
        extra = {"ONE_D_BLOCK": registers}
        passes = [("backward dQ", "_contrastive_bwd_dq_kernel", cdiv(n, b.block_m), cdiv(mt, b.block_n), b.block_m),
                  ("backward dC", "_contrastive_bwd_dc_kernel", cdiv(mt, b.block_n), cdiv(n, b.block_m), b.block_n)]
        for name, kernel, programs, tiles, rows in passes[1:] if row_products else passes:
            stats = _stats("contrastive_ops.kernels.contrastive_bwd", kernel, w, b, extra,
                           plain_fraction=plain_fraction(w, b, columns_first=kernel.endswith("dc_kernel")))
            resident = device.sms * max(1, stats.ctas_per_sm(device))
            traffic = programs * tiles * 8.0 * rows * d if sliced else 0.0
            out.append(Launch(name, stats, programs, tiles, ks_b, 4.0 * n * mt * d,
                              inputs * cdiv(programs, resident) + grads / 2 + traffic,
                              note="fp32 rows read+written per tile" if sliced else "accumulators in registers"))
    else:
        out.extend(ds_chunk_launches(w, b, "backward", dq_products=not row_products))
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
            "config": None if v is None else (bwd_config if launch.kernel.startswith(("backward", "pair forward"))
                                              else fwd_config).as_list(),
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


def workload_table(results) -> str:
    lines = ["| workload | kernel | config | regs | spills B | MMA | SASS/tile | bound | modeled ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for rows, total in results:
        name = f"{total['loss']} {total['dtype']} {total['n']}×{total['m']}×{total['d']}"
        for r in rows:
            lines.append(f"| {name} | {r['kernel']} | {fmt(r['config'])} | {fmt(r['registers'])} | "
                         f"{fmt(r['spill_bytes'])} | {fmt(r['mma'])} | {fmt(r['instructions_per_tile'])} | "
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
