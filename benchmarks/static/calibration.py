"""Published GPU times of public kernels, each run through the static model (every model figure MODELED).

A model counts only as far as it reproduces measurements; no GPU has run this package's kernels, so
the model is held to published H100-class measurements of public kernels, compiled and read here
exactly as ours are (:mod:`.any_kernel`). Nothing below is fitted: the model's constants are the
device's (:data:`H100_SXM`, :data:`GH200`), the throughputs are the documented ones, and a point the
model misses by more than :data:`TOLERANCE` is reported as missed.

    python -m benchmarks.static --subset calibration

Points (:data:`POINTS`):

* siglip-kernel 0.1.2 (Apache-2.0), SigLIP bf16 65536² × 768 forward + backward, 48.8 ms on Hopper
  (GH200/H100) — its PyPI page (https://pypi.org/project/siglip-kernel/0.1.2/, README "On Hopper
  ... 48.8 ms"); modeled as its default bf16 path runs it (``fused_chunked_bf16``: chunks of 4096 rows,
  per chunk a cuBLAS GEMM to bf16 logits, its Triton BCE pass in place, two cuBLAS gradient GEMMs);
* the same package's Triton BCE pass alone, 8.89 ms at B = 65536 on a GH200 (the docstring of
  ``siglip_kernel.triton_sigmoid_bce._select_block_size``: BLOCK 2048, 4 warps), compiled from the
  installed package;
* Triton's fused-attention tutorial, forward, fp16, 16k tokens, hidden 2048, non-causal: 395 TFLOP/s
  at head dim 128 and 403 at head dim 64 on an H100 80GB SXM5 (FlashAttention-3 paper, Shah et al.
  2024, arXiv:2407.08608, Figure 5 (a) and (c), the "Triton" bars at 16k); the kernel is
  :mod:`.public_kernels.attention`, modeled over the tutorial's tuning space, best modeled config
  (the tuner keeps the fastest).
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import sys
import types
from pathlib import Path

from .model import H200, Device, Launch

TOLERANCE = 0.20  # |published / modeled − 1| a point must stay within

#: H100 80GB SXM5: 792.1 TFLOP/s bf16, the published maximum achievable matmul rate (MAMF table of
#: stas00/ml-engineering, compute/accelerator/README.md, CUDA 12.1); 3.35 TB/s, NVIDIA's datasheet.
H100_SXM = dataclasses.replace(H200, name="H100 80GB SXM5", dram_bytes_s=3.35e12,
                               mma_flops={"bfloat16": 792.1e12, "float16": 792.1e12, "float32": 396.0e12})
#: GH200: 821.0 TFLOP/s bf16 (the same MAMF table, CUDA 12.5); 4.0 TB/s, the datasheet's HBM3 figure
#: (siglip-kernel does not say which GH200 memory it had; the HBM3e one has 4.9 TB/s).
GH200 = dataclasses.replace(H200, name="GH200", dram_bytes_s=4.0e12,
                            mma_flops={"bfloat16": 821.0e12, "float16": 821.0e12, "float32": 410.5e12})


@dataclasses.dataclass(frozen=True)
class Point:
    name: str
    source: str
    device: str
    published: float
    unit: str  # "ms" or "TFLOP/s"


POINTS = (
    Point("siglip-kernel 0.1.2: SigLIP bf16 65536²×768 fwd+bwd", "siglip-kernel 0.1.2 PyPI page (README)",
          "GH200/H100", 48.8, "ms"),
    Point("siglip-kernel 0.1.2: its Triton BCE pass alone", "siglip-kernel 0.1.2, triton_sigmoid_bce docstring",
          "GH200", 8.89, "ms"),
    Point("Triton tutorial attention fwd fp16, d=128, 16k, non-causal", "FlashAttention-3 paper, Fig. 5(c)",
          "H100 SXM5", 395.0, "TFLOP/s"),
    Point("Triton tutorial attention fwd fp16, d=64, 16k, non-causal", "FlashAttention-3 paper, Fig. 5(a)",
          "H100 SXM5", 403.0, "TFLOP/s"),
)


# ---------------------------------------------------------------------------------------------
# siglip-kernel
# ---------------------------------------------------------------------------------------------


def _siglip_bce_kernel():
    """``_sigmoid_bce_fwd_kernel`` from the installed siglip-kernel, without running its package's
    ``__init__`` (which asks the GPU for its architecture)."""
    try:
        return importlib.import_module("siglip_kernel.triton_sigmoid_bce")._sigmoid_bce_fwd_kernel
    except (AssertionError, RuntimeError):  # no GPU: its __init__ fails; load the submodule alone
        spec = importlib.util.find_spec("siglip_kernel")
        if spec is None:
            raise
        saved = sys.modules.pop("siglip_kernel", None)
        stub = types.ModuleType("siglip_kernel")
        stub.__path__ = [str(Path(spec.origin).parent)]
        sys.modules["siglip_kernel"] = stub
        try:
            return importlib.import_module("siglip_kernel.triton_sigmoid_bce")._sigmoid_bce_fwd_kernel
        finally:
            sys.modules.pop("siglip_kernel.triton_sigmoid_bce", None)
            sys.modules.pop("siglip_kernel.gpu_config", None)
            if saved is not None:
                sys.modules["siglip_kernel"] = saved
            else:
                sys.modules.pop("siglip_kernel", None)


SIGLIP_B, SIGLIP_D, SIGLIP_CHUNK = 65536, 768, 4096  # _pick_chunk_size: 4096 on sm_90 at B = 65536
SIGLIP_BLOCK, SIGLIP_WARPS = 2048, 4  # _select_block_size / _select_num_warps on sm_90


def siglip_bce(device: Device = GH200) -> dict:
    """The BCE pass over all chunks: a program per logit row, ``B / BLOCK`` column blocks each,
    bf16 logits read and overwritten with their gradient."""
    from .any_kernel import model_kernel

    b, c = SIGLIP_B, SIGLIP_CHUNK
    signature = {"logits_ptr": "*bf16", "loss_ptr": "*fp32", "grad_dot_logits_ptr": "*fp32", "grad_sum_ptr": "*fp32",
                 "num_rows": "i32", "row_offset": "i32", "stride_row": "i32", "temp_ptr": "*fp32", "bias_ptr": "*fp32"}
    chunks = math.ceil(b / c)
    one = model_kernel(_siglip_bce_kernel(), signature, {"B": b, "BLOCK_SIZE": SIGLIP_BLOCK}, (c,), 0.0,
                       2.0 * c * b * 2, warps=SIGLIP_WARPS, stages=3, ksteps=math.ceil(b / SIGLIP_BLOCK),
                       divisible=("num_rows", "row_offset", "stride_row"), device=device)
    return {**{k: v * chunks if k.endswith("_ms") else v for k, v in one.items()}, "launches": chunks}


def siglip_total(device: Device = GH200, bce: dict | None = None) -> tuple[list[dict], float]:
    """siglip-kernel's bf16 path at 65536² × 768, launch group by launch group: ``(rows, total ms)``."""
    b, d, c = SIGLIP_B, SIGLIP_D, SIGLIP_CHUNK
    chunks = math.ceil(b / c)
    bce = bce or siglip_bce(device)
    item = 2
    groups = [
        ("logits = img_chunk · txtᵀ (cuBLAS, bf16 out)", (c, b, d, chunks),
         ((c + b) * d * item + c * b * item) * chunks),
        ("grad_img[chunk] = grad · txt (cuBLAS)", (c, d, b, chunks), (c * b + b * d + c * d) * item * chunks),
        ("grad_txt += gradᵀ · img_chunk (cuBLAS addmm, bf16)", (b, d, c, chunks),
         (c * b + c * d + 2 * b * d) * item * chunks),
    ]
    rows = []
    for name, (m, n, k, count), dram in groups:
        r = Launch(name, None, 0, 0, 1, 2.0 * m * n * k * count, dram, gemms=((m, n, k, count, item, False),))
        rows.append({"launch": name, **r.model(device, "bfloat16")})
    rows.append({"launch": f"Triton BCE pass ×{bce['launches']}", **{k: v for k, v in bce.items() if k != "stats"}})
    # grad_txt zeroed, the saved gradients scaled by the output gradient in backward (bf16 read + write)
    small = Launch("elementwise", None, 0, 0, 1, 0.0, (1 + 2 * 2) * b * d * item).model(device, "bfloat16")
    rows.append({"launch": "zeros + two gradient scalings (torch)", **small})
    return rows, sum(r["modeled_ms"] for r in rows)


# ---------------------------------------------------------------------------------------------
# Triton's attention tutorial
# ---------------------------------------------------------------------------------------------

ATTENTION_TOKENS, ATTENTION_HIDDEN = 16384, 2048  # FA3's benchmark: batch × seqlen = 16k, heads × d = 2048


def attention(head_dim: int, seqlen: int = ATTENTION_TOKENS, device: Device = H100_SXM, configs=None) -> list[dict]:
    """Each launchable config of the tutorial's space (or of ``configs``): modeled ms and TFLOP/s (4·L²·d per
    head)."""
    from .any_kernel import model_kernel
    from .public_kernels.attention import CONFIGS

    heads, batch = ATTENTION_HIDDEN // head_dim, ATTENTION_TOKENS // seqlen
    ints = ("stride_qz", "stride_qh", "stride_qm", "stride_kz", "stride_kh", "stride_kn", "stride_vz", "stride_vh",
            "stride_vk", "stride_oz", "stride_oh", "stride_om", "Z", "H", "N_CTX")
    signature = {**dict.fromkeys(ints, "i32"), "Q": "*fp16", "K": "*fp16", "V": "*fp16", "Out": "*fp16",
                 "LSE": "*fp32", "sm_scale": "fp32"}
    flops = 4.0 * seqlen * seqlen * head_dim * heads * batch
    dram = 4.0 * batch * heads * seqlen * head_dim * 2  # Q, K, V read once (L2 serves the re-reads), O written
    out = []
    for bm, bn, warps, stages in configs or CONFIGS:
        r = model_kernel(("benchmarks.static.public_kernels.attention", "attention_fwd_kernel"), signature,
                         {"HEAD_DIM": head_dim, "BLOCK_M": bm, "BLOCK_N": bn,  # unit strides: the JIT's constants
                          "stride_qk": 1, "stride_kk": 1, "stride_vn": 1, "stride_on": 1},
                         (math.ceil(seqlen / bm), batch * heads), flops, dram, warps=warps, stages=stages,
                         ksteps=math.ceil(seqlen / bn), divisible=ints, dtype="float16", device=device)
        if r["ctas_per_sm"] == 0:  # its shared memory exceeds an SM's: the tuner cannot launch it
            continue
        s = r["stats"]
        out.append({"config": (bm, bn, warps, stages), "tflops": flops / r["modeled_ms"] * 1e-9,
                    "registers": s.registers, "spills": s.spill_stores, "specialized": s.specialized,
                    **{k: v for k, v in r.items() if k != "stats"}})
    return out


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------


def run() -> list[dict]:
    """Every point with its modeled value and ratio (published / modeled in time; for TFLOP/s,
    modeled / published)."""
    bce = siglip_bce()
    rows, total = siglip_total(bce=bce)
    results = []
    for point in POINTS:
        detail = ""
        if point.name.startswith("siglip-kernel 0.1.2: SigLIP"):
            modeled = total
            detail = "; ".join(f"{r['launch']} {r['modeled_ms']:.1f} ms ({r['bound']})" for r in rows)
        elif "BCE" in point.name:
            modeled = bce["modeled_ms"]
            detail = f"bound {bce['bound']}, issue {bce['issue_ms']:.2f} ms, memory {bce['memory_ms']:.2f} ms"
        else:
            configs = attention(128 if "d=128" in point.name else 64)
            best = max(configs, key=lambda r: r["tflops"])
            modeled = best["tflops"]
            detail = (f"best modeled config {best['config']} ({best['bound']}, {best['ctas_per_sm']} CTAs/SM); "
                      f"range over {len(configs)} launchable configs {min(r['tflops'] for r in configs):.0f}–"
                      f"{modeled:.0f} TFLOP/s")
        ratio = point.published / modeled if point.unit == "ms" else modeled / point.published
        results.append({**dataclasses.asdict(point), "modeled": modeled, "ratio": ratio,
                        "within": abs(ratio - 1) <= TOLERANCE, "detail": detail})
    return results


def table(results: list[dict]) -> str:
    lines = ["| point | source | device | published | modeled (MODELED) | published/modeled time | within ±20% |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['source']} | {r['device']} | {r['published']:g} {r['unit']} | "
                     f"{r['modeled']:.1f} {r['unit']} | {r['ratio']:.2f} | {'yes' if r['within'] else '**no**'} |")
    notes = "\n".join(f"- {r['name']}: {r['detail']}" for r in results)
    return "\n".join(lines) + "\n\n" + notes
