"""Timing and peak-memory measurement of one (workload, implementation, size, mode) point.

Timing: ``triton.testing.do_bench`` on CUDA when Triton is installed, CUDA events otherwise, and
``time.perf_counter`` on the CPU; medians with the 20th/80th percentiles, warm-up excluded, the
input sets rotated so that no single set stays in cache. On CUDA an untimed call first compiles
and tunes; a point whose next call takes longer than ``SLOW_CALL_MS`` is timed over
``SLOW_CALL_REPS`` event-timed calls (that one included) instead, since ``do_bench`` makes at least
seven more (five to estimate, a warm-up and a timed one). Memory: on CUDA the peak of
``torch.cuda.max_memory_allocated`` above what was allocated before the call (the inputs);
on the CPU the kernel's resident high-water mark (``VmHWM``) above the resident size before the
call, which is only clean in a fresh process (the suite runs CPU memory points in a child).
"""
from __future__ import annotations

import gc
import importlib.util
import statistics
import time
from typing import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _leaves(x: dict) -> list:
    return [t for t in x.values() if t.requires_grad]


def _prepare(fn: Callable[[dict], torch.Tensor], x: dict, mode: str) -> Callable[[], object]:
    """The work one timed repetition does; for ``bwd`` the forward runs here, untimed."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(x)
        return run
    if mode == "bwd":
        loss = fn(x)
        return lambda: torch.autograd.grad(loss, _leaves(x), allow_unused=True)
    return lambda: torch.autograd.grad(fn(x), _leaves(x), allow_unused=True)


def time_point(fn: Callable[[dict], torch.Tensor], input_sets: list, mode: str, device: torch.device,
               reps: int, warmup: int = 2, samples: list | None = None) -> dict:
    """Median, p20 and p80 milliseconds of ``mode`` over ``reps`` runs (and ``samples`` already
    taken), rotating ``input_sets``."""
    samples = list(samples or [])
    for i in range(warmup + reps):
        run = _prepare(fn, input_sets[i % len(input_sets)], mode)
        _sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize(device)
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            run()
            ms = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            samples.append(ms)
    q = statistics.quantiles(samples, n=5, method="inclusive") if len(samples) >= 2 else samples * 4
    return {"ms": statistics.median(samples), "ms_p20": q[0], "ms_p80": q[3]}


def time_point_cuda_do_bench(fn, input_sets: list, mode: str, device: torch.device) -> dict:
    """``triton.testing.do_bench`` (median and quantiles), rotating the input sets between calls."""
    import triton.testing

    counter = {"i": 0}

    def next_inputs():
        counter["i"] += 1
        return input_sets[counter["i"] % len(input_sets)]

    if mode == "fwd":
        def bench():
            with torch.no_grad():
                return fn(next_inputs())
    elif mode == "fwd_bwd":
        def bench():
            x = next_inputs()
            return torch.autograd.grad(fn(x), _leaves(x), allow_unused=True)
    else:  # backward only: one forward, the backward replayed with retain_graph
        x = input_sets[0]
        loss = fn(x)

        def bench():
            return torch.autograd.grad(loss, _leaves(x), allow_unused=True, retain_graph=True)
    ms, p20, p80 = triton.testing.do_bench(bench, quantiles=[0.5, 0.2, 0.8])
    return {"ms": ms, "ms_p20": p20, "ms_p80": p80}


SLOW_CALL_MS = 250.0
SLOW_CALL_REPS = 3


def timing(fn, input_sets, mode, device, reps) -> dict:
    if device.type != "cuda":
        return time_point(fn, input_sets, mode, device, reps)
    # an untimed call compiles kernels and tunes tile configs; a second, timed one chooses the method
    time_point(fn, input_sets[:1], mode, device, reps=1, warmup=0)
    first = time_point(fn, input_sets[1:2] or input_sets, mode, device, reps=1, warmup=0)["ms"]
    if first > SLOW_CALL_MS or importlib.util.find_spec("triton") is None:
        return time_point(fn, input_sets, mode, device, reps=SLOW_CALL_REPS - 1 if first > SLOW_CALL_MS else reps,
                          warmup=0, samples=[first])
    return time_point_cuda_do_bench(fn, input_sets, mode, device)


def _kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mib(fn: Callable[[dict], torch.Tensor], inputs: dict, mode: str, device: torch.device) -> float:
    """Peak memory of one run of ``mode`` above what existed before it (the inputs), in MiB."""
    leaves = _leaves(inputs)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        before = _kib("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current resident size
    if mode == "fwd":
        with torch.no_grad():
            fn(inputs)
    else:
        torch.autograd.grad(fn(inputs), leaves, allow_unused=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _kib("VmHWM") * 1024
    return (peak - before) / 2**20


def matmul_tflops(dtype: torch.dtype, device: torch.device, size: int, reps: int = 10) -> float:
    """This device's ``torch.matmul`` rate (TFLOP/s) on ``size × size`` operands of ``dtype``."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    ms = timing(lambda x: x["a"] @ x["b"], [{"a": a, "b": b}], "fwd", device, reps)["ms"]
    return 2.0 * size**3 / (ms * 1e-3) / 1e12


def copy_gib_per_s(device: torch.device, mib: int = 256, reps: int = 10) -> float:
    """Device memory copy bandwidth (read + write) in GiB/s."""
    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    ms = timing(lambda x: dst.copy_(x["s"]), [{"s": src}], "fwd", device, reps)["ms"]
    return 2 * mib / 1024 / (ms * 1e-3)
