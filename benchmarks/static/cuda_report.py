"""Static report of the CUDA extension (backend="cuda") on Hopper, and its roofline model. No GPU.

    python -m benchmarks.static                 # this report is its CUDA section

The extension's products are torch's GEMMs (cuBLAS on a GPU: its own sm_90 wgmma kernels, which
this report cannot inspect), its epilogues our kernels (``csrc/epilogue.cu``). Those are compiled
here by nvcc for sm_90a with ``-Xptxas -v`` (registers, spills, shared memory) and read with
cuobjdump: the instructions and MUFU operations per pair, from the largest innermost loop that loads
from global memory (the per-pair loop, unrolled :data:`PAIR_UNROLL` times in ``epilogue.cu``;
where the compiler versions a loop, the larger version counts). Kernels of the plain feature sets
also have a plain-quad loop (128-bit loads, :data:`QUAD_PAIRS` pairs per iteration, the role tests
of a quad that is not plain out of line): its instructions per pair are reported beside, and the
model charges them, since nearly every pair of a large plain batch is in a plain quad.

The model (every figure *modeled*) charges, per launch group of a forward + backward:

* a GEMM: its FLOPs at the matmul rate times the measured efficiency of its shape
  (:func:`.model.library_gemm_ms`) or its DRAM bytes at the copy bandwidth, whichever is larger (the
  fp32 cosines it writes are bytes too);
* an epilogue: the larger of its issue time (its SASS per pair / 32 lanes, each opcode at its
  documented sm_90 throughput, MUFU among them: :data:`.sass.SM90_RESULTS_PER_CLOCK`) and its DRAM
  bytes (the fp32 cosines read, dS written): many warps per SM, so memory and issue overlap;
* torch's elementwise passes (unit rows, normalization backward): their bytes.

Launches are serial on one stream (no overlap assumed). The comparison is with the Triton backend's
model of the same workload (:mod:`.triton_report`, default configs).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
import re
import subprocess
import tempfile
from pathlib import Path

from .model import H200, ITEMSIZE, Device, KernelStats, Launch, Workload, fmt, headline_workloads
from .sass import loops as branch_loops
from .sass import parse_sass, sm_cycles, tool
from .triton_report import default_configs, stats_from_sass

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "csrc"
ARCH = "90a"
PAIR_UNROLL = 4  # CO_PAIR_LOOP in csrc/epilogue.cu
QUAD_PAIRS = 4 * 2  # CO_QUAD_LOOP: a float4 of pairs per step, unrolled twice
FUSED_TILE, FUSED_TILE_K = 128, 64  # csrc/fused_sm90.cu: 128 × 128 tiles, K in steps of 64
FUSED_WARPS, FUSED_STAGES = 8, 3
FUSED_SMEM = FUSED_STAGES * 2 * FUSED_TILE * FUSED_TILE_K * 2 + 1024  # kSmemBytes


@dataclasses.dataclass(frozen=True)
class EpilogueStats:
    kernel: str  # demangled, e.g. "rows_forward_kernel<0>"
    registers: int
    spill_bytes: int
    shared: int
    mma: str  # the epilogues hold no MMA: "none"
    instructions: int  # the whole kernel's SASS
    per_pair: int  # SASS instructions of one pair (the innermost per-pair loop's body)
    mufu_per_pair: int
    quad_per_pair: int | None = None  # the plain-quad loop's, where the kernel has one
    quad_mufu_per_pair: int | None = None
    ops_per_pair: tuple = ()  # (opcode, count per pair) of the loop the model charges (see _charged)


def _nvcc() -> str:
    from contrastive_ops import _build

    nvcc = _build.find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found: the CUDA extension's report needs the CUDA toolkit")
    home = _build.cuda_home()
    return str(home / "bin" / "nvcc") if (home / "bin" / "nvcc").is_file() else nvcc


def _demangle(names: list[str]) -> list[str]:
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=False).stdout
    lines = out.strip().splitlines()
    if len(lines) != len(names):
        return names
    return [re.sub(r"contrastive_cuda::\(anonymous namespace\)::", "", line).split("(")[0].replace("void ", "")
            for line in lines]


def _compile(source: str, arch: str, extra: tuple = ()) -> tuple[str, str]:
    """``(ptxas -v output, SASS)`` of ``csrc/<source>`` compiled for ``sm_{arch}`` as the build does."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp, "kernels.cubin")
        cmd = [_nvcc(), "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-cubin", *extra,
               f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v", "-I", str(CSRC),
               str(CSRC / source), "-o", str(cubin)]
        verbose = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
        sass = subprocess.run([tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    return verbose, sass


def _ptxas_resources(verbose: str) -> dict[str, dict[str, int]]:
    """Per mangled kernel name, from ``ptxas -v``: registers, spill stores, spill loads, smem (bytes)."""
    out = {}
    for block in re.split(r"ptxas info\s+: Compiling entry function '", verbose)[1:]:
        found = {key: re.search(pattern, block) for key, pattern in (
            ("registers", r"Used (\d+) registers"), ("spill stores", r"(\d+) bytes spill stores"),
            ("spill loads", r"(\d+) bytes spill loads"), ("smem", r"(\d+) bytes smem"))}
        out[block.split("'")[0]] = {key: int(m.group(1)) if m else 0 for key, m in found.items()}
    return out


def _sass_functions(sass: str) -> tuple[list[str], list[str]]:
    """``(mangled names, SASS bodies)`` of cuobjdump's listing, in its order."""
    parts = re.split(r"\n\s*Function : (\S+)", sass)
    return parts[1::2], parts[2::2]


@functools.cache
def epilogue_stats(arch: str = ARCH) -> dict[str, EpilogueStats]:
    """Every kernel of ``csrc/epilogue.cu`` compiled for ``sm_{arch}`` as the build compiles it."""
    verbose, sass = _compile("epilogue.cu", arch)
    resources = {name: (r["registers"], r["spill stores"], r["smem"]) for name, r in _ptxas_resources(verbose).items()}
    names, bodies = _sass_functions(sass)
    stats = {}
    for mangled, label, body in zip(names, _demangle(names), bodies):
        instructions = parse_sass(body)
        loops = branch_loops(instructions)

        def inside(lp, instructions=instructions):
            return [i for i in instructions if lp[0] <= i[0] <= lp[1]]

        # the per-pair loop: an innermost loop that loads from global memory (the butterfly and the
        # histogram's shared-memory loops load nothing from it)
        inner = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
        def wide(lp):
            return any(i[1] == "LDG" and ".128" in i[2] for i in inside(lp))

        pair_loops = [lp for lp in inner if any(i[1] == "LDG" for i in inside(lp)) and not wide(lp)]
        quad_loops = [lp for lp in inner if wide(lp)]
        body_ins = inside(max(pair_loops, key=lambda lp: len(inside(lp)))) if pair_loops else []
        quad_ins = inside(max(quad_loops, key=lambda lp: len(inside(lp)))) if quad_loops else None
        regs, spills, smem = resources.get(mangled, (0, 0, 0))
        charged, per = (quad_ins, QUAD_PAIRS) if quad_ins is not None else (body_ins, PAIR_UNROLL)
        ops = tuple(sorted((op, n / per) for op, n in collections.Counter(i[1] for i in charged).items()))
        stats[label] = EpilogueStats(
            label, regs, spills, smem, "none", len(instructions), round(len(body_ins) / PAIR_UNROLL),
            round(sum(1 for i in body_ins if i[1] == "MUFU") / PAIR_UNROLL),
            None if quad_ins is None else round(len(quad_ins) / QUAD_PAIRS, 1),
            None if quad_ins is None else round(sum(1 for i in quad_ins if i[1] == "MUFU") / QUAD_PAIRS, 1), ops)
    return stats


@functools.cache
def fused_stats(arch: str = ARCH) -> dict[str, KernelStats]:
    """The fused sm_90a kernels of ``csrc/fused_sm90.cu`` (wgmma tiles with the epilogue in registers),
    compiled with the plain tiles' epilogue alone (``CO_FUSED_REPORT_PLAIN``: what nearly every tile of
    a large plain batch runs), read as the Triton kernels are (``sass.sass_stats``: the whole
    kernel is one tile, its k-loop the loop holding the HGMMAs)."""
    verbose, sass = _compile("fused_sm90.cu", arch, ("-DCO_FUSED_REPORT_PLAIN=1",))
    resources = {name: (r["registers"], r["spill stores"], r["spill loads"])
                 for name, r in _ptxas_resources(verbose).items()}
    names, bodies = _sass_functions(sass)
    stats = {}
    for mangled, label, body in zip(names, _demangle(names), bodies):
        if not label.startswith("fused_"):
            continue
        regs, spill_stores, spill_loads = resources.get(mangled, (0, 0, 0))
        stats[label] = stats_from_sass(label, FUSED_WARPS, FUSED_STAGES, regs, spill_stores, spill_loads,
                                       FUSED_SMEM, parse_sass(body))
    return stats


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------

_FEATURES = {"hard": 1, "sigmoid": 2, "columns": 4, "band": 8, "labels": 16}  # csrc/epilogue.cu's Feature bits


def _feature_set(w: Workload, columns: bool = False) -> int:
    f = 0
    if w.switch("HARD_NEGATIVES"):
        f |= _FEATURES["hard"]
    if w.switch("PAIRWISE_SIGMOID"):
        f |= _FEATURES["sigmoid"]
    if columns:
        f |= _FEATURES["columns"]
    if w.switch("HAS_BAND"):
        f |= _FEATURES["band"]
    if w.switch("HAS_LABELS") or w.switch("MASK_LABELS"):
        f |= _FEATURES["labels"]
    return f


def _epilogue(stats: dict, name: str) -> EpilogueStats:
    if name in stats:
        return stats[name]
    generic = re.sub(r"<(.*?)(-?\d+)>", lambda m: f"<{m.group(1)}-1>", name)
    return stats[generic]


def _charged(e: EpilogueStats) -> tuple[float, float]:
    """(instructions, MUFU) per pair the model charges: the plain-quad loop's where the kernel has one
    (the modeled workloads of those feature sets are plain batches: nearly every pair in a plain quad)."""
    if e.quad_per_pair is not None:
        return e.quad_per_pair, e.quad_mufu_per_pair
    return e.per_pair, e.mufu_per_pair


def _epilogue_ms(e: EpilogueStats, pairs: float, dram_bytes: float, device: Device) -> dict:
    """An epilogue launch: its SASS per pair at the documented throughputs (a warp-instruction does 32
    pairs) or its bytes, whichever is larger."""
    per_sm = device.sms * device.clock_hz
    ops = dict(e.ops_per_pair)
    parts = {"issue_ms": pairs / 32 * sm_cycles(ops, 1) / per_sm * 1e3,
             "mufu_ms": pairs / 32 * sm_cycles({"MUFU": ops.get("MUFU", 0.0)}, 1) / per_sm * 1e3,
             "memory_ms": dram_bytes / device.dram_bytes_s * 1e3, "mma_ms": 0.0}
    bound = max(("issue_ms", "memory_ms"), key=parts.get)
    return {**parts, "modeled_ms": parts[bound], "bound": bound.removesuffix("_ms")}


def _library_ms(flops: float, dram_bytes: float, device: Device, dtype: str, gemms: tuple = ()) -> dict:
    """A library call (:meth:`.model.Launch.model` of a launch without a variant); ``gemms`` its
    products' shapes ``(m, n, k, count, output bytes, accumulate)``."""
    return Launch("library", None, 0, 0, 1, flops, dram_bytes, gemms=gemms).model(device, dtype)


def pair_route_applies(w: Workload) -> bool:
    """Whether the backend forms SigLIP's pair gradient in the forward (``contrastive_ops.backends.cuda.
    pair_route``: the pairwise sigmoid alone, no labels, band, hard negatives or column terms; the modeled
    SigLIP workload is ``siglip_loss``'s default mean, whose incoming gradient is one value per row)."""
    flags = dict(w.flags)
    return (flags.get("PAIRWISE_SIGMOID", False) and not w.ring_radix_bits and _feature_set(w) == _FEATURES["sigmoid"]
            and not flags.get("COLUMN_TERMS", False) and not flags.get("DECOUPLED", False))


def model_workload(w: Workload, device: Device = H200, pair_forward: bool = True) -> tuple[list[dict], dict]:
    """Rows per launch group and the total of one forward + backward of ``w`` on the cuda backend.
    ``pair_forward=False`` models SigLIP as before its forward-formed gradient (the backward recomputing
    the cosines; ``CONTRASTIVE_OPS_CUDA_SIGLIP=recompute``)."""
    from contrastive_ops.kernels.config import cosine_chunk_shape

    stats = epilogue_stats()
    item = ITEMSIZE[w.dtype]
    n, mt, m, d = w.n, w.m_total, w.m, w.d
    pairs = float(n) * mt
    rows, cols = cosine_chunk_shape(n, mt)
    row_chunks, col_chunks = math.ceil(n / rows), math.ceil(mt / cols)
    operands = col_chunks * n * d * item + row_chunks * mt * d * item  # each chunk's GEMM reads its rows
    dtype_name = {"bfloat16": "__nv_bfloat16", "float16": "__half", "float32": "float"}[w.dtype]
    columns = w.switch("COLUMN_TERMS")
    out = []

    def add(kernel, timing, note="", e: EpilogueStats | None = None):
        out.append({"loss": w.loss, "n": n, "m": mt, "d": d, "dtype": w.dtype, "mode": "fwd_bwd", "backend": "cuda",
                    "kernel": kernel, "registers": None if e is None else e.registers,
                    "spill_bytes": None if e is None else e.spill_bytes, "mma": "cuBLAS" if e is None else e.mma,
                    "instructions_per_pair": None if e is None else _charged(e)[0], "note": note, **timing})

    normalize = w.switch("NORMALIZE")
    if normalize:  # without normalization the inputs are the products' operands (csrc/ops.cpp, unit_rows)
        unit_bytes = (2 * item + 16) * (n + mt) * d
        add("unit rows (torch)", _library_ms(0.0, unit_bytes, device, w.dtype), "fp32 norms, rounded to the input dtype")
    if fused_applies(w):
        return _fused_workload(w, device, add, out, operands, pairs, rows, cols)
    s_gemm = _library_ms(2.0 * pairs * d, 4.0 * pairs + operands, device, w.dtype,
                         ((min(rows, n), min(cols, mt), d, row_chunks * col_chunks, 4, False),))
    if pair_forward and pair_route_applies(w):
        return _pair_workload(w, device, add, out, s_gemm, pairs, rows, cols, operands)
    if w.ring_radix_bits:
        hist = _epilogue(stats, f"ring_histogram_kernel<{_feature_set(w) & _FEATURES['labels']}>")
        passes = 4
        add("ring: cosines S = Q̂·Ĉᵀ (cuBLAS) ×4 passes", {k: (v * passes if k.endswith("_ms") else v)
                                                         for k, v in s_gemm.items()}, "one byte of the keys per pass")
        add("ring: radix histograms ×4 passes", {k: (v * passes if k.endswith("_ms") else v) for k, v in
                                                  _epilogue_ms(hist, pairs, 4.0 * pairs, device).items()}, e=hist)
    add("forward: cosines S = Q̂·Ĉᵀ (cuBLAS, fp32 out)", s_gemm, f"{row_chunks}×{col_chunks} chunks of {rows}×{cols}")
    fwd = _epilogue(stats, f"rows_forward_kernel<{_feature_set(w)}>")
    add("forward: rows' LSE epilogue", _epilogue_ms(fwd, pairs, 4.0 * pairs, device), e=fwd)
    if columns:
        role_set = _feature_set(w) & (_FEATURES["band"] | _FEATURES["labels"])
        # plain roles take the quad kernel (csrc/epilogue.cu's cols_forward launcher)
        colk = _epilogue(stats, "cols_forward_quads_kernel" if role_set == 0 else f"cols_forward_kernel<{role_set}>")
        add("forward: columns' LSE epilogue", _epilogue_ms(colk, float(n) * m, 4.0 * n * m, device), e=colk)
    add("backward: cosines recomputed (cuBLAS, fp32 out)", s_gemm)
    bwd = _epilogue(stats, f"rows_backward_kernel<{dtype_name}, {_feature_set(w, columns)}>")
    add("backward: dS epilogue", _epilogue_ms(bwd, pairs, (4.0 + item) * pairs, device), e=bwd)
    accumulate = 8.0 * d * (n * col_chunks + mt * row_chunks)  # fp32 gradients read and written per chunk
    add("backward: dQ̂ += dS·Ĉ, dĈ += dSᵀ·Q̂ (cuBLAS, into fp32)",
        _library_ms(4.0 * pairs * d, 2.0 * item * pairs + operands + accumulate, device, w.dtype,
                    _ds_gemms(n, mt, d, rows, cols)))
    if normalize:
        add("normalize backward (torch)", _library_ms(0.0, (4 * 4 + 2 * item) * (n + mt) * d, device, w.dtype))
    else:  # the fp32 gradients cast to the input dtype
        add("gradients to the input dtype (torch)", _library_ms(0.0, (4 + item) * (n + mt) * d, device, w.dtype))
    return out, _total_row(w, device, out, rows, cols, "cuBLAS + epilogues")


def _pair_workload(w: Workload, device: Device, add, out, s_gemm, pairs, rows, cols, operands):
    """SigLIP without recomputation (``csrc/ops.cpp`` pair_forward / pair_backward): per chunk the S GEMM,
    one epilogue forming the pair losses and dS (row weight 1) from one read of the cosines, the two
    gradient GEMMs — 6·N·M·D — and a backward of O((N + M)·D) passes (the saved products scaled, the
    normalization backward)."""
    stats = epilogue_stats()
    item = ITEMSIZE[w.dtype]
    n, mt, d = w.n, w.m_total, w.d
    row_chunks, col_chunks = math.ceil(n / rows), math.ceil(mt / cols)
    dtype_name = {"bfloat16": "__nv_bfloat16", "float16": "__half", "float32": "float"}[w.dtype]
    add("forward: cosines S = Q̂·Ĉᵀ (cuBLAS, fp32 out)", s_gemm, f"{row_chunks}×{col_chunks} chunks of {rows}×{cols}")
    pf = _epilogue(stats, f"rows_pair_forward_kernel<{dtype_name}, {_feature_set(w)}>")
    add("forward: pair losses and dS epilogue (one read of S)", _epilogue_ms(pf, pairs, (4.0 + item) * pairs, device),
        "row weight 1", e=pf)
    accumulate = 8.0 * d * (n * col_chunks + mt * row_chunks)  # fp32 gradients read and written per chunk
    add("forward: dQ̂₁ += dS·Ĉ, dĈ₁ += dSᵀ·Q̂ (cuBLAS, into fp32)",
        _library_ms(4.0 * pairs * d, 2.0 * item * pairs + operands + accumulate, device, w.dtype,
                    _ds_gemms(n, mt, d, rows, cols)))
    add("backward: saved products × the upstream gradient (torch)", _library_ms(0.0, 8.0 * (n + mt) * d, device, w.dtype),
        "no chunk recomputed")
    if w.switch("NORMALIZE"):
        add("normalize backward (torch)", _library_ms(0.0, (4 * 4 + 2 * item) * (n + mt) * d, device, w.dtype))
    else:
        add("gradients to the input dtype (torch)", _library_ms(0.0, (4 + item) * (n + mt) * d, device, w.dtype))
    return out, _total_row(w, device, out, rows, cols, "cuBLAS + epilogues, dS formed in the forward")


def _ds_gemms(n: int, mt: int, d: int, rows: int, cols: int) -> tuple:
    """Per chunk of ``rows × cols``: dQ̂[rows] += dS·Ĉ[cols] (rows × d, k = cols) and dĈ[cols] += dSᵀ·Q̂[rows]."""
    rows, cols = min(rows, n), min(cols, mt)
    chunks = math.ceil(n / rows) * math.ceil(mt / cols)
    return ((rows, d, cols, chunks, 4, True), (cols, d, rows, chunks, 4, True))


def fused_applies(w: Workload) -> bool:
    """Whether csrc/ops.cpp's fused_path takes the workload on an sm_90 device: bf16/fp16, d % 8 == 0
    and the plain roles (no labels, band, hard negatives or sigmoid)."""
    return (w.dtype in ("bfloat16", "float16") and w.d % 8 == 0 and not w.ring_radix_bits
            and _feature_set(w) == 0)


def _fused_workload(w: Workload, device: Device, add, out, operands, pairs, rows, cols):
    """The fused sm_90a path: the forward's and the backward's tile kernels (modeled as the Triton
    kernels are, ``model.Launch``), the partials' merges, the dS GEMMs."""
    stats = fused_stats()
    item = ITEMSIZE[w.dtype]
    n, mt, m, d = w.n, w.m_total, w.m, w.d
    type_name = {"bfloat16": "__nv_bfloat16", "float16": "__half"}[w.dtype]
    columns = w.switch("COLUMN_TERMS")
    row_chunks, col_chunks = math.ceil(n / rows), math.ceil(mt / cols)
    tiles = row_chunks * col_chunks * math.ceil(rows / FUSED_TILE) * math.ceil(cols / FUSED_TILE)
    ksteps = math.ceil(d / FUSED_TILE_K)
    acc_bytes = 40  # sizeof(Acc)
    partials = acc_bytes * (n * math.ceil(mt / FUSED_TILE) + (m * math.ceil(n / FUSED_TILE) if columns else 0))

    def launch(name, flops, dram, note):
        e = stats[name]
        timing = Launch(name, e, tiles, 1, ksteps, flops, dram, note).model(device, w.dtype)
        out.append({"loss": w.loss, "n": n, "m": mt, "d": d, "dtype": w.dtype, "mode": "fwd_bwd", "backend": "cuda",
                    "kernel": name, "registers": e.registers, "spill_bytes": e.spill_stores, "mma": e.mma_kind,
                    "instructions_per_pair": None, "instructions_per_tile": e.per_tile(ksteps), "note": note,
                    **timing})

    launch(f"fused_forward_kernel<{type_name}>", 2.0 * pairs * d, operands + partials,
           f"{tiles} tiles of {FUSED_TILE}²; rows'{' and columns' if columns else ''} LSE partials")
    add("forward: partials merged (a thread per row / column)", _library_ms(0.0, 2.0 * partials, device, w.dtype))
    launch(f"fused_backward_kernel<{type_name}, {'true' if columns else 'false'}>", 2.0 * pairs * d,
           operands + item * pairs + 4.0 * n * math.ceil(mt / FUSED_TILE), "dS written in the operands' dtype")
    accumulate = 8.0 * d * (n * col_chunks + mt * row_chunks)
    add("backward: dQ̂ += dS·Ĉ, dĈ += dSᵀ·Q̂ (cuBLAS, into fp32)",
        _library_ms(4.0 * pairs * d, 2.0 * item * pairs + operands + accumulate, device, w.dtype,
                    _ds_gemms(n, mt, d, rows, cols)))
    if w.switch("NORMALIZE"):
        add("normalize backward (torch)", _library_ms(0.0, (4 * 4 + 2 * item) * (n + mt) * d, device, w.dtype))
    else:
        add("gradients to the input dtype (torch)", _library_ms(0.0, (4 + item) * (n + mt) * d, device, w.dtype))
    return out, _total_row(w, device, out, rows, cols, "fused sm_90a tiles")


def _total_row(w: Workload, device: Device, out, rows, cols, path: str) -> dict:
    n, mt, d = w.n, w.m_total, w.d
    total = sum(r["modeled_ms"] for r in out)
    floor = w.floor_flops() / device.mma_flops[w.dtype] * 1e3
    triton = default_configs(w, device)[1]["modeled_ms"]
    total_row = {"loss": w.loss, "n": n, "m": mt, "d": d, "dtype": w.dtype, "mode": "fwd_bwd", "backend": "cuda",
                 "kernel": "total", "modeled_ms": total, "floor_ms": floor, "share_of_matrix_rate": floor / total,
                 "triton_modeled_ms": triton, "cuda_over_triton": total / triton, "chunk": [rows, cols], "path": path}
    return total_row


def epilogue_table(stats: dict[str, EpilogueStats]) -> str:
    header = ("| kernel (sm_90a) | regs | spill B | shared B | MMA | SASS | SASS/pair | MUFU/pair "
              "| plain quads: SASS/pair | MUFU/pair |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for e in sorted(stats.values(), key=lambda s: s.kernel):
        if re.search(r"<(float|__half), ", e.kernel):
            continue  # the backward's fp32/fp16 variants match the bf16 one
        quad = "| |" if e.quad_per_pair is None else f"| {e.quad_per_pair} | {e.quad_mufu_per_pair} |"
        lines.append(f"| {e.kernel} | {e.registers} | {e.spill_bytes} | {e.shared} | {e.mma} | {e.instructions} | "
                     f"{e.per_pair} | {e.mufu_per_pair} {quad}")
    return "\n".join(lines)


def workload_table(results) -> str:
    lines = ["| workload | launch | regs | SASS/pair | bound | modeled ms |", "|---|---|---|---|---|---|"]
    for rows, total in results:
        name = f"{total['loss']} {total['dtype']} {total['n']}×{total['m']}×{total['d']}"
        for r in rows:
            per = (f"{r['instructions_per_tile']:.0f}/tile" if r.get("instructions_per_tile") is not None
                   else fmt(r['instructions_per_pair']))
            lines.append(f"| {name} | {r['kernel']} | {fmt(r['registers'])} | "
                         f"{per} | {r['bound']} | {r['modeled_ms']:.2f} |")
        lines.append(f"| **{name}** | **total**, {total['path']} (floor {total['floor_ms']:.1f} ms; triton modeled "
                     f"{total['triton_modeled_ms']:.1f} ms) | | | {total['cuda_over_triton']:.2f}× triton | "
                     f"**{total['modeled_ms']:.1f}** |")
    return "\n".join(lines)


def fused_table(stats: dict[str, KernelStats]) -> str:
    header = ("| kernel (sm_90a, plain tiles) | regs | spill B | shared B | CTAs/SM | MMA | HGMMA "
              "| SASS/tile (k-loop once) | SASS per k-step | MUFU/tile |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for e in sorted(stats.values(), key=lambda s: s.kernel):
        if "__half" in e.kernel:
            continue  # the fp16 variants match the bf16 ones
        lines.append(f"| {e.kernel} | {e.registers} | {e.spill_stores} | {e.shared} | {e.ctas_per_sm(H200)} | "
                     f"{e.mma_kind} | {e.mma_count} | {e.tile_instructions} | {e.kloop_instructions} | {e.tile_mufu} |")
    return "\n".join(lines)


def section(device: Device = H200, workloads=None) -> tuple[str, list[dict]]:
    """The report's markdown section and its JSON rows."""
    stats = epilogue_stats()
    workloads = workloads or headline_workloads()
    results = [model_workload(w, device) for w in workloads]
    text = ("## CUDA extension (backend='cuda'): cuBLAS products, our epilogues\n\n"
            f"Epilogue kernels compiled by nvcc for sm_90a (SASS per pair: the per-pair loop unrolled {PAIR_UNROLL}× "
            "over its pairs). The "
            "products are cuBLAS GEMMs chosen by torch at run time (Hopper wgmma kernels; not inspectable "
            "here). Every time is MODELED, launches serial.\n\n"
            + epilogue_table(stats) + "\n\n"
            + "Fused sm_90a kernels (`csrc/fused_sm90.cu`, taken on an sm_90 device for bf16/fp16 plain roles, "
            "d % 8 == 0): wgmma (HGMMA) tiles of 128 × 128 with the epilogue in registers, modeled per tile as "
            "the Triton kernels are (`model.Launch`).\n\n"
            + fused_table(fused_stats()) + "\n\n" + workload_table(results) + "\n")
    rows = [dataclasses.asdict(s) for s in stats.values()] + [dataclasses.asdict(s) for s in fused_stats().values()]
    return text, rows + [row for wrows, total in results for row in wrows + [total]]
