"""The static model's physics: a device's ceilings, one launch's modeled time, the modeled workloads.

Nothing here compiles or reads code (see :mod:`.sass` and the two reports); every figure it gives is
*modeled*, never measured. A tile kernel's launch is charged, per wave of CTAs (wave quantization
included), the time of its tiles on one SM, from

* MMA: the tile's useful dot-product FLOPs at the device's matmul rate;
* issue: the tile's SASS per thread × warps, each opcode at its documented sm_90 throughput
  (:data:`.sass.SM90_RESULTS_PER_CLOCK`; MUFU among them), none overlapping another;
* exposure: the part of that issue that the warpgroup makes after waiting for every wgmma it started
  (the epilogue after the k-loop, an online softmax between two products), or one warp's dependency
  chain through it (4 cycles per dependent instruction) where that is longer. Without warp
  specialization it cannot overlap the warpgroup's own MMA, so a CTA alone on an SM takes
  exposed + max(MMA, the rest). c CTAs on an SM run in phase (nothing makes one's softmax wait for
  another's products; FlashAttention-3, §3.1, needed explicit barriers to make two warpgroups
  alternate): a round of c tiles takes c·max(MMA, the rest) on the shared tensor cores, then the
  exposed issue of c CTAs on the shared schedulers (or one warp's chain through it, if longer);
  a warp-specialized kernel (setmaxnreg roles) is charged max(c·MMA, c·issue);
* memory: its DRAM bytes at the copy bandwidth, overlapping the rest,

plus, for a Triton kernel running one CTA per SM, an exposed refill of the operand pipeline at every
tile (``refill_cycles``, an L2-latency assumption). Library products (cuBLAS through ``torch.mm``)
are charged :func:`library_gemm_ms`: the matmul rate times a measured efficiency by shape (short K and
narrow outputs cost), or their bytes. :data:`H200` holds the constants.
"""
from __future__ import annotations

import dataclasses
import math

from .sass import sm_cycles


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    sms: int
    clock_hz: float  # sustained SM clock under MMA load (assumed)
    mma_flops: dict  # dtype -> dense matmul FLOP/s (bf16/fp16 measured on an H200 here; tf32 assumed half)
    dram_bytes_s: float  # copy bandwidth (measured on an H200 here)
    regs_per_sm: int = 65536
    smem_per_sm: int = 227 * 1024  # usable by one CTA's dynamic shared memory
    threads_per_sm: int = 2048
    refill_cycles: int = 500  # a tile's first operand loads (L2 hits), exposed with one CTA per SM (assumed)


#: H100/H200-class device (sm_90a, 132 SMs). 790 TFLOP/s bf16 and 4.3 TB/s were measured on an H200
#: (the published maximum achievable bf16 matmul rates agree: 792.1 TFLOP/s on an H100 SXM, 821.0 on a
#: GH200 — the MAMF table of stas00/ml-engineering, compute/accelerator/README.md); the clock and the
#: tf32 rate are assumptions.
H200 = Device(name="H200 (sm_90a, 132 SMs)", sms=132, clock_hz=1.83e9,
              mma_flops={"bfloat16": 790e12, "float16": 790e12, "float32": 395e12}, dram_bytes_s=4.3e12)


ITEMSIZE = {"bfloat16": 2, "float16": 2, "float32": 4}


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
    # opcode → count per thread (.sass.SassStats): issued after every wgmma was waited for (exposed)
    # or with one in flight (overlapped), outside the k-loop and in one k-step
    tile_exposed: dict = dataclasses.field(default_factory=dict)
    tile_overlapped: dict = dataclasses.field(default_factory=dict)
    kloop_exposed: dict = dataclasses.field(default_factory=dict)
    kloop_overlapped: dict = dataclasses.field(default_factory=dict)
    kloop_mufu: int = 0
    specialized: bool = False  # warp-specialized: its softmax overlaps another warpgroup's MMA
    tile_exposed_chain: float = 0.0  # one warp's dependency chain through the exposed instructions (cycles)
    kloop_exposed_chain: float = 0.0
    # per-branch counts (plain tiles / the others), where the kernel has the plain-tile branch
    plain: KernelStats | None = None
    general: KernelStats | None = None
    plain_fraction: float = 0.0  # share of the workload's tiles that are plain (set per launch)

    def per_tile(self, ksteps: int) -> float:
        if self.plain is not None and self.general is not None:
            f = self.plain_fraction
            return f * self.plain.per_tile(ksteps) + (1 - f) * self.general.per_tile(ksteps)
        # tile_instructions holds one k-step; the per-opcode counts below hold none (they are split)
        return self.tile_instructions + self.kloop_instructions * (ksteps - 1)

    def mufu_per_tile(self, ksteps: int = 1) -> float:
        if self.plain is not None and self.general is not None:
            f = self.plain_fraction
            return f * self.plain.mufu_per_tile(ksteps) + (1 - f) * self.general.mufu_per_tile(ksteps)
        return self.tile_mufu + self.kloop_mufu * ksteps  # tile_mufu: outside the k-loop

    def cycles(self, ksteps: int) -> tuple[float, float]:
        """SM cycles of one tile of this CTA (all its warps), exposed and overlapped, each opcode at its
        documented throughput (:func:`.sass.sm_cycles`); the k-loop's step counted ``ksteps`` times.
        The exposed part is its throughput or one warp's dependency chain through it, if longer."""
        throughput, chain, overlapped = self.cycle_parts(ksteps)
        return max(throughput, chain), overlapped

    def cycle_parts(self, ksteps: int) -> tuple[float, float, float]:
        """``(exposed throughput, exposed chain, overlapped)`` SM cycles of one tile of this CTA."""
        if self.plain is not None and self.general is not None:
            f = self.plain_fraction
            p, g = self.plain.cycle_parts(ksteps), self.general.cycle_parts(ksteps)
            return tuple(f * a + (1 - f) * b for a, b in zip(p, g))
        if not (self.tile_exposed or self.tile_overlapped):  # no opcode counts: one issue cycle each
            return 0.0, 0.0, self.warps * self.per_tile(ksteps) / 4.0
        # the tile's opcode counts are those outside its k-loop: each of its ksteps steps adds one step's
        throughput = (sm_cycles(self.tile_exposed, self.warps)
                      + ksteps * sm_cycles(self.kloop_exposed, self.warps))
        chain = self.tile_exposed_chain + ksteps * self.kloop_exposed_chain
        overlapped = (sm_cycles(self.tile_overlapped, self.warps)
                      + ksteps * sm_cycles(self.kloop_overlapped, self.warps))
        return throughput, chain, overlapped

    def mufu_cycles(self, ksteps: int) -> float:
        """The MUFU part of :meth:`cycles` (16 results per clock per SM)."""
        return self.mufu_per_tile(ksteps) * self.warps * 2.0

    def ctas_per_sm(self, device: Device) -> int:
        threads = 32 * self.warps
        by_regs = device.regs_per_sm // (max(8, math.ceil(self.registers / 8) * 8) * threads)
        by_smem = device.smem_per_sm // self.shared if self.shared else 32
        return max(0, min(by_regs, by_smem, device.threads_per_sm // threads, 32))


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

    gemms: tuple = ()  # a library call's products as (m, n, k, count, output bytes per element, accumulate)
    alu_ops: float = 0.0  # a library call's integer/compare thread-instructions (e.g. a sort's), at 64 per clock per SM

    def model(self, device: Device, dtype: str) -> dict:
        """Modeled milliseconds (see the module's docstring): a tile kernel's waves of tile rounds or
        its DRAM bytes, plus the operand pipeline's refill at every tile where one CTA fills an SM; a
        library GEMM by :func:`library_gemm_ms`; any other library call by its bytes."""
        mem_ms = self.dram_bytes / device.dram_bytes_s * 1e3
        parts = {"mma_ms": 0.0, "issue_ms": 0.0, "exposed_ms": 0.0, "mufu_ms": 0.0, "memory_ms": mem_ms}
        refill_ms = 0.0
        if self.variant is None:
            if self.gemms:
                parts["mma_ms"] = sum(library_gemm_ms(m, n, k, device, dtype) * count
                                      for m, n, k, count, _, _ in self.gemms)
            elif self.flops:
                parts["mma_ms"] = self.flops / device.mma_flops[dtype] * 1e3
            compute_ms, bound = parts["mma_ms"], "mma"
            if self.alu_ops:
                parts["issue_ms"] = self.alu_ops / (device.sms * ALU_RESULTS_PER_CLOCK * device.clock_hz) * 1e3
                if parts["issue_ms"] > compute_ms:
                    compute_ms, bound = parts["issue_ms"], "issue"
        else:
            v = self.variant
            ctas = max(1, v.ctas_per_sm(device))
            waves = math.ceil(self.programs / (device.sms * ctas))
            rounds = waves * self.tiles_per_program  # the busiest SM: `ctas` tiles per round
            tile_flops = self.flops / max(1.0, self.programs * self.tiles_per_program)
            mma = tile_flops * device.sms / device.mma_flops[dtype] * device.clock_hz  # SM cycles per tile
            throughput, chain, overlapped = v.cycle_parts(self.ksteps)
            exposed = max(throughput, chain)
            candidates = {"mma": ctas * mma, "issue": ctas * (exposed + overlapped)}
            if not v.specialized:
                # co-resident warpgroups run in phase: their products share the tensor cores, then
                # their exposed issue shares the schedulers (its chain is each warp's own)
                candidates["mma+epilogue (serial)"] = (max(ctas * throughput, chain)
                                                       + ctas * max(mma, overlapped))
            bound = max(candidates, key=candidates.get)
            to_ms = rounds / device.clock_hz * 1e3
            compute_ms = candidates[bound] * to_ms
            parts.update(mma_ms=ctas * mma * to_ms, issue_ms=ctas * (exposed + overlapped) * to_ms,
                         exposed_ms=ctas * exposed * to_ms, mufu_ms=ctas * v.mufu_cycles(self.ksteps) * to_ms)
            if ctas == 1:
                refill_ms = rounds * device.refill_cycles / device.clock_hz * 1e3
        if mem_ms >= compute_ms:
            compute_ms, bound = mem_ms, "memory"
        return {**parts, "refill_ms": refill_ms, "modeled_ms": compute_ms + refill_ms, "bound": bound}


#: integer, compare and min/max results per clock per SM on sm_90 (the programming guide's table, as
#: :data:`.sass.SM90_RESULTS_PER_CLOCK` has them): what a library sort is charged per instruction
ALU_RESULTS_PER_CLOCK = 64


def sort_alu_ops(rows: int, length: int) -> float:
    """Thread-instructions of sorting ``rows`` rows of ``length`` keys each by a bitonic network in shared
    memory (torch's sort of short rows): ``log2(L)·(log2(L)+1)/2`` compare-exchange stages over ``L/2``
    pairs, each pair a compare, two selects and its shared-memory load and store (5, assumed)."""
    stages = math.ceil(math.log2(max(2, length)))
    return rows * (length / 2) * stages * (stages + 1) / 2 * 5.0


#: Measured bf16 × bf16 → bf16 GEMM rates on sm_90, TFLOP/s, from OpenXLA's table of measured matmul
#: throughput (``xla/service/gpu/model/matmul_interpolator_data.h``, key ``sm_90``; Apache-2.0), its
#: batch-4 rows, the largest it holds: by K at M = N = 4096, and by the smaller output side at K = 4096
#: with the other side 4096 (N the smaller: ``_BY_N``; M the smaller: ``_BY_M``).
GEMM_RATE_BY_K = ((256, 503.9), (512, 619.9), (1024, 725.5), (2048, 764.6), (4096, 793.1))
GEMM_RATE_BY_N = ((256, 622.5), (512, 728.6), (1024, 777.6), (2048, 808.7), (4096, 793.1))
GEMM_RATE_BY_M = ((256, 664.0), (512, 730.1), (1024, 773.5), (2048, 801.9), (4096, 793.1))
GEMM_RATE_PEAK = 808.7  # the table's largest bf16 rate: what the device's measured matmul rate stands for


def _log_interpolate(points, x: float) -> float:
    """``points`` ((x, y), ...) ascending in x, interpolated linearly in log2(x); clamped at both ends."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            t = (math.log2(x) - math.log2(x0)) / (math.log2(x1) - math.log2(x0))
            return y0 + t * (y1 - y0)
    return points[-1][1]


def library_gemm_efficiency(m: int, n: int, k: int) -> float:
    """The share of the device's matmul rate a library GEMM of ``m × n × k`` reaches, from measured
    sm_90 rates (:data:`GEMM_RATE_BY_K` and the smaller side's curve, multiplied, over the table's
    peak). Beyond the table (a side or K above 4096) the 4096 rate holds; below its smallest K (256)
    the K = 256 rate does, an optimistic bound."""
    side = _log_interpolate(GEMM_RATE_BY_N if n <= m else GEMM_RATE_BY_M, min(m, n))
    rate = _log_interpolate(GEMM_RATE_BY_K, k) * side / GEMM_RATE_BY_K[-1][1]
    return min(1.0, rate / GEMM_RATE_PEAK)


def library_gemm_ms(m: int, n: int, k: int, device: Device, dtype: str) -> float:
    """Milliseconds of one library GEMM's tensor-core work: its FLOPs at the device's matmul rate
    times :func:`library_gemm_efficiency` (measured rates of cuBLAS-class GEMMs by shape: short K and
    a narrow output side cost, wave quantization included as measured). Its bytes are charged by the
    caller (:meth:`Launch.model`: the larger of the two)."""
    return 2.0 * m * n * k / (device.mma_flops[dtype] * library_gemm_efficiency(m, n, k)) * 1e3


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
    ring: tuple = ()  # the Ring's (outer, inner) fractions

    @property
    def m_total(self) -> int:
        return self.m + self.extra

    def switch(self, name: str) -> bool:
        return dict(self.flags)[name]

    def floor_flops(self) -> float:
        """Useful dot-product FLOPs of forward + backward: S, S again, dQ and dK."""
        return 8.0 * self.n * self.m_total * self.d


#: The modeled losses; their roles come from the library (:func:`.plan.loss_switches`).
MODELED_LOSSES = ("clip", "info_nce", "siglip", "supcon", "ring")


def workload(loss: str, n: int, m: int, d: int, dtype: str) -> Workload:
    """One forward + backward of ``loss`` (one of :data:`MODELED_LOSSES`) at ``n × m``, dimension ``d``."""
    from .plan import loss_switches

    switches, radix_bits, ring = loss_switches(loss)
    return Workload(loss, n, m, d, dtype, switches, ring_radix_bits=radix_bits, ring=ring)


def headline_workloads(d_values=(128, 768), n: int = 65536) -> list[Workload]:
    """The workloads of the report: the headlines (symmetric CLIP and InfoNCE, bf16, 65536²) and one
    of each role family (SupCon and Ring at half the batch), at D = 128 and 768."""
    return [workload(loss, n // 2 if loss in ("supcon", "ring") else n, n // 2 if loss in ("supcon", "ring") else n,
                     d, "bfloat16") for d in d_values for loss in MODELED_LOSSES]


def cdiv(a, b):
    return -(-a // b)


def fmt(x, digits=2):
    return "" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))
