"""The benchmark suite runs end to end on this machine (tiny sizes) and writes what it promises."""
import json
import subprocess
import sys

REQUIRED = {"loss", "backend", "dtype", "n", "m", "d", "mode", "ms", "ms_p20", "ms_p80", "peak_mem_mib", "tflops",
            "matmul_tflops", "device", "torch", "triton", "commit", "timestamp", "status"}


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
