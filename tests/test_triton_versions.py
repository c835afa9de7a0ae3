"""The Triton kernels under Triton 3.6's interpreter too (the version the GPU machines have): a
subset of the interpreter tests — every loss and gradient, the row products, bounded logits, the Ring
selection (its search in the buffer too), SigLIP's gradient formed in the forward —
in a process whose Triton is the 3.6 the bootstrap installs into ``.venv/triton-3.6``."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

TRITON_36 = Path(os.environ.get("CONTRASTIVE_OPS_TRITON36_PATH", Path(sys.prefix) / "triton-3.6"))
SUBSET = ("every_loss_and_gradient_fp32 or row_products_of or test_ring or forward_formed_gradient or bounded_logits"
          " or search_in_the_buffer")  # (a module named test_ring* is named by its tests, not here)


@pytest.mark.skipif(not TRITON_36.is_dir() and os.environ.get("CONTRASTIVE_OPS_REQUIRE_TRITON") != "1",
                    reason=f"no Triton 3.6 at {TRITON_36} (tools/bootstrap.sh installs it)")
@pytest.mark.long
def test_interpreter_tests_under_triton_3_6():
    assert TRITON_36.is_dir(), f"CONTRASTIVE_OPS_REQUIRE_TRITON=1 but there is no Triton 3.6 at {TRITON_36}"
    root = Path(__file__).parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TRITON_36), os.environ.get("PYTHONPATH", "")]),
           "TRITON_INTERPRET": "1"}
    version = subprocess.run([sys.executable, "-c", "import triton; print(triton.__version__)"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version.startswith("3.6"), version
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
                           "tests/test_triton.py", "tests/test_ring_select.py", "tests/test_triton_siglip.py",
                           "tests/test_ring_select_triton.py::test_search_in_the_buffer_finds_every_rank_of_its_span",
                           "-k", SUBSET],
                          env=env, cwd=root, capture_output=True, text=True, timeout=900, check=False)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0 and " passed" in tail and "failed" not in tail, tail
