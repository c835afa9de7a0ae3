"""pytest-benchmark suite: every loss × runnable backend × size × mode on this machine's device.

    pytest benchmarks/ --benchmark-only                          # N from CONTRASTIVE_OPS_BENCH_N (default 1024)
    CONTRASTIVE_OPS_BENCH_N=64 pytest benchmarks/ --benchmark-disable   # the smoke run CI does

Each benchmark also checks that the loss it timed is finite, so a broken implementation fails
instead of producing a number.
"""
import os

import pytest
import torch

import contrastive_ops as co
from benchmarks.workloads import MODES, OUR_BACKENDS, WORKLOADS, make_inputs, probe

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SIZES = [int(n) for n in os.environ.get("CONTRASTIVE_OPS_BENCH_N", "1024").split(",")]
D = int(os.environ.get("CONTRASTIVE_OPS_BENCH_D", "128"))
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
BACKENDS = [b for b in OUR_BACKENDS if co.backend_status(b, DEVICE)[0]]


def _leaves(x):
    return [t for t in x.values() if t.requires_grad]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", sorted(WORKLOADS))
def test_loss(benchmark, loss, backend, n, mode):
    workload = WORKLOADS[loss]
    runs, why = probe(lambda x: workload.call(x, backend), DEVICE)
    if not runs:  # the cuda extension refuses the losses it does not implement
        pytest.skip(why)
    inputs = make_inputs(n, D, DTYPE, DEVICE, seed=0)
    benchmark.group = f"{loss} N={n} D={D} {mode}"
    benchmark.extra_info.update(device=str(DEVICE), dtype=str(DTYPE), flops=workload.flops(n, D, mode))

    def sync(value):
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return value

    if mode == "fwd":
        def run():
            with torch.no_grad():
                return sync(workload.call(inputs, backend))
        value = benchmark(run)
    elif mode == "fwd_bwd":
        def run():
            loss_value = workload.call(inputs, backend)
            torch.autograd.grad(loss_value, _leaves(inputs), allow_unused=True)
            return sync(loss_value.detach())
        value = benchmark(run)
    else:
        def setup():
            return (sync(workload.call(inputs, backend)),), {}

        def run(loss_value):
            torch.autograd.grad(loss_value, _leaves(inputs), allow_unused=True)
            return sync(loss_value.detach())
        value = benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
    assert torch.isfinite(value).all()
