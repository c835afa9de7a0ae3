"""The benchmark suite: every loss × implementation × size × mode, time and peak memory, with the
device's matmul rate beside every row, then plots and a markdown table.

    python -m benchmarks.suite                 # this device; small sizes on a CPU, the full grid on a GPU
    python -m benchmarks.suite --sizes small   # a quick run anywhere
    python -m benchmarks.report FILE.jsonl     # plots and table again from a results file

In one process it prints the environment, measures this device's bf16 and fp32 (tf32 if enabled)
``torch.matmul`` rates and copy bandwidth, runs the GPU tests (``pytest -m gpu``) when there is a
GPU, then measures each point. Rows go to ``benchmarks/results/<date>-<device>-<commit>.jsonl``,
one JSON object per line; a point that fails or runs out of memory is a row with its ``status``;
one that would not fit or take too long is a ``skipped`` row with the reason. ``n`` and ``m`` are
the logit matrix's rows and columns (2 × the batch for the two-view losses nt_xent, dcl,
hard_negative and debiased).

On a GPU, fp32 runs with tf32 dot products unless ``--fp32-precision highest`` (the peers' Triton
kernels use tf32 by default; every row records the setting). ``--budget-s`` stops starting new
points when the time is spent and still writes the table and plots (the remaining points become
``skipped`` rows).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time

import torch

from benchmarks import measure
from benchmarks._env import environment
from benchmarks.workloads import (
    GRADIENTS_IN_FORWARD,
    MODES,
    OUR_BACKENDS,
    TIME_INTERPRETER,
    WORKLOADS,
    implementations,
    make_inputs,
)

GRIDS = {
    "small": {"n": [256, 512, 1024], "d": [64], "dtypes": ["float32"]},
    "cpu": {"n": [1024, 2048, 4096, 8192], "d": [128], "dtypes": ["float32"]},
    # what a run of a few minutes on a GPU can hold: the headline shape (65536² × 768, bf16) and below
    "timeboxed": {"n": [4096, 16384, 65536], "d": [768], "dtypes": ["bfloat16"]},
    "full": {"n": [4096, 16384, 65536, 262144, 1048576], "d": [128, 512, 768, 1024], "dtypes": ["bfloat16", "float32"]},
}
# calls one slow measured point costs: its warm-up, measure.SLOW_CALL_REPS timed calls, one for peak memory
CALLS_PER_POINT = measure.SLOW_CALL_REPS + 2
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def fits(name: str, rows: int, cols: int, d: int, itemsize: int, device: torch.device) -> tuple[bool, str]:
    """Skip what would not fit: the naive matrix (about 6 fp32 copies of it for forward+backward)
    and the inputs with their gradients, against this device's free memory."""
    if device.type == "cuda":
        release_memory(device)
        free = torch.cuda.mem_get_info(device)[0]
    else:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    need = 4 * (rows + cols) * d * itemsize
    if name in ("naive", "compiled_naive", "open_clip"):
        need += 6 * 4 * rows * cols
    if need > 0.8 * free:
        return False, f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    return True, "ok"


def release_memory(device: torch.device) -> None:
    """Hand what the last point left (its graph, a failed call's buffers) back to the device, so
    that the next fit check and peak measurement start from the inputs alone."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _cpu_memory_child(loss: str, impl: str, n: int, d: int, dtype: str, mode: str) -> float:
    """Peak memory of one CPU point in a fresh process (a reused process's resident size hides peaks)."""
    code = (
        "import sys, torch; from benchmarks import measure, workloads as w;"
        f"wl = w.WORKLOADS[{loss!r}]; dev = torch.device('cpu');"
        f"fn = dict((name, f) for name, f, _ in w.implementations(wl, dev, only={impl!r}))[{impl!r}];"
        f"x = w.make_inputs({n}, {d}, getattr(torch, {dtype!r}), dev, 0);"
        "small = w.make_inputs(8, 4, torch.float32, dev, 1); fn(small);"
        f"print(measure.peak_memory_mib(fn, x, {mode!r}, dev))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    return float(proc.stdout.strip().splitlines()[-1])


def run_gpu_tests() -> str:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], capture_output=True, text=True,
                          check=False)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return f"exit {proc.returncode}: {tail}"


class Schedule:
    """Which points of one (loss, dtype, D) sweep to measure, going up in N: an implementation and
    mode is not tried past a failure, nor where its last time predicts (time ∝ N²) one call over
    ``max_seconds`` or a point outlasting the time budget."""

    def __init__(self, max_seconds: float, deadline: float | None = None, budget_s: float | None = None):
        self.max_seconds, self.deadline, self.budget_s = max_seconds, deadline, budget_s
        self.last_ms = {}  # (implementation, mode) -> (n, ms) of its last measured point
        self.failed = {}  # (implementation, mode) -> (n, status) of its failure

    def skip_reason(self, name: str, mode: str, n: int) -> str | None:
        """Why the point is not measured, or None to measure it."""
        if name in GRADIENTS_IN_FORWARD and mode != "fwd_bwd":
            return GRADIENTS_IN_FORWARD[name]
        if (name, mode) in self.failed:
            failed_n, status = self.failed[(name, mode)]
            return f"{status} at N={failed_n}: larger N not tried"
        left = None if self.deadline is None else self.deadline - time.monotonic()
        if left is not None and left <= 0:
            return f"time budget of {self.budget_s:.0f} s (--budget-s) spent"
        previous = self.last_ms.get((name, mode))
        if previous is not None:
            predicted_ms = previous[1] * (n / previous[0]) ** 2
            if predicted_ms > self.max_seconds * 1e3:
                return f"one call predicted over {self.max_seconds:g} s (--max-seconds) from N={previous[0]}"
            if left is not None and CALLS_PER_POINT * predicted_ms > left * 1e3:
                return f"predicted to outlast the time budget (--budget-s) from N={previous[0]}"
        return None

    def record(self, name: str, mode: str, n: int, row: dict) -> None:
        if row["status"] == "ok":
            self.last_ms[(name, mode)] = (n, row["ms"])
        else:
            self.failed[(name, mode)] = (n, row["status"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", choices=sorted(GRIDS), default=None, help="grid (default: full on a GPU, cpu on a CPU)")
    p.add_argument("--n", type=int, nargs="*", help="override the grid's N values")
    p.add_argument("--d", type=int, nargs="*", help="override the grid's D values")
    p.add_argument("--dtypes", nargs="*", choices=sorted(DTYPES), help="override the grid's dtypes")
    p.add_argument("--losses", nargs="*", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--impls", nargs="*", default=None,
                   help="backends and peers to run (default: all that run on the device)")
    p.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per point on the CPU")
    p.add_argument("--logit-rows", action="store_true",
                   help="--n counts rows of the logit matrix: the two-view losses (nt_xent, dcl, hard_negative, "
                        "debiased) get batches of N/2, so every loss is measured at the same N × M")
    p.add_argument("--max-seconds", type=float, default=10.0,
                   help="skip a point whose one call the smaller-N time predicts to take longer")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting points after this many seconds; the table and plots are still written")
    p.add_argument("--fp32-precision", choices=("highest", "high"), default=None,
                   help="torch.set_float32_matmul_precision for the run (default: high on a GPU; on a CPU, unchanged)")
    p.add_argument("--out", default=None, help="results file (default: benchmarks/results/<date>-<device>-<commit>.jsonl)")
    p.add_argument("--no-gpu-tests", action="store_true")
    p.add_argument("--no-report", action="store_true", help="write the rows only (no table, no plots)")
    p.add_argument("--time-interpreter", action="store_true",
                   help="on a CPU, time the triton backend in Triton's interpreter (TRITON_INTERPRET=1) too: checks "
                        "the tooling end to end; the times say nothing of a GPU")
    p.add_argument("--modeled", action="store_true",
                   help="add the kernel report's modeled_ms (default tile configs, this device's measured rates) to "
                        "each triton fwd_bwd row, beside the measured ms (compiles the modeled variants: ~1 min)")
    args = p.parse_args(argv)

    started = time.monotonic()
    device = torch.device(args.device)
    if args.time_interpreter:
        os.environ[TIME_INTERPRETER] = "1"  # the CPU memory children read it too
    if args.fp32_precision or device.type == "cuda":
        torch.set_float32_matmul_precision(args.fp32_precision or "high")
    grid = dict(GRIDS[args.sizes or ("full" if device.type == "cuda" else "cpu")])
    grid.update({k: v for k, v in (("n", args.n), ("d", args.d), ("dtypes", args.dtypes)) if v})
    impls = args.impls or (list(OUR_BACKENDS) + ["compiled_naive", "open_clip", "sentence_transformers",
                                                 "sentence_transformers_cached"]
                           + (["inf_cl", "memeff", "siglip_kernel"] if device.type == "cuda" else []))
    env = environment(device)
    out = args.out or os.path.join("benchmarks", "results",
                                   f"{env['timestamp'][:10]}-{_slug(env['device'])}-{env['commit']}.jsonl")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)

    print(f"device {env['device']} | torch {env['torch']} | triton {env['triton']} | commit {env['commit']}")
    size = 8192 if device.type == "cuda" else 1024
    rates = {"bfloat16": measure.matmul_tflops(torch.bfloat16, device, size),
             "float32": measure.matmul_tflops(torch.float32, device, size)}
    rates["float16"] = measure.matmul_tflops(torch.float16, device, size) if device.type == "cuda" else rates["bfloat16"]
    bandwidth = measure.copy_gib_per_s(device)
    print(f"matmul {size}^3: bf16 {rates['bfloat16']:.2f} TFLOP/s, fp16 {rates['float16']:.2f} TFLOP/s, "
          f"fp32 ({torch.get_float32_matmul_precision()}) {rates['float32']:.2f} TFLOP/s; copy {bandwidth:.1f} GiB/s")
    if device.type == "cuda" and not args.no_gpu_tests:
        print("GPU tests:", run_gpu_tests())
    else:
        print("GPU tests: not run (no GPU)" if device.type != "cuda" else "GPU tests: not run (--no-gpu-tests)")

    header = {**env, "fp32_precision": torch.get_float32_matmul_precision(), "matmul_tflops_bf16": rates["bfloat16"],
              "matmul_tflops_fp16": rates["float16"], "matmul_tflops_fp32": rates["float32"],
              "copy_gib_per_s": bandwidth,
              "triton_interpreter": bool(args.time_interpreter and device.type == "cpu")}
    deadline = None if args.budget_s is None else started + args.budget_s
    with open(out, "a") as f:
        for loss in args.losses:
            workload = WORKLOADS[loss]
            candidates = [(name, fn, why) for name, fn, why in implementations(workload, device) if name in impls]
            for dtype_name in grid["dtypes"]:
                dtype = DTYPES[dtype_name]
                for d in grid["d"]:
                    schedule = Schedule(args.max_seconds, deadline, args.budget_s)
                    for n in sorted(grid["n"]):
                        if args.logit_rows:  # N counts logit rows: a two-view loss gets a batch of N/2
                            n = max(n // workload.logits_shape(1)[0], 1)
                        rows, cols = workload.logits_shape(n)
                        input_sets = None  # made once per size, shared by every implementation and mode
                        for name, fn, why in candidates:
                            for mode in args.modes:
                                row = {"loss": loss, "backend": name, "dtype": dtype_name, "n": rows, "m": cols, "d": d,
                                       "mode": mode, "matmul_tflops": rates[dtype_name], **header}
                                reason = why if fn is None else schedule.skip_reason(name, mode, n)
                                ok = reason is None
                                if ok:
                                    ok, reason = fits(name, rows, cols, d, dtype.itemsize, device)
                                if ok and input_sets is None:
                                    try:
                                        input_sets = [make_inputs(n, d, dtype, device, seed)
                                                      for seed in range(2 if device.type == "cpu" else 3)]
                                    except Exception as exc:  # noqa: BLE001  (e.g. out of memory for the inputs)
                                        ok, reason = False, f"inputs could not be made: {type(exc).__name__}: {exc}"[:300]
                                        release_memory(device)
                                if not ok:
                                    row.update(status="skipped", reason=reason)
                                else:
                                    row.update(_measure(workload, name, fn, input_sets, n, d, dtype, mode, device,
                                                        args.reps))
                                    release_memory(device)
                                    schedule.record(name, mode, n, row)
                                    if row["status"] == "ok":
                                        row["tflops"] = workload.flops(n, d, mode) / (row["ms"] * 1e-3) / 1e12
                                        row["share_of_matmul"] = row["tflops"] / rates[dtype_name]
                                        if args.modeled and name == "triton" and mode == "fwd_bwd":
                                            row["modeled_ms"] = _modeled(loss, rows, cols, d, dtype_name,
                                                                         rates[dtype_name], bandwidth)
                                f.write(json.dumps(row) + "\n")
                                f.flush()
                                _print_row(row)
                        del input_sets
                        release_memory(device)
    print(f"results: {out} ({time.monotonic() - started:.0f} s)")
    if args.no_report:
        return
    from benchmarks import report

    report.main([out])


def _modeled(loss, rows, cols, d, dtype_name, tflops, gib_per_s):
    """The static kernel report's modeled ms for this point (None where the model has no such loss or
    the compile fails: a model never stops a measurement)."""
    try:
        from benchmarks.static import triton_report

        return triton_report.modeled_ms(loss, rows, cols, d, dtype_name, tflops, gib_per_s * 2**30)
    except Exception as exc:  # noqa: BLE001
        print(f"modeled_ms for {loss} n={rows} d={d}: {type(exc).__name__}: {exc}")
        return None


_PEAK_MEMORY = {}


def _measure(workload, name, fn, input_sets, n, d, dtype, mode, device, reps) -> dict:
    try:
        result = {"status": "ok", **measure.timing(fn, input_sets, mode, device, reps)}
        # backward-only memory is that of forward+backward (the forward's graph is alive for it): one
        # measurement per (point, fwd | fwd_bwd), on the CPU in a fresh process
        key = (device.type, workload.loss, name, n, d, dtype, "fwd" if mode == "fwd" else "fwd_bwd")
        if key not in _PEAK_MEMORY:
            if device.type == "cuda":
                _PEAK_MEMORY[key] = measure.peak_memory_mib(fn, input_sets[0], key[-1], device)
            else:
                _PEAK_MEMORY[key] = _cpu_memory_child(workload.loss, name, n, d, str(dtype).split(".")[-1], key[-1])
        result["peak_mem_mib"] = _PEAK_MEMORY[key]
        return result
    except torch.cuda.OutOfMemoryError as exc:
        return {"status": "oom", "error": (str(exc).strip().splitlines() or [""])[0][:300]}
    except Exception as exc:  # noqa: BLE001  (a peer's assert or ValueError is a failed row, not a failed run)
        status = "oom" if "out of memory" in str(exc).lower() else "error"
        message = (str(exc).strip().splitlines() or [""])[0]
        return {"status": status, "error": f"{type(exc).__name__}: {message}"[:300]}


def _print_row(row: dict) -> None:
    key = f"{row['loss']:18s} {row['backend']:14s} {row['dtype']:8s} {row['n']:>8d}x{row['m']:<8d} d={row['d']:<5d} {row['mode']:8s}"
    if row["status"] == "ok":
        print(f"{key} {row['ms']:10.2f} ms {row['peak_mem_mib']:9.1f} MiB {row['share_of_matmul']:6.1%} of matmul")
    else:
        print(f"{key} {row['status']}: {row.get('reason') or row.get('error', '')}")


if __name__ == "__main__":
    main()
