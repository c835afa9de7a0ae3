#!/usr/bin/env bash
# One run on a GPU machine without network (e.g. the H100 the device tool lends): build the CUDA
# extension, report the environment, run the GPU tests and the compiled Triton tests, then the
# benchmark suite; every log and result file ends up in $OUT (default gpu-out/).
#   bash tools/gpu_session.sh                         # full grid (long: pass a smaller one in a lease)
#   bash tools/gpu_session.sh --n 4096 16384 65536 --d 768 --dtypes bfloat16
# Peer packages missing there (inf-cl, memeff, siglip-kernel) travel as wheels in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
CONTRASTIVE_OPS_BUILD_CUDA=1 CONTRASTIVE_OPS_CUDA_ARCHS="${CONTRASTIVE_OPS_CUDA_ARCHS:-90}" \
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
"$PY" -m contrastive_ops.info | tee "$OUT/info.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv >>"$OUT/info.txt" 2>&1
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests >"$OUT/gpu-tests.log" 2>&1
echo "GPU tests: exit $? $(tail -1 "$OUT/gpu-tests.log")"
"$PY" -m pytest -q -p no:cacheprovider tests/test_triton.py tests/test_compile.py >"$OUT/triton-tests.log" 2>&1
echo "compiled Triton tests: exit $? $(tail -1 "$OUT/triton-tests.log")"
"$PY" -m benchmarks.suite --no-gpu-tests --out "$OUT/results.jsonl" "$@" 2>&1 | tee "$OUT/suite.log" | tail -40
"$PY" -m benchmarks.report "$OUT/results.jsonl" >"$OUT/report.log" 2>&1 || tail -5 "$OUT/report.log"
ls -la "$OUT"
