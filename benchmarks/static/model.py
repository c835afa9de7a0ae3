"""The static model's physics: a device's ceilings, one launch's modeled time, the modeled workloads.

Nothing here compiles or reads code (see :mod:`.sass` and the two reports); every figure it gives is
*modeled*, never measured. A launch is charged the largest of

* MMA: its useful dot-product FLOPs at the device's matmul rate;
* issue: its SASS instructions per tile × warps, at 4 warp-instructions per clock per SM;
* MUFU: its exp/log instructions per tile × threads, at 16 per clock per SM;
* memory: its DRAM bytes at the copy bandwidth,

per wave of CTAs (wave quantization included), assuming those overlap perfectly, plus, for a Triton
kernel running one CTA per SM, an exposed refill of the operand pipeline at every tile
(``refill_cycles``, an L2-latency assumption). Library products (cuBLAS through ``torch.mm``) are
charged at the matmul rate or their bytes, whichever is larger. :data:`H200` holds the constants.
"""
from __future__ import annotations

import dataclasses
import math


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


ITEMSIZE = {"bfloat16": 2, "float16": 2, "float32": 4}
#: the Triton kernels' role switches (``kernels/problem.py``) that a workload sets
SWITCHES = ("HAS_POS", "HAS_LABELS", "MASK_LABELS", "HAS_SELF", "KEY_NEGATIVES", "DECOUPLED", "HAS_BAND",
            "NORMALIZE", "COLUMN_TERMS", "HARD_NEGATIVES", "PAIRWISE_SIGMOID")

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


def flags(**on) -> tuple:
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
    roles, radix_bits = MODELED_LOSSES[loss]
    return Workload(loss, n, m, d, dtype, flags(**roles), ring_radix_bits=radix_bits)


def headline_workloads(d_values=(128, 768), n: int = 65536) -> list[Workload]:
    """The workloads of the report: the headlines (symmetric CLIP and InfoNCE, bf16, 65536²) and one
    of each role family (SupCon and Ring at half the batch), at D = 128 and 768."""
    return [workload(loss, n // 2 if loss in ("supcon", "ring") else n, n // 2 if loss in ("supcon", "ring") else n,
                     d, "bfloat16") for d in d_values for loss in MODELED_LOSSES]


def cdiv(a, b):
    return -(-a // b)


def fmt(x, digits=2):
    return "" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))
