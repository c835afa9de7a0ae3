"""Reading compiled GPU code: Triton's bundled ptxas/cuobjdump and the SASS of one kernel.

:func:`sass_stats` finds the MMA kind and count (HGMMA = wgmma, HMMA = mma.sync), the instructions
of one tile iteration — the smallest loop that contains the dot product's k-loop, with the k-loop
counted once — and, per opcode, which of them the warpgroup issues while its wgmma is in flight
(*overlapped*) and which after it waited for every wgmma to finish (*exposed*: the tensor cores of
a warpgroup that is not warp-specialized idle meanwhile). :data:`SM90_RESULTS_PER_CLOCK` and
:data:`OPCODE_PIPE` give each opcode's documented throughput and pipeline (:func:`sm_cycles`).
"""
from __future__ import annotations

import collections
import dataclasses
import re
import subprocess
from pathlib import Path


def tool(name: str) -> str:
    import triton

    base = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    for candidate in (f"{name}-blackwell", name):  # the newer ptxas reads the PTX versions Triton writes
        if (base / candidate).is_file() and subprocess.run([str(base / candidate), "--version"], capture_output=True,
                                                           check=False).returncode == 0:
            return str(base / candidate)
    raise FileNotFoundError(f"Triton's bundled {name} was not found under {base}")


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)([.A-Z0-9_x]*)\s*([^;]*);")


def parse_sass(text: str):
    """``[(address, opcode, modifiers, operands)]`` of the instructions of one kernel's SASS."""
    return [(int(m.group(1), 16), m.group(3), m.group(4), m.group(5)) for m in _SASS_LINE.finditer(text)]


def loops(instructions):
    """Loops as ``(start, end)`` address pairs, from the backward branches."""
    found = []
    for address, opcode, _, operands in instructions:
        if opcode == "BRA":
            target = re.search(r"0x([0-9a-f]+)", operands)
            if target and int(target.group(1), 16) < address:
                found.append((int(target.group(1), 16), address))
    return found


# ---------------------------------------------------------------------------------------------
# documented throughputs
# ---------------------------------------------------------------------------------------------

#: Results per clock per SM of compute capability 9.0, from the "Throughput of Native Arithmetic
#: Instructions" table of NVIDIA's CUDA C++ Programming Guide (section "Arithmetic Instructions",
#: https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#arithmetic-instructions), by the
#: table's rows. A warp-instruction of a class of T results per clock costs the SM 32 / T cycles.
SM90_RESULTS_PER_CLOCK = {
    "fp32 add/mul/fma": 128,
    "fp16 add/mul/fma": 256,  # a packed pair counts two results: 128 instructions' lanes per clock
    "fp64 add/mul/fma": 64,
    "fp32 rcp/rsqrt/log2/exp2/sin/cos (MUFU)": 16,
    "int32 add/sub": 64,
    "int32 mul/mad": 64,
    "int32 shift": 64,
    "compare/min/max": 64,
    "int32 and/or/xor": 64,
    "bit reverse / leading zeros / population count": 16,
    "warp shuffle": 32,
    "warp reduce": 16,
    "type conversions (other than 8/16-bit to 32-bit integer)": 16,
}

#: SASS opcode → (pipeline, row of :data:`SM90_RESULTS_PER_CLOCK`). The pipelines are those of
#: Nsight Compute's hardware model (Kernel Profiling Guide, "Pipelines",
#: https://docs.nvidia.com/nsight-compute/ProfilingGuide/index.html#hardware-model): FMA runs FP32 and
#: FP16x2 arithmetic and IMAD/IMUL; ALU integer, logic, compares and min/max, and the fast FP32→FP16
#: conversion (F2FP); XU transcendentals (MUFU) and the other conversions; LSU the shuffles. Opcodes
#: the table does not cover (moves, selects, loads and stores, branches, barriers, uniform-datapath
#: ops) take issue cycles only.
OPCODE_PIPE = {
    **dict.fromkeys(("FFMA", "FADD", "FMUL", "FFMA2", "FADD2", "FMUL2"), ("fma", "fp32 add/mul/fma")),
    **dict.fromkeys(("HFMA2", "HADD2", "HMUL2"), ("fma", "fp32 add/mul/fma")),  # 2 results each: 128 per clock
    **dict.fromkeys(("IMAD", "IMUL", "IDP"), ("fma", "int32 mul/mad")),
    **dict.fromkeys(("DFMA", "DADD", "DMUL"), ("fp64", "fp64 add/mul/fma")),
    "MUFU": ("xu", "fp32 rcp/rsqrt/log2/exp2/sin/cos (MUFU)"),
    **dict.fromkeys(("F2F", "F2I", "I2F", "I2FP", "F2IP", "FRND"),
                    ("xu", "type conversions (other than 8/16-bit to 32-bit integer)")),
    **dict.fromkeys(("BREV", "FLO", "POPC"), ("xu", "bit reverse / leading zeros / population count")),
    **dict.fromkeys(("IADD3", "IADD", "IADD32I", "LEA", "IABS"), ("alu", "int32 add/sub")),
    **dict.fromkeys(("SHF", "SHL", "SHR"), ("alu", "int32 shift")),
    **dict.fromkeys(("ISETP", "FSETP", "DSETP", "HSETP2", "FMNMX", "IMNMX", "VIMNMX", "HMNMX2", "FSET", "ISET",
                     "FCHK", "F2FP"), ("alu", "compare/min/max")),
    **dict.fromkeys(("LOP3", "LOP", "LOP32I"), ("alu", "int32 and/or/xor")),
    "SHFL": ("lsu", "warp shuffle"),
    "REDUX": ("alu", "warp reduce"),
}
ISSUE_PER_CLOCK = 4  # warp-instructions per clock per SM: one per scheduler, four schedulers
MMA_OPCODES = ("HGMMA", "HMMA")


def results_per_clock(opcode: str) -> int:
    entry = OPCODE_PIPE.get(opcode)
    return SM90_RESULTS_PER_CLOCK[entry[1]] if entry else 32 * ISSUE_PER_CLOCK


def sm_cycles(ops: dict, warps: int) -> float:
    """SM cycles to execute ``ops`` (opcode → count per thread) for ``warps`` warps: the larger of the
    issue cycles (one warp-instruction per scheduler per clock) and the busiest pipeline, whose opcodes
    cost 32 / (documented results per clock) cycles each; distinct pipelines overlap."""
    issue = warps * sum(n for op, n in ops.items() if op not in MMA_OPCODES) / ISSUE_PER_CLOCK
    pipes: dict = {}
    for op, n in ops.items():
        if op in OPCODE_PIPE:
            pipe = OPCODE_PIPE[op][0]
            pipes[pipe] = pipes.get(pipe, 0.0) + warps * n * 32.0 / results_per_clock(op)
    return max([issue, *pipes.values()])


def pipe_cycles(ops: dict, warps: int) -> dict:
    """Per pipeline (and ``issue``), the SM cycles of :func:`sm_cycles`'s terms, for reports."""
    out = {"issue": warps * sum(n for op, n in ops.items() if op not in MMA_OPCODES) / ISSUE_PER_CLOCK}
    for op, n in ops.items():
        if op in OPCODE_PIPE:
            pipe = OPCODE_PIPE[op][0]
            out[pipe] = out.get(pipe, 0.0) + warps * n * 32.0 / results_per_clock(op)
    return out


# ---------------------------------------------------------------------------------------------
# one kernel's code
# ---------------------------------------------------------------------------------------------


#: cycles from an arithmetic instruction's issue to its result's use: "typically 4 clock cycles" on
#: compute capability 7.x and later (CUDA C++ Programming Guide, "Multiprocessor Level" of "Maximize
#: Utilization"); charged to every dependent instruction, a lower bound for MUFU, shuffles and loads.
DEPENDENT_LATENCY = 4
#: opcodes whose result takes longer: a shared-memory load's 29.0 cycles, measured on an H800 by Luo et
#: al., "Benchmarking and Dissecting the Nvidia Hopper GPU Architecture" (arXiv:2402.13499, Table IV) and
#: reproduced on an H100 SXM5 (29.015 cycles, github.com/Johnsonms/NVIDIA-Hopper-Benchmark,
#: reproduction/H100-dapperdingo/raw/shared_lat.log). MUFU and shuffle latencies have no published
#: Hopper figure: they keep the 4 cycles (a lower bound).
OPCODE_LATENCY = {"LDS": 29, "LDSM": 29}
_REGISTER = re.compile(r"\b(U?R\d+|U?P\d+)\b")
_NO_DESTINATION = ("ST", "RED", "ATOM", "BAR", "BRA", "WARPGROUP", "HGMMA", "EXIT", "MEMBAR", "FENCE", "LDGSTS",
                   "DEPBAR", "NOP", "YIELD", "SYNCS", "CCTL", "ERRBAR", "WARPSYNC", "BSSY", "BSYNC", "RET", "CALL")


def chain_cycles(seq) -> float:
    """One warp's dependency chain through ``seq``: each instruction issues when the registers it
    reads are ready (:data:`DEPENDENT_LATENCY` after their producer issued), one per clock at most."""
    ready: dict = {}
    clock = 0.0
    for _, opcode, _, operands in seq:
        regs = _REGISTER.findall(operands.split("desc[")[0] if opcode.startswith("LDG") else operands)
        writes = [] if opcode.startswith(_NO_DESTINATION) or not regs else [regs[0]]
        reads = regs if not writes else regs[1:]
        clock = max([clock + 1.0, *(ready.get(r, 0.0) for r in reads if r not in ("RZ", "PT", "URZ", "UPT"))])
        for r in writes:
            ready[r] = clock + OPCODE_LATENCY.get(opcode, DEPENDENT_LATENCY)
    return max([clock, *ready.values()]) if seq else 0.0


def _waits_for_all(instruction) -> bool:
    _, opcode, modifiers, operands = instruction
    return opcode == "WARPGROUP" and "DEPBAR" in modifiers and re.search(r"0x0\s*$", operands) is not None


def _in_flight(seq, state: bool) -> tuple[list[bool], bool]:
    """Whether a wgmma is in flight when each instruction of ``seq`` issues, from ``state`` on."""
    flags = []
    for ins in seq:
        flags.append(state)
        if ins[1] == "HGMMA":
            state = True
        elif _waits_for_all(ins):
            state = False
    return flags, state


def _steady(seq) -> list[bool]:
    """:func:`_in_flight` of a loop body in its steady state (the state at entry = the state at exit)."""
    _, state = _in_flight(seq, False)
    return _in_flight(seq, state)[0]


@dataclasses.dataclass(frozen=True)
class SassStats:
    """One kernel's SASS as the model reads it (counts per thread)."""

    mma_kind: str  # "wgmma" (HGMMA), "mma.sync" (HMMA), "none"
    mma_count: int  # static MMA instructions in the whole kernel
    tile_instructions: int  # one tile iteration, its k-loop once
    kloop_instructions: int  # one step of the k-loop (0: no k-loop; without MMA, the largest innermost loop)
    tile_mufu: int  # MUFU in the tile iteration outside the k-loop
    kloop_mufu: int  # MUFU in one k-step
    # opcode → count, split by whether a wgmma is in flight at issue (overlapped) or not (exposed)
    tile_exposed: dict = dataclasses.field(default_factory=dict)  # outside the k-loop
    tile_overlapped: dict = dataclasses.field(default_factory=dict)
    kloop_exposed: dict = dataclasses.field(default_factory=dict)  # one k-step
    kloop_overlapped: dict = dataclasses.field(default_factory=dict)
    specialized: bool = False  # warp-specialized (setmaxnreg: producer and consumer warpgroups)
    total_instructions: int = 0
    tile_exposed_chain: float = 0.0  # chain_cycles of the exposed instructions outside the k-loop
    kloop_exposed_chain: float = 0.0  # ... and of one k-step's


def warp_specialized(instructions) -> bool:
    """Whether the kernel assigns warpgroups roles (``setmaxnreg``, SASS ``USETMAXREG``: FlashAttention-3's
    and CUTLASS's producer/consumer kernels), so that one warpgroup's softmax overlaps another's wgmma."""
    return any(i[1] == "USETMAXREG" for i in instructions)


def sass_stats(instructions, reduction_loop: bool = True) -> SassStats:
    """``reduction_loop=False``: the kernel's products have no loop over their reduction dimension (one
    ``BLOCK_D`` holds D, each tile's product issued once, e.g. one tile ahead): its innermost loop with
    MMA is then the tile loop itself, and there is no k-loop."""
    mma = [i for i in instructions if i[1] in MMA_OPCODES]
    kind = "wgmma" if any(i[1] == "HGMMA" for i in mma) else ("mma.sync" if mma else "none")
    found = loops(instructions)

    def inside(loop):
        return [i for i in instructions if loop[0] <= i[0] <= loop[1]]

    def has_mma(loop):
        return any(i[1] in MMA_OPCODES for i in inside(loop))

    # k-loops: loops with MMA containing no other loop with MMA
    mma_loops = [lp for lp in found if has_mma(lp)]
    kloops = [lp for lp in mma_loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in mma_loops)]
    if mma_loops and not reduction_loop:  # the innermost MMA loop is the tile loop: no k-loop inside it
        tile = min(kloops, key=lambda lp: lp[1] - lp[0])
        body = inside(tile)
        tile_exposed, tile_overlapped = collections.Counter(), collections.Counter()
        chain = []
        sync = kind != "wgmma"
        for ins, flying in zip(body, _steady(body)):
            (tile_overlapped if flying or sync else tile_exposed)[ins[1]] += 1
            if not (flying or sync):
                chain.append(ins)
        return SassStats(kind, len(mma), len(body), 0, sum(1 for i in body if i[1] == "MUFU"), 0,
                         dict(tile_exposed), dict(tile_overlapped), {}, {}, warp_specialized(instructions),
                         len(instructions), chain_cycles(chain), 0.0)
    if not mma_loops:  # no product: the largest innermost loop stands for the k-loop (a streaming loop),
        # one nested in another loop first (the repeated sweep, e.g. a search's counting pass, rather
        # than a loop that runs once before it)
        innermost = [lp for lp in found if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in found)]
        nested = [lp for lp in innermost if any(o != lp and o[0] <= lp[0] and lp[1] <= o[1] for o in found)]
        kloops = [max(nested or innermost, key=lambda lp: len(inside(lp)))] if innermost else []
    # the tile loop: the smallest loop strictly containing a k-loop; a kernel of one tile per program
    # (no such loop) counts as a whole
    outer = [lp for lp in found if any(lp != k and lp[0] <= k[0] and k[1] <= lp[1] for k in kloops)]
    if outer:
        tile = min(outer, key=lambda lp: lp[1] - lp[0])
        body = inside(tile)
        tile_flags = _steady(body)
    else:
        tile = (instructions[0][0], instructions[-1][0]) if instructions else (0, 0)
        body = inside(tile)
        tile_flags = _in_flight(body, False)[0]
    inner = [k for k in kloops if tile != k and tile[0] <= k[0] and k[1] <= tile[1]]
    kloop = inside(inner[0]) if inner else []
    in_kloop = {i[0] for k in inner for i in inside(k)}
    sync = kind != "wgmma"  # mma.sync: the warp's own scoreboard, no warpgroup-wide wait to read
    tile_exposed, tile_overlapped = collections.Counter(), collections.Counter()
    tile_chain, kloop_chain = [], []
    for ins, flying in zip(body, tile_flags):
        if ins[0] not in in_kloop:
            (tile_overlapped if flying or sync else tile_exposed)[ins[1]] += 1
            if not (flying or sync):
                tile_chain.append(ins)
    kloop_exposed, kloop_overlapped = collections.Counter(), collections.Counter()
    for ins, flying in zip(kloop, _steady(kloop)):
        (kloop_overlapped if flying or sync else kloop_exposed)[ins[1]] += 1
        if not (flying or sync):
            kloop_chain.append(ins)
    mufu = sum(1 for i in body if i[1] == "MUFU" and i[0] not in in_kloop)
    return SassStats(kind, len(mma), len(body), len(kloop), mufu, sum(1 for i in kloop if i[1] == "MUFU"),
                     dict(tile_exposed), dict(tile_overlapped), dict(kloop_exposed), dict(kloop_overlapped),
                     warp_specialized(instructions), len(instructions), chain_cycles(tile_chain),
                     chain_cycles(kloop_chain))
