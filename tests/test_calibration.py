"""The static model held to published GPU times of public kernels (``benchmarks.static.calibration``):
siglip-kernel's SigLIP loss and its Triton BCE pass, Triton's attention tutorial forward. Compiled
for sm_90a without a GPU; the points the model misses are reported, not hidden."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None
                                and os.environ.get("CONTRASTIVE_OPS_REQUIRE_TRITON") != "1",
                                reason="Triton is not installed")

REPO = Path(__file__).resolve().parents[1]


def _in_compiling_process(code: str):
    """Run ``code`` (which prints one JSON line last) in a process of its own: the kernels there must be
    decorated for compiling (``TRITON_INTERPRET=0``), while this test process interprets them."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=900,
                          check=False, env={**os.environ, "TRITON_INTERPRET": "0"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def calibrated():
    if importlib.util.find_spec("siglip_kernel") is None:
        pytest.skip("siglip-kernel is not installed")
    return _in_compiling_process(
        "import json; from benchmarks.static import calibration as c; "
        "print(json.dumps({'results': c.run(), 'points': [p.name for p in c.POINTS], 'tolerance': c.TOLERANCE}))")


@pytest.fixture(scope="module")
def results(calibrated):
    return calibrated["results"]


def test_every_point_is_published_and_modeled(calibrated, results):
    assert [r["name"] for r in results] == calibrated["points"]
    for r in results:
        assert r["published"] > 0 and r["modeled"] > 0 and r["source"], r
        assert r["within"] == (abs(r["ratio"] - 1) <= calibrated["tolerance"])


def test_the_streaming_bce_pass_is_within_tolerance(results):
    """siglip-kernel's BCE pass: many warps per SM, so its issue and pipelines are the whole story."""
    bce = next(r for r in results if "BCE" in r["name"])
    assert bce["within"], bce


def test_the_misses_are_the_documented_ones(results):
    """The points the model misses (see docs/static-model.md, Calibration): the SigLIP total (its
    published time exceeds what its parts' published and measured rates explain) and the attention
    forward at head dim 128 — both optimistic, never pessimistic beyond the tolerance."""
    for r in results:
        assert r["ratio"] > 1 - 0.20, r  # the model never overestimates a published time beyond tolerance
        if not r["within"]:
            assert "SigLIP bf16" in r["name"] or "d=128" in r["name"], r


def test_attention_is_modeled_over_the_tutorials_launchable_configs():
    out = _in_compiling_process(
        "import json; from benchmarks.static import calibration as c; "
        "from benchmarks.static.public_kernels.attention import CONFIGS; "
        "print(json.dumps({'rows': c.attention(64), 'configs': len(CONFIGS)}))")
    rows = out["rows"]
    assert 0 < len(rows) <= out["configs"]
    for r in rows:
        assert r["ctas_per_sm"] >= 1 and not r["specialized"], r
        assert r["exposed_ms"] > 0  # the softmax after each wait for the products
    one_cta = [r for r in rows if r["ctas_per_sm"] == 1]
    assert all(r["bound"] == "mma+epilogue (serial)" for r in one_cta), one_cta
