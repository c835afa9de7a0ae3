"""The calibration points measured on a GPU, beside what the static model gives for that GPU.

The calibration (:mod:`.calibration`) holds the model to *published* times of public kernels; where it
misses (siglip-kernel's SigLIP total, the attention tutorial at head dim 128), only a measurement of the
same kernels on the same device can say which term the model lacks. ``measure`` times them on the GPU
at the calibration's own shapes — the attention forward over the tutorial's launchable configs, the
siglip-kernel loss (forward + backward) and its Triton BCE pass, the three cuBLAS GEMMs of siglip-kernel's
chunk loop, and a large square GEMM (the device's matmul rate) — and writes ``device-points.json``;
``compare`` (on any machine: it compiles for sm_90a) puts each beside the model for that device::

    python -m benchmarks.static.device_points measure --out DIR [--time-limit S] [--tiny]
    python -m benchmarks.static.device_points compare DIR/device-points.json [--md FILE]

``--tiny``: the same steps on the CPU at tiny sizes (the attention kernel in Triton's interpreter), to
check the script; its times say nothing of a GPU. Measured times are medians of CUDA-event-timed calls
after a warm-up; every model figure is MODELED.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

from .calibration import ATTENTION_HIDDEN, ATTENTION_TOKENS, SIGLIP_B, SIGLIP_CHUNK, SIGLIP_D

RESULTS_FILE = "device-points.json"
CHECKED_ROWS = 256  # attention rows checked against fp32
#: a config's largest error on those rows, relative to their largest value (P and O in fp16 err by ~1e-3 of it)
ATTENTION_TOLERANCE = 0.02
TINY = {"tokens": 128, "hidden": 64, "head_dims": (16, 32), "siglip_b": 256, "siglip_d": 32, "chunk": 64,
        "square": 256, "reps": 2}
FULL = {"tokens": ATTENTION_TOKENS, "hidden": ATTENTION_HIDDEN, "head_dims": (64, 128), "siglip_b": SIGLIP_B,
        "siglip_d": SIGLIP_D, "chunk": SIGLIP_CHUNK, "square": 8192, "reps": 10}


def _timed_ms(fn, device, reps: int = 10, warmup: int = 2) -> float:
    """Median milliseconds of ``fn()`` (no gradients) over ``reps`` calls after ``warmup`` (CUDA events on a
    GPU: :func:`benchmarks.measure.time_point`)."""
    from benchmarks.measure import time_point

    return time_point(lambda _inputs: fn(), [{}], "fwd", device, reps, warmup)["ms"]


def measure_attention(sizes: dict, device, deadline: float, configs=None) -> list[dict]:
    """Each config of the tutorial's space at each head dim: ms and TFLOP/s (4·L²·d per head), fp16,
    non-causal; a config the device cannot launch (shared memory) is recorded as such."""
    import torch
    import triton
    from triton.runtime.errors import OutOfResources

    from .public_kernels.attention import CONFIGS, attention_fwd_kernel

    rows = []
    tokens = sizes["tokens"]
    for head_dim in sizes["head_dims"]:
        heads = sizes["hidden"] // head_dim
        q, k, v = (torch.randn(1, heads, tokens, head_dim, device=device, dtype=torch.float16) for _ in range(3))
        out = torch.empty_like(q)
        lse = torch.empty(heads, tokens, device=device, dtype=torch.float32)
        flops = 4.0 * tokens * tokens * head_dim * heads
        # head 0's first rows in fp32: what every config's output must match (a wrong kernel is not timed)
        weights = torch.softmax(q[0, 0, :CHECKED_ROWS].float() @ k[0, 0].float().T * head_dim ** -0.5, dim=1)
        expected = weights @ v[0, 0].float()
        for bm, bn, warps, stages in configs or CONFIGS:
            row = {"point": "attention", "head_dim": head_dim, "config": [bm, bn, warps, stages]}
            if time.monotonic() > deadline:
                rows.append({**row, "status": "not run (time limit)"})
                continue

            call = functools.partial(
                attention_fwd_kernel[(triton.cdiv(tokens, bm), heads)], q, k, v, head_dim ** -0.5, lse, out,
                *q.stride(), *k.stride(), *v.stride(), *out.stride(), 1, heads, tokens, HEAD_DIM=head_dim, BLOCK_M=bm,
                BLOCK_N=bn, num_warps=warps, num_stages=stages)
            try:
                call()
            except OutOfResources as exc:
                rows.append({**row, "status": f"not launchable: {exc}"})
                continue
            except Exception as exc:  # noqa: BLE001  (recorded: the other configs still run)
                rows.append({**row, "status": f"failed: {type(exc).__name__}: {exc}"[:300]})
                continue
            error = float((out[0, 0, :CHECKED_ROWS].float() - expected).abs().max() / expected.abs().max())
            if not error <= ATTENTION_TOLERANCE:
                rows.append({**row, "status": f"wrong: relative error {error:.3g} on head 0's first rows"})
                continue
            ms = _timed_ms(call, device, sizes["reps"])
            rows.append({**row, "status": "ok", "ms": ms, "tflops": flops / (ms * 1e-3) / 1e12, "relative_error": error})
    return rows


def _siglip_loss():
    """siglip-kernel's bf16 chunked loss and its BCE pass, or a reason why not."""
    try:
        from siglip_kernel.fused_chunked_bf16 import fused_chunked_bf16_siglip_loss
        from siglip_kernel.triton_sigmoid_bce import sigmoid_bce_forward
    except Exception as exc:  # noqa: BLE001  (not installed, or its __init__ needs a GPU)
        return None, None, f"siglip-kernel not importable: {type(exc).__name__}: {exc}"
    return fused_chunked_bf16_siglip_loss, sigmoid_bce_forward, ""


def measure_siglip(sizes: dict, device) -> list[dict]:
    """siglip-kernel's loss forward + backward at ``B × D`` (bf16 on a GPU), its BCE pass over every chunk,
    and the three cuBLAS GEMMs of its chunk loop times the chunk count."""
    import torch

    b, d, c = sizes["siglip_b"], sizes["siglip_d"], sizes["chunk"]
    chunks = math.ceil(b / c)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    img = torch.nn.functional.normalize(torch.randn(b, d, device=device), dim=1).to(dtype)
    txt = torch.nn.functional.normalize(torch.randn(b, d, device=device), dim=1).to(dtype)
    rows = []
    logits = torch.matmul(img[:c], txt.T)
    grad_img = torch.empty(c, d, device=device, dtype=dtype)
    grad_txt = torch.zeros(b, d, device=device, dtype=dtype)
    gemms = {  # named as calibration.siglip_total names its launches
        "logits = img_chunk · txtᵀ": lambda: torch.matmul(img[:c], txt.T),
        "grad_img[chunk] = grad · txt": lambda: torch.matmul(logits, txt, out=grad_img),
        "grad_txt += gradᵀ · img_chunk": lambda: grad_txt.addmm_(logits.T, img[:c]),
    }
    for name, fn in gemms.items():
        ms = _timed_ms(fn, device, sizes["reps"])
        rows.append({"point": "siglip gemm", "launch": name, "status": "ok", "ms": ms * chunks, "chunks": chunks,
                     "tflops": 2.0 * c * b * d / (ms * 1e-3) / 1e12})
    loss_fn, bce, why = _siglip_loss()
    if loss_fn is None:
        rows.append({"point": "siglip-kernel loss", "status": why})
        return rows
    try:
        rows += _time_siglip_kernel(loss_fn, bce, img, txt, sizes, device)
    except Exception as exc:  # noqa: BLE001  (recorded: the attention points still run)
        rows.append({"point": "siglip-kernel loss", "status": f"failed: {type(exc).__name__}: {exc}"[:300]})
    return rows


def _time_siglip_kernel(loss_fn, bce, img, txt, sizes: dict, device) -> list[dict]:
    """siglip-kernel's BCE pass over every chunk, then its loss forward + backward."""
    import torch

    from benchmarks.measure import time_point

    b, c = sizes["siglip_b"], sizes["chunk"]
    chunks = math.ceil(b / c)
    rows = []
    scale = torch.tensor(math.log(10.0), device=device)
    bias = torch.tensor(-10.0, device=device)
    state = {"logits": torch.matmul(img[:c], txt.T)}
    fresh = state["logits"].clone()

    def bce_pass():  # in place: each call starts from the same raw logits
        state["logits"].copy_(fresh)
        bce(state["logits"], 0, b, return_scalar_grads=True, temperature=scale.exp().float(), bias_val=bias.float())

    copy_ms = _timed_ms(lambda: state["logits"].copy_(fresh), device, sizes["reps"])
    rows.append({"point": "siglip-kernel BCE pass", "status": "ok", "chunks": chunks,
                 "ms": max(0.0, _timed_ms(bce_pass, device, sizes["reps"]) - copy_ms) * chunks})
    leaves = {name: t.detach().clone().requires_grad_(True)
              for name, t in zip(("img", "txt", "scale", "bias"), (img, txt, scale, bias))}
    ms = time_point(lambda x: loss_fn(x["img"], x["txt"], x["scale"], x["bias"], chunk_size=c), [leaves], "fwd_bwd",
                    device, max(2, sizes["reps"] // 2))["ms"]
    rows.append({"point": "siglip-kernel loss", "status": "ok", "ms": ms})
    return rows


def measure(out: Path, time_limit_s: float = 300.0, tiny: bool = False) -> dict:
    """Every point on this machine's GPU (``tiny``: its CPU, small sizes) into ``out/device-points.json``."""
    import torch

    from benchmarks._env import environment
    from benchmarks.measure import matmul_tflops

    deadline = time.monotonic() + time_limit_s
    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not tiny:
        raise SystemExit("no GPU: measure needs one (or --tiny, on the CPU at tiny sizes)")
    sizes = TINY if tiny else FULL
    rows = [{"point": "square gemm", "size": sizes["square"], "status": "ok",
             "tflops": matmul_tflops(torch.bfloat16 if device.type == "cuda" else torch.float32, device,
                                     sizes["square"], reps=sizes["reps"])}]
    rows += measure_siglip(sizes, device)
    rows += measure_attention(sizes, device, deadline, configs=None if not tiny else [(16, 16, 1, 1)])
    result = {"environment": environment(device), "tiny": tiny, "sizes": sizes, "points": rows}
    if device.type == "cuda":
        result["environment"]["gpu"] = torch.cuda.get_device_name(device)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps(result, indent=1))
    return result


def _device_for(name: str):
    """The model's constants for the measured GPU: H100 SXM or GH200 when named, else the H200's."""
    from .calibration import GH200, H100_SXM
    from .model import H200

    return H100_SXM if "H100" in name else GH200 if "GH200" in name else H200


def compare(result: dict) -> str:
    """Markdown: each measured point beside the model for the measured device (MODELED), measured / modeled
    in time (at tiny sizes the measured values alone: the model is for a GPU at the calibration's shapes)."""
    from . import calibration

    env = result["environment"]
    device = _device_for(env.get("gpu", ""))
    lines = [(f"# Calibration points measured on {env.get('gpu', env['device'])} (commit {env['commit']}, torch "
              f"{env['torch']}, triton {env['triton']})"), ""]
    points = result["points"]
    if result.get("tiny"):
        lines += ["Tiny sizes on a CPU (a check of the script): the times say nothing of a GPU.", "",
                  "| point | measured |", "|---|---|"]
        for p in points:
            shown = (f"{p['ms']:.2f} ms" if "ms" in p else f"{p['tflops']:.3f} TFLOP/s" if "tflops" in p
                     else p["status"])
            lines.append(f"| {p['point']} {p.get('launch', '')}{p.get('config', '')} | {shown} |")
        return "\n".join(lines) + "\n"
    lines += [(f"Model: {device.name} constants; every modeled figure MODELED. Ratio: measured / modeled time "
               f"(above 1: the model is optimistic)."), "",
              "| point | measured | modeled (MODELED) | measured / modeled |", "|---|---|---|---|"]
    rate = device.mma_flops["bfloat16"] / 1e12
    model_rows, model_total = calibration.siglip_total(device)
    modeled = {r["launch"].split(" (")[0]: r["modeled_ms"] for r in model_rows}
    for p in points:
        if p["status"] != "ok":
            lines.append(f"| {p['point']} {p.get('launch', '')}{p.get('config', '')} | {p['status']} | | |")
        elif p["point"] == "square gemm":
            lines.append(f"| bf16 GEMM {p['size']}³ | {p['tflops']:.0f} TFLOP/s | {rate:.0f} TFLOP/s (the device's "
                         f"matmul rate) | {rate / p['tflops']:.2f} |")
        elif p["point"] == "siglip gemm":
            m = modeled[p["launch"]]
            lines.append(f"| {p['launch']} ×{p['chunks']} | {p['ms']:.2f} ms ({p['tflops']:.0f} TFLOP/s) | "
                         f"{m:.2f} ms | {p['ms'] / m:.2f} |")
        elif p["point"] == "siglip-kernel BCE pass":
            m = calibration.siglip_bce(device)["modeled_ms"]
            lines.append(f"| its BCE pass ×{p['chunks']} | {p['ms']:.2f} ms | {m:.2f} ms | {p['ms'] / m:.2f} |")
        elif p["point"] == "siglip-kernel loss":
            lines.append(f"| siglip-kernel SigLIP fwd+bwd | {p['ms']:.2f} ms | {model_total:.2f} ms | "
                         f"{p['ms'] / model_total:.2f} |")
    for head_dim in result["sizes"]["head_dims"]:
        measured = [p for p in points if p["point"] == "attention" and p["head_dim"] == head_dim
                    and p["status"] == "ok"]
        configs = [tuple(p["config"]) for p in measured]
        model = {r["config"]: r["tflops"] for r in calibration.attention(head_dim, device=device, configs=configs)}
        for p in sorted(measured, key=lambda p: -p["tflops"]):
            m = model.get(tuple(p["config"]))
            lines.append(f"| attention fwd fp16 d={head_dim} {tuple(p['config'])} | {p['tflops']:.0f} TFLOP/s | "
                         + (f"{m:.0f} TFLOP/s | {m / p['tflops']:.2f} |" if m else "not launchable in the model | |"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="time the points on this machine's GPU")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--time-limit", type=float, default=300.0, help="seconds; attention configs past it are skipped")
    m.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (checks the script)")
    c = sub.add_parser("compare", help="the measured points beside the model (compiles for sm_90a)")
    c.add_argument("results", type=Path)
    c.add_argument("--md", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    if args.command == "measure" and not args.time_limit > 0:
        parser.error(f"--time-limit must be a positive number of seconds, got {args.time_limit}")
    if args.command == "measure":
        result = measure(args.out, args.time_limit, args.tiny)
        print(f"{sum(p['status'] == 'ok' for p in result['points'])} points measured: {args.out / RESULTS_FILE}")
        return 0
    text = compare(json.loads(args.results.read_text()))
    if args.md:
        args.md.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
