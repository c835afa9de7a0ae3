"""Every Triton kernel compiles for the GPU target (sm_90) with Triton's own compiler and ptxas, on
a machine without a GPU: catches what the interpreter cannot (types, layouts, shared memory)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None
                                and os.environ.get("CONTRASTIVE_OPS_REQUIRE_TRITON") != "1",
                                reason="Triton is not installed")


def test_kernels_compile_for_sm90():
    script = Path(__file__).with_name("triton_aot.py")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, str(script), "90"], check=False, capture_output=True, text=True, env=env, timeout=600,
                          cwd=script.parent.parent)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("ok ", "FAILED "))]
    assert proc.returncode == 0 and lines, proc.stdout + proc.stderr[-3000:]
    assert len(lines) == 14 and all(line.startswith("ok ") for line in lines), "\n".join(lines)
