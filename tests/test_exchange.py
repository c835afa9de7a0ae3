"""Real processes (torchrun, gloo on CPU): every process-group loss with ``exchange="gather"`` and
``"ring"`` against the single-process loss on the concatenated batch, in float64, with 2, 3 and 4
ranks (see exchange_worker.py); and the exchange's choice and argument checks in one process."""
import json
import os
import subprocess
import sys

import pytest
import torch

import contrastive_ops as co
from contrastive_ops import exchange

WORKER = os.path.join(os.path.dirname(__file__), "exchange_worker.py")
TOL = 1e-10  # float64 throughout
LOSSES = ["info_nce_queue", "info_nce_symmetric_labels", "info_nce_none", "clip", "clip_labels", "nt_xent",
          "nt_xent_module", "dcl", "hard_negative", "debiased", "supcon", "siglip", "gist"]
CASES = [f"{loss}/{ex}/{layout}" for loss in LOSSES for ex, layout in
         (("gather", "even"), ("ring", "even"), ("ring", "uneven"))]


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda w: f"world{w}")
def results(request, tmp_path_factory):
    world = request.param
    out = tmp_path_factory.mktemp(f"exchange{world}")
    env = dict(os.environ, OMP_NUM_THREADS="1", TEST_SEED=str(int.from_bytes(os.urandom(2), "little")))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world), WORKER,
           str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.parametrize("case", CASES)
def test_exchange_equals_single_process(results, case):
    for rank, per_rank in enumerate(results):
        errors = per_rank[case]
        assert "error" not in errors, f"rank {rank} {case}: {errors.get('error')}"
        assert "loss" in errors and any(k.startswith("grad_") for k in errors), f"rank {rank}: {case} checked nothing"
        for what, err in errors.items():
            assert err <= TOL, f"rank {rank} {case} {what}: relative error {err:.2e}"
        if "/ring/" in case:
            assert errors["bitwise_repeat"] == 0.0


def test_ring_info_nce_keeps_the_gather(results):
    for per_rank in results:
        assert per_rank["ring_info_nce/gather/even"].keys() >= {"loss", "grad_q", "grad_k"}
        assert all(v <= TOL for v in per_rank["ring_info_nce/gather/even"].values())
        for layout in ("even", "uneven"):
            assert "exchange='ring' is not available for ring_info_nce" in per_rank[f"ring_info_nce/ring/{layout}"]["error"]


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
