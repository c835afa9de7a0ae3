"""Real processes (spawned, gloo on CPU): every process-group loss with ``exchange="gather"`` and
``"ring"`` against the single-process loss on the concatenated batch, in float64, with 2, 3 and 4
ranks, through ``python -m contrastive_ops.check --processes N`` (see ``contrastive_ops.check_processes``);
and the exchange's choice, argument checks and verdicts in one process."""
import json
import os
import subprocess
import sys

import pytest
import torch

import contrastive_ops as co
from contrastive_ops import check_processes, exchange

LOSSES = ["info_nce_queue", "info_nce_symmetric_labels", "info_nce_none", "clip", "clip_labels", "nt_xent",
          "nt_xent_module", "dcl", "hard_negative", "debiased", "supcon", "siglip", "gist"]
CASES = ([f"{loss}/{ex}/{layout}" for loss in LOSSES for ex, layout in
          (("gather", "even"), ("ring", "even"), ("ring", "uneven"))]
         + ["gist_anchors_vs_gather/ring/even", "ring_info_nce/gather/even", "ring_info_nce/ring/even",
            "ring_info_nce/ring/uneven"])


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda w: f"world{w}")
def rows(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("exchange") / "rows.json"
    seed = str(int.from_bytes(os.urandom(2), "little"))
    cmd = [sys.executable, "-m", "contrastive_ops.check", "--processes", str(request.param), "--device", "cpu",
           "--seed", seed, "--json", str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return {row["case"]: row for row in json.loads(out.read_text())["rows"]}, proc


@pytest.mark.parametrize("case", CASES)
def test_exchange_equals_single_process(rows, case):
    by_case, _ = rows
    row = by_case[case]
    assert row["verdict"].startswith("pass"), row
    if not case.startswith("ring_info_nce/ring"):
        assert row["worst"] is not None and row["worst"] <= 1e-10


def test_command_exit_status(rows):
    _, proc = rows
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_verdicts_can_fail():
    good = {"loss": 1e-16, "grad_q": 2e-16, "bitwise_repeat": 0.0}
    assert check_processes.verdict("clip/ring/even", [good, good], 1e-10).verdict == "pass"
    assert check_processes.verdict("clip/ring/even", [good, {**good, "grad_q": 1e-6}], 1e-10).verdict == "FAIL"
    assert "bitwise" in check_processes.verdict("clip/ring/even", [good, {**good, "bitwise_repeat": 1.0}],
                                                1e-10).verdict
    assert "nothing" in check_processes.verdict("clip/ring/even", [{"loss": 0.0}], 1e-10).verdict
    assert check_processes.verdict("clip/ring/even", [{"error": "ValueError: x"}], 1e-10).verdict.startswith("FAIL")
    assert check_processes.verdict("ring_info_nce/ring/even", [good], 1e-10).verdict.startswith("FAIL")


@pytest.mark.parametrize("bad,error", [("rings", ValueError), ("", ValueError), (None, TypeError), (2, TypeError)])
def test_exchange_argument_is_checked(bad, error):
    x = torch.randn(4, 3)
    with pytest.raises(error, match="exchange must be"):
        co.info_nce(x, x, exchange=bad)
    with pytest.raises(error, match="exchange must be"):
        co.nn.ClipLoss(exchange=bad)


def test_auto_choice():
    assert exchange.choose(2, [8, 8], 768, 2)[0] == "gather"  # small world
    assert exchange.choose(8, [64] * 8, 128, 2)[0] == "gather"  # small columns
    assert exchange.choose(8, [8192] * 8, 768, 2)[0] == "gather"  # 2 · 65536 · 768 · 2 bytes = 192 MiB
    assert exchange.choose(64, [8192] * 64, 768, 2)[0] == "ring"  # 1.5 GiB
    assert exchange.choose(2, [3, 5], 8, 4)[0] == "ring"  # only the ring takes uneven sizes
    assert exchange.choose(8, [16384] * 8, 768, 2, ring_possible=False)[0] == "gather"
