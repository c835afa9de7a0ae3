#!/usr/bin/env bash
# A GPU machine without network (e.g. the H100 the device tool lends, 10 minutes a call): build the
# CUDA extension, check every backend on the GPU, run the benchmark suite. Everything it writes goes
# to $OUT (default gpu-out/): session.log, results.jsonl, results.md and one PNG per dtype × D.
#
#   bash tools/gpu_session.sh check                   # build, environment, GPU tests, compiled Triton tests
#   bash tools/gpu_session.sh bench [suite args]      # build, then the suite (default: --sizes lease)
#   bash tools/gpu_session.sh all [suite args]        # both, in one call
#
# e.g. bash tools/gpu_session.sh bench --losses clip info_nce --impls triton cuda inf_cl \
#          --n 1048576 --d 768 --dtypes bfloat16 --modes fwd_bwd --max-seconds 120
#
# The tree usually arrives without .git: pass the commit as CONTRASTIVE_OPS_COMMIT=<hash>.
# Peers missing there (inf-cl, memeff, siglip-kernel, open_clip) travel as wheels in .whl/
# (tools/peer_wheels.sh fetches them; carry ".whl"). Time limits (s): TEST_TIMEOUT (default 240) for
# each test step, STEP_TIMEOUT (default 540) for the build and the suite, whose --budget-s (default 450)
# leaves it time to write its table and plots: check and bench each fit one 10-minute call, all does not.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE="${1:-all}"
[ $# -gt 0 ] && shift
case "$STAGE" in check|bench|all) ;; *) echo "usage: $0 [check|bench|all] [suite args]" >&2; exit 2 ;; esac
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
LOG="$OUT/session.log"
STEP_TIMEOUT="${STEP_TIMEOUT:-540}"
TEST_TIMEOUT="${TEST_TIMEOUT:-240}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

step() {  # step NAME LIMIT CMD...: run within LIMIT seconds, output appended to the log, one summary line printed
  local name="$1" limit="$2"; shift 2
  local start=$SECONDS
  echo "=== $name: $*" >>"$LOG"
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$LOG"
  return $rc
}

echo "=== $(date -u +%FT%TZ) stage $STAGE, commit ${CONTRASTIVE_OPS_COMMIT:-from git}" >>"$LOG"
if ls .whl/*.whl >/dev/null 2>&1; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/peer-site .whl/*.whl >>"$LOG" 2>&1; then
    export PYTHONPATH="/tmp/peer-site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "peer wheels: install failed (see $LOG); peers will be skipped" | tee -a "$LOG"
  fi
fi
CONTRASTIVE_OPS_BUILD_CUDA=1 CONTRASTIVE_OPS_CUDA_ARCHS="${CONTRASTIVE_OPS_CUDA_ARCHS:-90}" \
  step build "$STEP_TIMEOUT" "$PY" -m pip install -q --no-deps --no-build-isolation -e . || { tail -30 "$LOG"; exit 1; }

status=0
if [ "$STAGE" != bench ]; then
  { "$PY" -m contrastive_ops.info; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv; } \
    2>&1 | tee -a "$LOG"
  step "GPU tests" "$TEST_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests || status=1
  tail -3 "$LOG"
  step "compiled Triton tests" "$TEST_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider tests/test_triton.py tests/test_compile.py || status=1
  tail -3 "$LOG"
fi
if [ "$STAGE" != check ]; then
  [ $# -eq 0 ] && set -- --sizes lease
  case " $* " in *" --budget-s "*) ;; *) set -- "$@" --budget-s "${BUDGET_S:-450}" ;; esac
  step suite "$STEP_TIMEOUT" "$PY" -m benchmarks.suite --no-gpu-tests --out "$OUT/results.jsonl" "$@" || status=1
  grep -E "^(device|matmul|results|plot|table)" "$LOG" | tail -8
fi
ls -la "$OUT"
exit $status
