"""The first run on a fresh GPU machine, within a time limit: what it does, in which order, and its dry run.

    python -m tools.gpu_run.first_run run --out DIR            # on the GPU machine (tools/gpu_run/session.sh first)
    python -m tools.gpu_run.first_run run --tiny --out DIR     # the same steps on a CPU at tiny sizes
    python -m tools.gpu_run.first_run dry-run [--tiny]         # on a CPU: the plan, predicted times, compile counts

Steps, each capped in time and run in a process of its own, each writing into ``DIR`` as soon as
it has a result (seven files at most: ``session.log``, ``results.jsonl``, ``results.md``, one PNG per
dtype × D of the timings, ``kernel-report.md``, ``device-points.json``):

1. ``environment``: GPU, driver, torch, triton, the matmul rates and the copy bandwidth;
2. ``build``: the Python package (editable), then at once the CUDA extension for this GPU's own arch
   (nvcc in parallel) beside the Triton precompile (:mod:`tools.gpu_run.triton_cache`: kernels the
   copied cache lacks are compiled on every core before the timings);
3. ``smoke``: every benchmark loss × {triton, cuda} × {bf16, fp32} × {D = 768, an odd D} at one modest
   size against float64 (``chunked``), judged against PyTorch's own error in that dtype (``naive``),
   and a bitwise determinism check of both backends;
4. ``headline``: the benchmark suite's forward+backward points with the tuner held to its first
   candidate per list (``CONTRASTIVE_OPS_TRITON_CANDIDATES=1``: the kernel report's default configs,
   and one compile per kernel), the largest point last and only if time remains;
5. ``report``: the tables and plots, the triton rows measured beside the model's figures (made on
   the CPU by the dry run and copied with the cache);
6. ``calibration``: the static model's calibration points timed on this GPU
   (:mod:`benchmarks.static.device_points`), only in time the GPU tests can spare;
7. ``gpu tests``: ``pytest -m gpu`` in whatever time is left.

Every figure the dry run prints is a prediction: compile seconds are measured on this machine (Triton's
ahead-of-time compile for sm_90a, on this machine's cores), kernel times come from the static kernel
report's model, and the rest are stated assumptions.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GPU_TESTS_MIN_S = 60  # what the plan keeps for pytest -m gpu at least
CALIBRATION_MIN_S = 30  # the calibration step runs only with this much time of its own
LIMIT_S = 480  # the default time limit: a 10-minute allowance less the machine's start, the copies and a margin
MODELED_FILE = "modeled.json"  # beside the Triton cache: the model's ms of each triton headline point
TRAVEL_LIMIT_MIB = 64


@dataclass(frozen=True)
class Group:
    """One sweep of the benchmark suite: a loss at these N and D (bf16), for these implementations."""

    loss: str
    ns: tuple
    d: int
    impls: tuple
    if_time_remains: bool = False


@dataclass(frozen=True)
class Plan:
    tiny: bool
    smoke_n: int
    smoke_d: tuple
    smoke_dtypes: tuple
    smoke_backends: tuple
    groups: tuple
    headline_dtype: str
    caps: dict  # step -> its time cap in seconds


GPU_PLAN = Plan(
    tiny=False, smoke_n=2048, smoke_d=(768, 97), smoke_dtypes=("bfloat16", "float32"),
    smoke_backends=("triton", "cuda"),
    groups=(
        Group("clip", (16384, 65536), 768, ("triton", "cuda", "inf_cl", "memeff", "naive")),
        Group("clip", (65536,), 768, ("compiled_naive",)),  # one torch.compile (a compile per size)
        Group("siglip", (65536,), 768, ("triton", "cuda", "siglip_kernel")),
        Group("info_nce", (65536,), 128, ("triton", "cuda", "inf_cl")),
        Group("supcon", (32768,), 128, ("triton", "cuda")),
        Group("ring", (32768,), 128, ("triton", "cuda")),
        Group("clip", (1048576,), 768, ("triton",), if_time_remains=True),
    ),
    headline_dtype="bfloat16",
    caps={"environment": 45, "build": 150, "smoke": 100, "headline": 190, "report": 30, "calibration": 75,
          "gpu tests": 120},
)
# CPU: Triton in its interpreter (fp32: its bf16 tl.dot is broken), no cuda backend to run
TINY_PLAN = Plan(
    tiny=True, smoke_n=24, smoke_d=(13,), smoke_dtypes=("float32",), smoke_backends=("triton", "cuda"),
    groups=(
        Group("clip", (16, 32), 16, ("triton", "chunked", "naive")),
        Group("info_nce", (32,), 16, ("triton", "naive")),
        Group("ring", (32,), 16, ("triton", "naive")),
        Group("clip", (64,), 16, ("triton",), if_time_remains=True),
    ),
    headline_dtype="float32",
    caps={"environment": 30, "build": 120, "smoke": 150, "headline": 150, "report": 30, "calibration": 60,
          "gpu tests": 60},
)
STEPS = ("environment", "build", "smoke", "headline", "report", "calibration", "gpu tests")


def plan(tiny: bool = False) -> Plan:
    return TINY_PLAN if tiny else GPU_PLAN


# ---------------------------------------------------------------------------------------------
# step 1: environment
# ---------------------------------------------------------------------------------------------


def step_environment(p: Plan, out: Path) -> None:
    import torch

    from benchmarks import measure
    from benchmarks._env import environment
    from contrastive_ops import info

    print(info.report())
    device = torch.device("cuda" if torch.cuda.is_available() and not p.tiny else "cpu")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, check=False).stdout.strip()
        print("nvidia-smi:", smi)
    size = 8192 if device.type == "cuda" else 512
    row = {"kind": "environment", **environment(device), "device_type": device.type,
           "matmul_tflops_bf16": measure.matmul_tflops(torch.bfloat16, device, size),
           "matmul_tflops_fp32": measure.matmul_tflops(torch.float32, device, size),
           "fp32_precision": torch.get_float32_matmul_precision(),
           "copy_gib_per_s": measure.copy_gib_per_s(device, mib=1024 if device.type == "cuda" else 64)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        row.update(capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1))
    print(f"matmul {size}^3: bf16 {row['matmul_tflops_bf16']:.1f} TFLOP/s, fp32 ({row['fp32_precision']}) "
          f"{row['matmul_tflops_fp32']:.1f} TFLOP/s; copy {row['copy_gib_per_s']:.0f} GiB/s")
    _append(out, row)


# ---------------------------------------------------------------------------------------------
# step 2: build (the extension for this GPU's arch, beside the Triton precompile)
# ---------------------------------------------------------------------------------------------


def gpu_arch() -> str:
    """This GPU's nvcc arch: ``90a`` on Hopper (wgmma needs the arch-specific target), else ``XY``."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"{major}{minor}" + ("a" if (major, minor) == (9, 0) else "")


def step_build(p: Plan, out: Path, cap_s: float) -> int:
    """GPU: the package installed editable (no extension), then the extension built in place for
    this GPU's arch while :func:`triton_cache.precompile` fills the Triton cache. CPU (tiny): the
    same extension build for sm_90a into a temporary folder (the installed one stays as it is)."""
    env = dict(os.environ)
    start = time.monotonic()
    if p.tiny:
        with tempfile.TemporaryDirectory() as tmp:
            env.update(CONTRASTIVE_OPS_BUILD_CUDA="1", CONTRASTIVE_OPS_CUDA_ARCHS="90a")
            rc = _capped([sys.executable, "setup.py", "-q", "build_ext", "--build-temp", f"{tmp}/t",
                          "--build-lib", f"{tmp}/l"], cap_s, env)
        print(f"extension for sm_90a: exit {rc} in {time.monotonic() - start:.0f} s (a temporary build: no GPU on this machine)")
        print("Triton precompile: not on a CPU (the dry run compiles the plan's kernels on this machine)")
        return rc
    rc = _capped([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."],
                 cap_s, dict(env, CONTRASTIVE_OPS_BUILD_CUDA="0"))
    if rc != 0:
        return rc
    arch = gpu_arch()
    left = cap_s - (time.monotonic() - start)
    build = subprocess.Popen([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], start_new_session=True,
                             env=dict(env, CONTRASTIVE_OPS_BUILD_CUDA="1", CONTRASTIVE_OPS_CUDA_ARCHS=arch))
    workers = max(1, (os.cpu_count() or 2) - 4)  # nvcc keeps a few cores
    pre = subprocess.Popen([sys.executable, "-m", "tools.gpu_run.triton_cache", "precompile", "--deadline-s",
                            str(max(10, left - 10)), "--workers", str(workers)], start_new_session=True)
    rc_build = _wait(build, left)
    print(f"extension for sm_{arch}: exit {rc_build} in {time.monotonic() - start:.0f} s")
    rc_pre = _wait(pre, max(1.0, cap_s - (time.monotonic() - start)))
    print(f"Triton precompile: exit {rc_pre} in {time.monotonic() - start:.0f} s")
    return rc_build


# ---------------------------------------------------------------------------------------------
# step 3: smoke (correctness of every loss on both GPU backends, and determinism)
# ---------------------------------------------------------------------------------------------

def _evaluate(call, x: dict, backend: str):
    """``(loss, {leaf: grad})`` of one workload call; a leaf the loss does not use is left out."""
    import torch

    loss = call(x, backend)
    leaves = [k for k, v in x.items() if v.requires_grad]
    grads = torch.autograd.grad(loss, [x[k] for k in leaves], allow_unused=True)
    return loss.detach(), {k: g.detach() for k, g in zip(leaves, grads) if g is not None}


def _cast(x: dict, dtype) -> dict:
    """The inputs in ``dtype`` (features; the scale and bias stay fp32, float64 for the reference)."""
    import torch

    out = {}
    for k, v in x.items():
        if not v.dtype.is_floating_point:
            out[k] = v
            continue
        target = dtype if (k not in ("scale", "bias") or dtype == torch.float64) else torch.float32
        out[k] = v.detach().to(target).requires_grad_(True)
    return out


def _smoke_shapes(p: Plan):
    from contrastive_ops.check import Shapes

    return [Shapes(p.smoke_n, max(1, p.smoke_n // 4), d) for d in p.smoke_d]


def step_smoke(p: Plan, out: Path) -> int:
    """``python -m contrastive_ops.check`` at the plan's sizes (every loss on naive and the plan's
    backends, in its dtypes, against float64, with its bitwise repeat), as rows of ``results.jsonl``."""
    import torch

    from contrastive_ops import check

    device = torch.device("cuda" if torch.cuda.is_available() and not p.tiny else "cpu")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    failed = 0
    for shapes in _smoke_shapes(p):
        rows = check.run_checks(device, ["naive", *p.smoke_backends], list(p.smoke_dtypes), list(check.CASES),
                                shapes=shapes)
        for r in rows:
            row = {"kind": "smoke", "loss": r.loss, "backend": r.backend, "dtype": r.dtype, "d": shapes.d,
                   "n": shapes.n, "m": shapes.n}
            if r.verdict.startswith("skipped"):
                _append(out, dict(row, status="unavailable", reason=r.verdict))
                continue
            if r.loss_err is None:  # the call raised
                _append(out, dict(row, status="error", error=r.verdict[:300]))
                failed += 1
                continue
            judged = r.loss_bound is not None  # naive is the yardstick, judged by nothing but itself
            errors = {"loss": r.loss_err, f"d/d{r.grad_input}": r.grad_err}
            _append(out, dict(row, status="ok", errors=errors, judged=judged, passed=not r.failed,
                              verdict=r.verdict))
            if r.deterministic is not None:
                _append(out, {"kind": "determinism", "loss": r.loss, "backend": r.backend, "dtype": r.dtype,
                              "n": shapes.n, "d": shapes.d, "bitwise_equal": r.deterministic})
            failed += r.failed
            print(f"smoke {r.loss:18s} {r.backend:15s} {r.dtype:8s} d={shapes.d:<4d} loss {r.loss_err:.1e} "
                  f"grad {r.grad_err:.1e} | {r.verdict}", flush=True)
    if device.type == "cuda":
        _library_kernels(p, out, device)
    print(f"smoke: {failed} failure(s)")
    return 1 if failed else 0


def _library_kernels(p: Plan, out: Path, device) -> None:
    """The GPU kernels one forward+backward of the cuda backend launches (cuBLAS's GEMMs beside our
    epilogues), from torch's profiler: what the static report cannot see."""
    import torch

    import contrastive_ops as co
    from benchmarks.workloads import WORKLOADS, make_inputs

    if not co.backend_status("cuda", device)[0]:
        return
    x = _cast(make_inputs(p.smoke_n, p.smoke_d[0], torch.float32, device, seed=2), torch.bfloat16)
    _evaluate(WORKLOADS["clip"].call, x, "cuda")  # warm
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        _evaluate(WORKLOADS["clip"].call, _cast(x, torch.bfloat16), "cuda")
        torch.cuda.synchronize()
    names = sorted({e.key for e in prof.key_averages()})
    _append(out, {"kind": "cuda_kernels", "loss": "clip", "dtype": "bfloat16", "n": p.smoke_n, "d": p.smoke_d[0],
                  "kernels": names})
    print("cuda backend's GPU kernels (clip bf16):", "; ".join(names))


def _smoke_line(row) -> str:
    errs = " ".join(f"{k} {v:.1e}" for k, v in row["errors"].items())
    verdict = "" if "worst_ratio" not in row else (
        f" | {row['worst_ratio']:.2f} of 2x naive" + ("" if row["judged"] else " (not judged)"))
    return f"smoke {row['loss']:18s} {row['backend']:7s} {row['dtype']:8s} d={row['d']:<4d} {errs}{verdict}"


# ---------------------------------------------------------------------------------------------
# step 4: headline timings
# ---------------------------------------------------------------------------------------------


def step_headline(p: Plan, out: Path, cap_s: float) -> int:
    from benchmarks import suite

    start = time.monotonic()
    results = out / "results.jsonl"
    status = 0
    for g in p.groups:
        left = cap_s - (time.monotonic() - start) - 10  # room to write the last rows
        if left <= 0 or (g.if_time_remains and left < predicted_group_s(p, g, _modeled(out))):
            print(f"headline {g.loss} N={list(g.ns)}: not run ({left:.0f} s left)")
            continue
        args = ["--losses", g.loss, "--n", *map(str, g.ns), "--d", str(g.d), "--dtypes", p.headline_dtype,
                "--impls", *g.impls, "--modes", "fwd_bwd", "--no-gpu-tests", "--no-report", "--out", str(results),
                "--budget-s", str(int(left)), "--max-seconds", "30"] + (["--reps", "3", "--time-interpreter"] if p.tiny else [])
        try:
            suite.main(args)
        except Exception as exc:  # noqa: BLE001  (one group's failure leaves the others their time)
            print(f"headline {g.loss}: {type(exc).__name__}: {exc}")
            status = 1
    return status


# ---------------------------------------------------------------------------------------------
# step 5: report (tables, plots, measured beside modeled)
# ---------------------------------------------------------------------------------------------


def _rows(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _modeled(out: Path | None = None) -> dict:
    from tools.gpu_run.triton_cache import CACHE_DIR

    path = CACHE_DIR / MODELED_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _point_key(loss, n, m, d, dtype) -> str:
    return f"{loss} {n}x{m} d={d} {dtype}"


def step_report(p: Plan, out: Path) -> int:
    from benchmarks import report

    rows = _rows(out)
    bench = [r for r in rows if "kind" not in r]
    smoke = [r for r in rows if r.get("kind") == "smoke"]
    lines = ["# First GPU run" if not p.tiny else "# First-run steps at tiny sizes (CPU)", ""]
    env = next((r for r in rows if r.get("kind") == "environment"), None)
    if env:
        lines.append(f"{env['device']}, torch {env['torch']}, triton {env['triton']}, commit {env['commit']}, "
                     f"{env['timestamp']}: matmul bf16 {env['matmul_tflops_bf16']:.1f} TFLOP/s, fp32 "
                     f"({env['fp32_precision']}) {env['matmul_tflops_fp32']:.1f} TFLOP/s, copy "
                     f"{env['copy_gib_per_s']:.0f} GiB/s (measured).\n")
    lines += ["## Smoke: relative error against float64 (loss / worst gradient), and the verdict", "",
              "| loss | D | dtype | " + " | ".join(("naive",) + p.smoke_backends) + " |",
              "|---|---|---|" + "---|" * (1 + len(p.smoke_backends))]
    cells: dict = {}
    for r in smoke:
        key = (r["loss"], r["d"], r["dtype"])
        if r["status"] != "ok":
            cell = r["status"]
        else:
            grads = [v for k, v in r["errors"].items() if k != "loss"]
            cell = f"{r['errors']['loss']:.1e} / {max(grads, default=0.0):.1e}"
            if r.get("judged"):
                cell += " ok" if r["passed"] else " **FAIL**"
            elif "judged" in r:
                cell += " (the yardstick)"
        cells.setdefault(key, {})[r["backend"]] = cell
    for (loss, d, dtype), by in cells.items():
        lines.append(f"| {loss} | {d} | {dtype} | " + " | ".join(by.get(b, "") for b in ("naive",) + p.smoke_backends)
                     + " |")
    for r in rows:
        if r.get("kind") == "determinism":
            lines.append(f"\nDeterminism ({r['loss']}, {r['backend']}, {r['dtype']}, N={r['n']}, D={r['d']}): "
                         + ("bitwise equal over two calls" if r["bitwise_equal"] else "**differs between two calls**"))
    lines += ["", "## Timings (measured)", "", report.table(bench) if bench else "(none)"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("table:", out / "results.md")
    try:
        for path in report.plots(bench, str(out / "results")):
            print("plot:", path)
    except ImportError as exc:
        print(f"plots: not drawn ({exc})")
    (out / "kernel-report.md").write_text(measured_beside_modeled(bench, _modeled(out)))
    print("measured beside modeled:", out / "kernel-report.md")
    return 0


def step_calibration(p: Plan, out: Path, cap_s: float) -> int:
    """The static model's calibration points timed on this GPU (:mod:`benchmarks.static.device_points`:
    the attention tutorial's configs, siglip-kernel and its GEMMs) into ``device-points.json``; compared
    with the model afterwards, on any machine (``python -m benchmarks.static.device_points compare``)."""
    from benchmarks.static import device_points

    result = device_points.measure(out, time_limit_s=max(5.0, cap_s - 15.0), tiny=p.tiny)
    for row in result["points"]:
        what = f"{row['point']} {row.get('launch', '')}{row.get('head_dim', '')} {row.get('config', '')}".strip()
        shown = f"{row['tflops']:.1f} TFLOP/s" if "tflops" in row else f"{row['ms']:.2f} ms" if "ms" in row else ""
        print(f"calibration {what}: {row['status']} {shown}")
    print("calibration points:", out / device_points.RESULTS_FILE)
    return 0


def measured_beside_modeled(bench: list[dict], modeled: dict) -> str:
    lines = ["# The triton backend: measured beside modeled", "",
             ("Modeled: the static kernel report (`python -m benchmarks.static`) with its H200 constants "
             f"and the default tile configs, computed on a CPU{' with Triton ' + modeled['triton'] if modeled else ''}"
             " before the run. Measured: this run (median forward+backward ms)."), "",
             "| loss | N × M | D | dtype | measured ms | modeled ms | measured / modeled | share of measured matmul |",
             "|---|---|---|---|---|---|---|---|"]
    for r in bench:
        if r["backend"] != "triton" or r["status"] != "ok":
            continue
        model = modeled.get("points", {}).get(_point_key(r["loss"], r["n"], r["m"], r["d"], r["dtype"]))
        ratio = f"{r['ms'] / model:.2f}" if model else "—"
        lines.append(f"| {r['loss']} | {r['n']} × {r['m']} | {r['d']} | {r['dtype']} | {r['ms']:.2f} | "
                     f"{f'{model:.2f}' if model else '— (no model for this point)'} | {ratio} | "
                     f"{r['share_of_matmul']:.1%} |")
    if any(r.get("triton_interpreter") for r in bench):
        lines += ["", ("These triton times were taken in Triton's interpreter on a CPU: they check the tools, they are "
                      "no GPU figure.")]
    if any(r["status"] == "ok" and r["backend"] == "cuda" for r in bench):
        lines += ["", "The cuda backend's rows are in results.md (its model is the CUDA backend issue's)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# the run: every step in its own capped process
# ---------------------------------------------------------------------------------------------


def _append(out: Path, row: dict) -> None:
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=max(0.1, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return 124


def _capped(cmd, cap_s: float, env=None) -> int:
    return _wait(subprocess.Popen(cmd, start_new_session=True, env=env, cwd=REPO), cap_s)


def run(p: Plan, out: Path, limit_s: float = LIMIT_S) -> int:
    """Every step in order, each in a child process within its cap and before ``limit_s``."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    status = 0
    for name in STEPS:
        left = limit_s - (time.monotonic() - start)
        cap = left if name == "gpu tests" else min(p.caps[name], left)
        if name == "calibration":  # only in time the GPU tests can spare
            cap = min(cap, left - GPU_TESTS_MIN_S)
        if cap < 5 or (name == "calibration" and cap < CALIBRATION_MIN_S):
            print(f"=== {name}: not run ({left:.0f} s left of {limit_s:.0f})", flush=True)
            status = status or 124
            continue
        print(f"=== {name} (cap {cap:.0f} s, at {time.monotonic() - start:.0f} s)", flush=True)
        t0 = time.monotonic()
        env = dict(os.environ)
        env.setdefault("CONTRASTIVE_OPS_TRITON_CANDIDATES", "1")  # one compile per kernel, no tuning runs
        if name == "gpu tests":
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests"]
        else:
            cmd = [sys.executable, "-m", "tools.gpu_run.first_run", "step", name, "--out", str(out), "--cap-s",
                   str(int(cap))] + (["--tiny"] if p.tiny else [])
        rc = _capped(cmd, cap, env)
        print(f"=== {name}: exit {rc} in {time.monotonic() - t0:.0f} s", flush=True)
        if name == "build" and rc != 0:
            print("build failed: the cuda backend is unavailable for the rest of the run", flush=True)
        status = status or (rc if name in ("smoke", "headline", "gpu tests") and rc not in (0, 5) else 0)
    print(f"first run: {time.monotonic() - start:.0f} s of {limit_s:.0f}; files: "
          + ", ".join(sorted(f.name for f in out.iterdir())), flush=True)
    return status


def step(name: str, p: Plan, out: Path, cap_s: float) -> int:
    os.environ.setdefault("CONTRASTIVE_OPS_TRITON_CANDIDATES", "1")
    if name == "environment":
        step_environment(p, out)
        return 0
    if name == "build":
        return step_build(p, out, cap_s)
    if name == "smoke":
        return step_smoke(p, out)
    if name == "headline":
        return step_headline(p, out, cap_s)
    if name == "report":
        return step_report(p, out)
    if name == "calibration":
        return step_calibration(p, out, cap_s)
    raise ValueError(f"step must be one of {STEPS[:-1]}, got {name!r}")


# ---------------------------------------------------------------------------------------------
# the dry run: the plan, with predicted times, compile counts and the travel size
# ---------------------------------------------------------------------------------------------

ASSUMED = {
    "environment_s": 20.0,  # info, nvidia-smi, three matmul rates and a copy
    "smoke_call_s": 0.15,  # one forward+backward at the smoke's size, compiled kernels (GPU)
    "smoke_call_tiny_s": 1.5,  # the same in Triton's interpreter (CPU, tiny)
    "point_overhead_s": 0.5,  # inputs, the fit check, the peak-memory call's setup
    "cuda_tflops": 100.0,  # the cuda backend where its static model (benchmarks.static.cuda_report) is not at hand
    "peer_share": 0.5,  # inf-cl, memeff, siglip-kernel: this share of the matmul rate
    "naive_passes": 6,  # fp32 N × M passes of the naive loss (forward+backward), at the copy bandwidth
    "report_s": 10.0,
    "calibration_s": 60.0,  # the attention tutorial's 12 configs × 2 head dims compiled (not in the cache) and timed
    "suite_start_s": 3.0,  # each sweep measures the matmul rates and the copy bandwidth first
    "torch_compile_s": 40.0,  # compiled_naive: torch.compile of the loss, once per size
    "peer_jit_s": 10.0,  # inf-cl, memeff, siglip-kernel: their own Triton kernels, compiled at first use
}
# the kernel report's H200 constants (benchmarks.static.model.H200), not imported: that module sets
# Triton's compile environment, which is part of every kernel's cache key
H200_BF16_FLOPS, H200_BYTES_S = 790e12, 4.3e12


def predicted_call_ms(impl: str, loss: str, rows: int, cols: int, d: int, modeled: dict) -> float:
    """One forward+backward call's predicted milliseconds on an H200 (see :data:`ASSUMED`)."""
    floor_ms = 8.0 * rows * cols * d / H200_BF16_FLOPS * 1e3
    if impl == "triton":
        return modeled.get("points", {}).get(_point_key(loss, rows, cols, d, "bfloat16")) or 1.5 * floor_ms
    if impl == "cuda":
        return (modeled.get("cuda_points", {}).get(_point_key(loss, rows, cols, d, "bfloat16"))
                or 8.0 * rows * cols * d / (ASSUMED["cuda_tflops"] * 1e12) * 1e3)
    if impl in ("naive", "compiled_naive", "open_clip"):
        return max(floor_ms, ASSUMED["naive_passes"] * 4.0 * rows * cols / H200_BYTES_S * 1e3)
    return floor_ms / ASSUMED["peer_share"]


def predicted_point_s(call_ms: float) -> float:
    """A suite point: an untimed first call, ``do_bench`` (~8 calls and 125 ms) or, for calls over
    ``measure.SLOW_CALL_MS``, three timed calls, and one peak-memory call."""
    from benchmarks import measure

    calls = 10 if call_ms < measure.SLOW_CALL_MS else measure.SLOW_CALL_REPS + 2
    return ASSUMED["point_overhead_s"] + 0.125 * (call_ms < measure.SLOW_CALL_MS) + calls * call_ms / 1e3


def predicted_group_s(p: Plan, g: Group, modeled: dict) -> float:
    from benchmarks.workloads import WORKLOADS

    if p.tiny:
        return sum(len(g.impls) * 3.0 for _ in g.ns)  # assumed: CPU points, interpreter included
    total = ASSUMED["suite_start_s"] + ASSUMED["peer_jit_s"] * len(set(g.impls) & {"inf_cl", "memeff", "siglip_kernel"})
    for n in g.ns:
        rows, cols = WORKLOADS[g.loss].logits_shape(n)
        total += sum(predicted_point_s(predicted_call_ms(i, g.loss, rows, cols, g.d, modeled)) for i in g.impls)
        total += ASSUMED["torch_compile_s"] * ("compiled_naive" in g.impls)
    return total


def census_points(p: Plan):
    """``(step, call)`` pairs that make the triton calls of the run (smoke and headline) on CPU tensors
    for :class:`tools.gpu_run.triton_cache.Census`: headline sizes as stand-ins of the same divisibility."""
    import torch

    from benchmarks.workloads import WORKLOADS, make_inputs

    def call(name, n, d, dtype_name):
        def go():
            x = _cast(make_inputs(n, d, torch.float32, torch.device("cpu"), 0), getattr(torch, dtype_name))
            _evaluate(WORKLOADS[name].call, x, "triton")
        return go

    def check_call(shapes):
        def go():
            from contrastive_ops import check

            check.run_checks(torch.device("cpu"), ["triton"], list(p.smoke_dtypes), list(check.CASES), shapes=shapes)
        return go

    points = [("smoke", check_call(shapes)) for shapes in _smoke_shapes(p)]
    for g in p.groups:
        if "triton" in g.impls:
            for n in g.ns:
                standin = min(n, 1024) if n % 16 == 0 else 1024 + n % 16
                points.append((f"headline {g.loss}", call(g.loss, standin, g.d, p.headline_dtype)))
    return points


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _travel_mib(extra: list[Path]) -> float:
    """What is copied to the GPU machine: tracked and untracked-not-ignored files, plus the given paths."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=False).stdout.decode().split("\0")
    total = sum((REPO / f).stat().st_size for f in listed if f and (REPO / f).is_file())
    for path in extra:
        if path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        elif path.is_file():
            total += path.stat().st_size
    return total / 2**20


def _measure_build_s() -> float | None:
    """Seconds to build the extension for sm_90a on this machine (nvcc and the torch glue), or None without nvcc."""
    from contrastive_ops import _build

    if _build.find_nvcc() is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        rc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-temp", f"{tmp}/t", "--build-lib",
                             f"{tmp}/l"], cwd=REPO, capture_output=True, check=False,
                            env=dict(os.environ, CONTRASTIVE_OPS_BUILD_CUDA="1", CONTRASTIVE_OPS_CUDA_ARCHS="90a"))
        return time.monotonic() - start if rc.returncode == 0 else None


def write_model(p: Plan, path: Path) -> dict:
    """The kernel report's modeled ms of every triton headline point (default configs, H200
    constants), into ``path``. Run in a process of its own: the report sets Triton's compile
    environment, which would change the census's cache keys."""
    import triton

    from benchmarks.static import model, triton_report
    from benchmarks.workloads import WORKLOADS
    from contrastive_ops import _build

    points, cuda_points = {}, {}
    for g in p.groups:
        if g.loss not in model.MODELED_LOSSES:
            continue
        for n in g.ns:
            rows, cols = WORKLOADS[g.loss].logits_shape(n)
            key = _point_key(g.loss, rows, cols, g.d, p.headline_dtype)
            if "triton" in g.impls:
                points[key] = triton_report.modeled_ms(g.loss, rows, cols, g.d, p.headline_dtype)
            if "cuda" in g.impls and _build.find_nvcc() is not None:
                from benchmarks.static import cuda_report

                w = model.workload(g.loss, rows, cols, g.d, p.headline_dtype)
                cuda_points[key] = cuda_report.model_workload(w)[1]["modeled_ms"]
    from tools.gpu_run.triton_cache import kernel_source_hash

    model = {"triton": triton.__version__, "sources": kernel_source_hash(), "device": model.H200.name,
             "points": points, "cuda_points": cuda_points}
    path.write_text(json.dumps(model, indent=1))
    return model


def dry_run(p: Plan, rebuild: bool = False, measure_build: bool = True, check_keys: bool = True) -> int:
    """Print the plan (each step's predicted seconds and what they assume), the Triton compiles it
    triggers (census and ahead-of-time compile when the cache is missing or stale), the travel size;
    the last line ``predicted total: <seconds> s``. 0 if it fits :data:`LIMIT_S` and the travel limit."""
    import triton

    from benchmarks._env import commit
    from tools.gpu_run import triton_cache

    print(f"# first GPU run: the plan{' (tiny)' if p.tiny else ''} at commit {commit()}; every time below is PREDICTED")
    print(f"Triton {triton.__version__} on this machine (the GPU machines run 3.6.0); kernels compiled ahead of time for "
          f"sm_{triton_cache.TARGET_ARCH}a into {_shown(triton_cache.CACHE_DIR)}/")
    cache = triton_cache.load_plan()
    fresh = (cache is not None and cache["sources"] == triton_cache.kernel_source_hash()
             and cache["triton"] == triton.__version__ and cache.get("tiny") == p.tiny)
    if rebuild or not fresh:
        print("census and compile of the plan's Triton kernels (a few minutes on 2 cores) ...", flush=True)
        cache = triton_cache.build(census_points(p), tag={"tiny": p.tiny})
    print(triton_cache.summary(cache))
    if check_keys:
        found, compiled = triton_cache.verify(census_points(p))
        print(f"key check: Triton's own JIT path (a stand-in driver that launches nothing) over the same calls found "
              f"{found} kernels in the cache and compiled {compiled}")
    modeled = {}
    model_path = triton_cache.CACHE_DIR / MODELED_FILE
    if not p.tiny:  # always made anew: it depends on the CUDA sources too, and costs a minute
        subprocess.run([sys.executable, "-m", "tools.gpu_run.first_run", "model", "--out", str(model_path)], cwd=REPO,
                       check=True, env={k: v for k, v in os.environ.items() if k != "TRITON_CACHE_DIR"})
        modeled = json.loads(model_path.read_text())
    build_s = _measure_build_s() if measure_build else None
    gpu_workers = 12  # the GPU machine's 16 cores, less 4 kept by nvcc
    by_step: dict = {}
    for r in cache["records"]:
        for s in r["steps"]:
            by_step.setdefault(s.split()[0], []).append(r)
    compile_s = sum(r["compile_s"] for r in cache["records"])
    total = 0.0

    def line(step_name, seconds, what):
        nonlocal total
        total += seconds
        print(f"{step_name:12s} {seconds:6.0f} s  {what}")

    print()
    line("environment", ASSUMED["environment_s"], "assumed: info, nvidia-smi, matmul rates, copy bandwidth")
    miss_s = compile_s / gpu_workers
    build_what = (f"extension for sm_90a: {build_s:.0f} s measured on {os.cpu_count()} cores of this machine (the GPU machine: 16 "
                  f"cores)" if build_s is not None else "extension: not measured (no nvcc on this machine); cap")
    build_pred = build_s if build_s is not None else p.caps["build"]
    line("build", min(p.caps["build"], build_pred),
         f"{build_what}; beside it the Triton precompile of {len(cache['records'])} kernels: ~0 s from the cache, "
         f"{miss_s:.0f} s on {gpu_workers} processes if every key missed")
    from contrastive_ops.check import CASES

    # per case, dtype and D: the float64 reference, naive, and each backend twice (the bitwise repeat)
    smoke_calls = len(CASES) * len(p.smoke_d) * len(p.smoke_dtypes) * (2 + 2 * len(p.smoke_backends))
    per_call = ASSUMED["smoke_call_tiny_s" if p.tiny else "smoke_call_s"]
    line("smoke", min(p.caps["smoke"], smoke_calls * per_call),
         f"{smoke_calls} forward+backward calls (reference, naive, backends) at {per_call} s each (assumed); "
         f"{len(by_step.get('smoke', []))} Triton kernels, from the cache")
    headline_s = 0.0
    for g in p.groups:
        s = predicted_group_s(p, g, modeled)
        kernels = len([r for r in cache["records"] if f"headline {g.loss}" in r["steps"]]) if "triton" in g.impls else 0
        flag = " (if time remains)" if g.if_time_remains else ""
        print(f"{'':12s} {s:6.0f} s    {g.loss} D={g.d} N={list(g.ns)} {', '.join(g.impls)}{flag}; "
              f"{kernels} Triton kernels")
        if not g.if_time_remains or headline_s + s <= p.caps["headline"]:
            headline_s += s
    line("headline", min(p.caps["headline"], headline_s),
         "the sum above (triton and cuda: the static models; peers and naive: ASSUMED rates)")
    line("report", ASSUMED["report_s"], "tables, plots, measured beside modeled")
    line("calibration", min(p.caps["calibration"], ASSUMED["calibration_s"]),
         "assumed: the static model's calibration points timed (only in time the GPU tests can spare)")
    line("gpu tests", GPU_TESTS_MIN_S, f"at least this; they get whatever is left of the {LIMIT_S} s "
                                       f"({max(0.0, LIMIT_S - total - GPU_TESTS_MIN_S):.0f} s more predicted)")
    print(f"\nTriton compiles: {len(cache['records'])} distinct kernels, {compile_s:.0f} s measured on this machine "
          f"(per kernel: min {min((r['compile_s'] for r in cache['records']), default=0):.1f} s, max "
          f"{max((r['compile_s'] for r in cache['records']), default=0):.1f} s); without the cache the first "
          f"launches would compile them serially: +{compile_s:.0f} s inside the smoke and headline caps")
    copied = [REPO / ".whl", triton_cache.pack()]
    travel = _travel_mib(copied)
    print(f"travel: {travel:.1f} MiB with {', '.join(_shown(c) for c in copied)} (limit "
          f"{TRAVEL_LIMIT_MIB} MiB): {'ok' if travel < TRAVEL_LIMIT_MIB else 'OVER'}")
    fits = total <= LIMIT_S and travel < TRAVEL_LIMIT_MIB
    print(f"limit {LIMIT_S} s: {'fits' if fits else 'DOES NOT FIT'}")
    print(f"predicted total: {total:.0f} s")
    return 0 if fits else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="every step, each capped (on the GPU machine; --tiny on a CPU)")
    r.add_argument("--out", default="gpu-out")
    r.add_argument("--limit-s", type=float, default=LIMIT_S)
    d = sub.add_parser("dry-run", help="the plan with predicted times, compile counts and the travel size")
    d.add_argument("--rebuild", action="store_true", help="redo the census and compile even if the cache is fresh")
    s = sub.add_parser("step", help="one step (what run calls)")
    s.add_argument("name", choices=STEPS[:-1])
    s.add_argument("--out", required=True)
    s.add_argument("--cap-s", type=float, default=600)
    m = sub.add_parser("model", help="the model's figures of the triton headline points (what dry-run calls)")
    m.add_argument("--out", required=True)
    for sp in (r, d, s, m):
        sp.add_argument("--tiny", action="store_true", help="tiny sizes on a CPU")
    args = parser.parse_args(argv)
    p = plan(args.tiny)
    if args.command == "run":
        return run(p, Path(args.out), args.limit_s)
    if args.command == "dry-run":
        return dry_run(p, args.rebuild)
    if args.command == "model":
        write_model(p, Path(args.out))
        return 0
    return step(args.name, p, Path(args.out), args.cap_s)


if __name__ == "__main__":
    sys.exit(main())
