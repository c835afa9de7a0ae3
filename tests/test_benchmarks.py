"""The benchmark suite runs end to end on this machine (tiny sizes) and writes what it promises."""
import json
import subprocess
import sys

import pytest

REQUIRED = {"loss", "backend", "dtype", "n", "m", "d", "mode", "ms", "ms_p20", "ms_p80", "peak_mem_mib", "tflops",
            "matmul_tflops", "device", "torch", "triton", "commit", "timestamp", "status"}


@pytest.mark.long
def test_suite_writes_rows_plots_and_table(tmp_path):
    out = tmp_path / "results.jsonl"
    cmd = [sys.executable, "-m", "benchmarks.suite", "--n", "32", "64", "--d", "16", "--losses", "clip",
           "--impls", "naive", "chunked", "triton", "--modes", "fwd", "fwd_bwd", "--reps", "2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 2 * 2 * 2  # backends x sizes x modes
    for r in ok:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert r["ms"] > 0 and r["ms_p20"] <= r["ms"] <= r["ms_p80"] and r["tflops"] > 0
    skipped = [r for r in rows if r["backend"] == "triton"]
    assert skipped and all(r["status"] == "skipped" and r["reason"] for r in skipped)
    assert (tmp_path / "results-float32-d16.png").stat().st_size > 0
    table = (tmp_path / "results.md").read_text()
    assert "| clip | 64 × 64 |" in table and "matmul rate" in table


def test_spent_budget_turns_the_remaining_points_into_skipped_rows(tmp_path):
    out = tmp_path / "results.jsonl"
    cmd = [sys.executable, "-m", "benchmarks.suite", "--n", "32", "--d", "16", "--losses", "clip", "info_nce",
           "--impls", "chunked", "--modes", "fwd", "--reps", "2", "--budget-s", "0", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["loss"], r["backend"]) for r in rows} == {("clip", "chunked"), ("info_nce", "chunked")}
    assert all(r["status"] == "skipped" and "--budget-s" in r["reason"] for r in rows)
    assert (tmp_path / "results.md").exists()


def test_a_backend_refusing_a_loss_is_reported_once_not_timed():
    import torch

    from benchmarks.workloads import probe
    from contrastive_ops import BackendUnavailableError

    def refuses(x):
        raise BackendUnavailableError("backend='cuda' does not implement the pairwise sigmoid loss (siglip_loss)")

    assert probe(refuses, torch.device("cpu")) == (
        False, "backend='cuda' does not implement the pairwise sigmoid loss (siglip_loss)")
    assert probe(lambda x: x["a"].sum(), torch.device("cpu")) == (True, "ok")


def test_schedule_stops_an_implementation_after_a_failure_or_a_predicted_overrun():
    import time

    from benchmarks.suite import Schedule

    schedule = Schedule(max_seconds=1.0)
    assert schedule.skip_reason("triton", "fwd", 1024) is None
    schedule.record("triton", "fwd", 1024, {"status": "ok", "ms": 200.0})
    assert schedule.skip_reason("triton", "fwd", 2048) is None  # predicted 800 ms
    assert "--max-seconds" in schedule.skip_reason("triton", "fwd", 4096)  # predicted 3.2 s
    assert schedule.skip_reason("triton", "bwd", 4096) is None  # nothing known of this mode yet
    schedule.record("naive", "fwd_bwd", 1024, {"status": "oom"})
    assert schedule.skip_reason("naive", "fwd_bwd", 2048) == "oom at N=1024: larger N not tried"
    assert "its gradients inside its forward" in schedule.skip_reason("siglip_kernel", "fwd", 1024)
    assert schedule.skip_reason("siglip_kernel", "fwd_bwd", 1024) is None

    running_out = Schedule(max_seconds=100.0, deadline=time.monotonic() + 2.0, budget_s=60)
    running_out.record("chunked", "fwd", 1024, {"status": "ok", "ms": 300.0})
    assert "outlast the time budget" in running_out.skip_reason("chunked", "fwd", 2048)  # 5 calls x 1.2 s > 2 s
    assert running_out.skip_reason("chunked", "fwd", 1024) is None
    spent = Schedule(max_seconds=100.0, deadline=time.monotonic() - 1.0, budget_s=60)
    assert spent.skip_reason("chunked", "fwd", 1024) == "time budget of 60 s (--budget-s) spent"
