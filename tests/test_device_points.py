"""The calibration points timed on a device (``benchmarks.static.device_points``): the script at tiny sizes
on the CPU (the attention kernel in Triton's interpreter, checked against fp32 before it is timed), and the
comparison with the model on given measurements (compiled for sm_90a without a GPU)."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None
                                and os.environ.get("CONTRASTIVE_OPS_REQUIRE_TRITON") != "1",
                                reason="Triton is not installed")

REPO = Path(__file__).resolve().parents[1]


def test_tiny_run_checks_and_times_every_point(tmp_path):
    from benchmarks.static import device_points

    result = device_points.measure(tmp_path, tiny=True)
    assert json.loads((tmp_path / device_points.RESULTS_FILE).read_text()) == json.loads(json.dumps(result))
    kinds = [p["point"] for p in result["points"]]
    assert kinds.count("siglip gemm") == 3 and "square gemm" in kinds and "siglip-kernel loss" in kinds
    attention = [p for p in result["points"] if p["point"] == "attention"]
    assert sorted(p["head_dim"] for p in attention) == sorted(device_points.TINY["head_dims"])
    for p in result["points"]:
        if p["point"] != "siglip-kernel loss":  # its package needs a GPU to import
            assert p["status"] == "ok" and (p.get("ms", 0) > 0 or p.get("tflops", 0) > 0), p
    assert all(0 <= p["relative_error"] <= device_points.ATTENTION_TOLERANCE for p in attention)
    table = device_points.compare(result)
    assert table.count("| attention") == len(attention) and "say nothing of a GPU" in table


def test_a_wrong_attention_output_is_not_timed(tmp_path, monkeypatch):
    from benchmarks.static import device_points

    monkeypatch.setattr(device_points, "ATTENTION_TOLERANCE", -1.0)  # no output can pass
    rows = device_points.measure_attention(device_points.TINY, __import__("torch").device("cpu"), float("inf"),
                                           configs=[(16, 16, 1, 1)])
    assert rows and all(r["status"].startswith("wrong") and "ms" not in r for r in rows)


def test_compare_puts_each_measurement_beside_the_model(tmp_path):
    """Given measurements of a GPU named H100, the table holds the model for the H100 (compiled here) and
    each ratio is measured / modeled time."""
    if importlib.util.find_spec("siglip_kernel") is None:
        pytest.skip("siglip-kernel is not installed")
    from benchmarks.static import device_points

    gemm = [{"point": "siglip gemm", "launch": name, "status": "ok", "ms": 10.0, "chunks": 16, "tflops": 500.0}
            for name in ("logits = img_chunk · txtᵀ", "grad_img[chunk] = grad · txt", "grad_txt += gradᵀ · img_chunk")]
    result = {"environment": {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "commit": "abc", "torch": "2.11",
                              "triton": "3.6.0"},
              "tiny": False, "sizes": {**device_points.FULL, "head_dims": [64]},
              "points": [{"point": "square gemm", "size": 8192, "status": "ok", "tflops": 396.05}, *gemm,
                         {"point": "siglip-kernel BCE pass", "status": "ok", "ms": 9.0, "chunks": 16},
                         {"point": "siglip-kernel loss", "status": "ok", "ms": 50.0},
                         {"point": "attention", "head_dim": 64, "config": [128, 64, 4, 3], "status": "ok",
                          "ms": 1.0, "tflops": 400.0},
                         {"point": "attention", "head_dim": 64, "config": [128, 32, 4, 7], "status": "not run"}]}
    path = tmp_path / "points.json"
    path.write_text(json.dumps(result))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.static.device_points", "compare", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "TRITON_INTERPRET": "0"})  # the model compiles the kernels
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    table = proc.stdout
    assert "H100 80GB SXM5 constants" in table
    assert re.search(r"\| bf16 GEMM 8192³ \| 396 TFLOP/s \| 792 TFLOP/s .*\| 2\.00 \|", table), table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "ms |" in line]
    assert len(rows) == 5, table  # three GEMMs, the BCE pass, the loss
    for line in rows:
        measured, modeled, ratio = re.findall(r"\| ([0-9.]+) ms[^|]*\| ([0-9.]+) ms \| ([0-9.]+) \|", line)[0]
        assert float(modeled) > 0 and abs(float(ratio) - float(measured) / float(modeled)) < 0.01, line
    attention = re.search(r"\| attention fwd fp16 d=64 \(128, 64, 4, 3\) \| 400 TFLOP/s \| (\d+) TFLOP/s \| "
                          r"([0-9.]+) \|", table)
    assert attention and abs(float(attention[2]) - int(attention[1]) / 400) < 0.01, table
    assert "| attention [128, 32, 4, 7] | not run | | |" in table, table


def test_siglip_kernel_part_times_its_bce_pass_and_loss_with_gradients():
    """The siglip-kernel part (its package needs a GPU to import) on stand-ins of its loss and BCE pass: the
    loss is timed forward + backward (every input's gradient formed), the in-place pass on fresh logits."""
    import torch

    from benchmarks.static import device_points

    seen = {"grads": 0, "fresh": True}
    first = {}

    def loss(img, txt, log_scale, bias, chunk_size=0):
        assert img.requires_grad and txt.requires_grad and log_scale.requires_grad and bias.requires_grad
        seen["grads"] += 1
        return torch.sigmoid(img @ txt.T * log_scale.exp() + bias).sum()

    def bce(logits, row_offset, b, return_scalar_grads=True, temperature=1.0, bias_val=0.0):
        first.setdefault("logits", logits.clone())
        seen["fresh"] &= torch.equal(logits, first["logits"])  # each call starts from the same raw logits
        logits.mul_(temperature).add_(bias_val)

    img, txt = (torch.nn.functional.normalize(torch.randn(256, 32), dim=1) for _ in range(2))
    rows = device_points._time_siglip_kernel(loss, bce, img, txt, device_points.TINY, torch.device("cpu"))
    assert [r["point"] for r in rows] == ["siglip-kernel BCE pass", "siglip-kernel loss"]
    assert all(r["status"] == "ok" and r["ms"] >= 0 for r in rows) and rows[0]["chunks"] == 4
    assert seen["fresh"] and seen["grads"] >= 2


@pytest.mark.parametrize("limit", ["0", "-5", "nan"])
def test_a_time_limit_that_is_not_positive_is_refused_by_name(limit, capsys):
    from benchmarks.static import device_points

    with pytest.raises(SystemExit) as exc:
        device_points.main(["measure", "--out", "unused", "--time-limit", limit, "--tiny"])
    assert exc.value.code == 2 and "--time-limit must be a positive number of seconds" in capsys.readouterr().err
