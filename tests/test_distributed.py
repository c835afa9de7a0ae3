"""Two real processes (torchrun, gloo on CPU) check the process-group losses and the distributed
compat classes; see dist_worker.py for what each rank computes."""
import json
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "dist_worker.py")
TOL = 1e-10  # float64 throughout


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, OMP_NUM_THREADS="1", TEST_SEED=str(int.from_bytes(os.urandom(2), "little")))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WORKER, str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return ranks


EXPECTED = ["info_nce_queue", "info_nce_symmetric", "clip", "nt_xent", "dcl", "supcon", "ring", "module_nt_xent",
            "open_clip_local1_grad1", "open_clip_local1_grad0", "open_clip_local0_grad1", "open_clip_local0_grad0",
            "lightly_ntxent", "lightly_dcl", "lightly_ntxent_ring", "lightly_dcl_ring", "info_nce_labels", "clip_labels", "ring_labels", "hard_negative",
            "debiased", "siglip", "open_clip_siglip_bidir", "open_clip_siglip_gather"]
ST_EXPECTED = [f"sentence_transformers_{name}" for name in ("mnrl_1", "mnrl_4", "mnrl_hard_negatives",
                                                           "mnrl_in_batch_negatives", "mnrl_all_negatives",
                                                           "gist_absolute", "gist_relative", "gist_loss_absolute",
                                                           "gist_loss_relative")]


@pytest.mark.parametrize("check", EXPECTED + ST_EXPECTED)
def test_two_process_equalities(results, check):
    if check in ST_EXPECTED:
        pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    for rank, per_rank in enumerate(results):
        errors = per_rank[check]
        assert errors, f"rank {rank}: no values for {check}"
        for what, err in errors.items():
            assert err <= TOL, f"rank {rank} {check} {what}: relative error {err:.2e}"
