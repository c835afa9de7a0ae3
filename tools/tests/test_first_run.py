"""The first GPU run's tooling on a CPU: the tiny run end to end, the ahead-of-time Triton cache
(its keys are the JIT's own, checked through Triton 3.6's JIT path), and the dry run's plan."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRITON_36 = Path(os.environ.get("CONTRASTIVE_OPS_TRITON36_PATH", Path(sys.prefix) / "triton-3.6"))
needs_triton_36 = pytest.mark.skipif(
    not TRITON_36.is_dir() and os.environ.get("CONTRASTIVE_OPS_REQUIRE_TRITON") != "1",
    reason=f"no Triton 3.6 at {TRITON_36} (tools/bootstrap.sh installs it)")


@pytest.mark.long
def test_tiny_run_goes_end_to_end_and_writes_at_most_eight_files(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(["bash", "tools/gpu_run/session.sh", "--out", str(out), "first", "--tiny"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    files = sorted(p.name for p in out.iterdir())
    assert all(p.is_file() for p in out.iterdir()) and len(files) <= 8, files
    assert {"session.log", "results.jsonl", "results.md", "kernel-report.md", "device-points.json"} <= set(files), files
    assert any(f.endswith(".png") for f in files), files
    for step in ("environment", "build", "smoke", "headline", "report", "calibration", "gpu tests"):
        assert f"=== {step}: exit 0" in log, (step, log[-4000:])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    smoke = [r for r in rows if r.get("kind") == "smoke" and r["backend"] == "triton"]
    assert len(smoke) >= 12 and all(r["status"] == "ok" for r in smoke), smoke
    assert all(r["passed"] for r in smoke if r["judged"]), [r for r in smoke if r["judged"] and not r["passed"]]
    assert any(r.get("kind") == "determinism" and r["bitwise_equal"] for r in rows)
    timed = [r for r in rows if "kind" not in r and r["backend"] == "triton" and r["status"] == "ok"]
    assert timed and all(r["triton_interpreter"] for r in timed), timed
    report = (out / "kernel-report.md").read_text()
    assert report.count("| clip |") >= 2 and "interpreter" in report, report


@pytest.mark.long
@needs_triton_36
def test_cache_keys_are_the_jits_own_under_triton_3_6(tmp_path):
    """Census + ahead-of-time compile of two losses, then Triton 3.6's own JIT path over the same calls
    finds every kernel in that cache and compiles none; a shape of another divisibility class
    (odd N and D) is compiled anew (so the check can fail)."""
    script = textwrap.dedent(f"""
        import json, sys, torch
        from pathlib import Path
        from tools.gpu_run import first_run, triton_cache
        from benchmarks.workloads import WORKLOADS, make_inputs
        cache = Path({str(tmp_path / "cache")!r})

        def call(name, n, d):
            def go():
                x = first_run._cast(make_inputs(n, d, torch.float32, torch.device("cpu"), 0), torch.float32)
                first_run._evaluate(WORKLOADS[name].call, x, "triton")
            return go

        points = [("a", call("info_nce", 48, 32)), ("b", call("clip", 48, 32))]
        plan = triton_cache.build(points, cache, workers=1)
        found, compiled = triton_cache.verify(points, cache)
        odd = triton_cache.verify([("c", call("info_nce", 37, 13))], cache)
        print(json.dumps({{"records": len(plan["records"]), "errors": plan["census_errors"],
                          "found": found, "compiled": compiled, "odd": odd}}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRITON_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TRITON_36), str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["errors"] == [] and result["records"] >= 6, result  # norms, forward, backward of both
    assert result["found"] == result["records"] and result["compiled"] == 0, result
    assert result["odd"][1] > 0, result


def test_dry_run_plan_fits_the_time_limit_with_a_fresh_cache(tmp_path, monkeypatch, capsys):
    """The dry run's plan with a (made-up) fresh cache: every step predicted, the travel size checked,
    the last line the predicted total, within the limit."""
    from tools.gpu_run import first_run, triton_cache

    cache = tmp_path / "cache"
    cache.mkdir()
    import triton

    records = [{"kernel": "k", "spec": str(i), "steps": ["smoke", "headline clip"], "compile_s": 2.0} for i in range(5)]
    (cache / triton_cache.PLAN_FILE).write_text(json.dumps({
        "triton": triton.__version__, "sources": triton_cache.kernel_source_hash(), "target": "cuda sm_90",
        "compile_workers": 2, "census_errors": [], "tiny": True, "records": records}))
    monkeypatch.setattr(triton_cache, "CACHE_DIR", cache)
    assert first_run.dry_run(first_run.plan(tiny=True), measure_build=False, check_keys=False) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("predicted total: ") and lines[-1].endswith(" s"), lines[-1]
    total = float(lines[-1].split()[2])
    assert 0 < total <= first_run.LIMIT_S
    text = "\n".join(lines)
    for step in first_run.STEPS:
        assert any(line.startswith(step) for line in lines), (step, text)
    assert "5 distinct kernels, 10 s measured on this machine" in text and "travel:" in text and "ok" in text
