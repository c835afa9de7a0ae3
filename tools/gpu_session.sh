#!/usr/bin/env bash
# The first run on a GPU, in one 10-minute call (benchmarks/first_run.py has the steps and caps):
#
#   bash tools/gpu_session.sh first --dry-run         # here, on a CPU: the plan, predicted times,
#                                                     # compile counts; compiles the plan's Triton
#                                                     # kernels for sm_90a into .triton-cache.tgz
#   bash tools/gpu_session.sh first                   # there: carry [".whl", ".triton-cache.tgz"]
#   bash tools/gpu_session.sh first --tiny            # the same steps on a CPU at tiny sizes
# (--rebuild with --dry-run: census and compile again although the cache matches the kernel sources)
#
# The dry run needs Triton 3.6 (the GPU machines' version; tools/bootstrap.sh puts it in
# .venv/triton-3.6) so that the carried cache's keys are the ones the GPU machine computes.
#
# Other sessions (more than one call):
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
# (tools/peer_wheels.sh fetches them; carry ".whl"); when they install, their tests must run
# (CONTRASTIVE_OPS_REQUIRE_PEERS=1). Every step ends by LIMIT_S seconds after the start (default 570,
# inside a 10-minute call): the build within 200 s, the GPU tests within 180 s, and the suite gets
# --budget-s of what is left less 60 s, to finish its point in flight and write its table and plots
# (arguments given after the stage come later on the suite's command line, so they win).
# check and bench each fit one 10-minute call; all does not.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE="${1:-all}"
[ $# -gt 0 ] && shift
case "$STAGE" in first|check|bench|all) ;; *) echo "usage: $0 [first [--dry-run] [--tiny]|check|bench|all] [suite args]" >&2; exit 2 ;; esac
OUT="${OUT:-gpu-out}"
LOG="$OUT/session.log"
LIMIT_S="${LIMIT_S:-570}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

if [ "$STAGE" = first ]; then
  DRY=0; TINY=(); REBUILD=()
  for arg in "$@"; do
    case "$arg" in
      --dry-run) DRY=1 ;; --tiny) TINY=(--tiny) ;; --rebuild) REBUILD=(--rebuild) ;;
      *) echo "first: unknown option $arg" >&2; exit 2 ;;
    esac
  done
  if [ "$DRY" = 1 ]; then
    [ -d .venv/triton-3.6/triton ] || { echo "no .venv/triton-3.6: run tools/bootstrap.sh first" >&2; exit 2; }
    # the census and compile with the GPU machines' Triton; the cache travels packed (.triton-cache.tgz)
    PYTHONPATH=".venv/triton-3.6${PYTHONPATH:+:$PYTHONPATH}" .venv/bin/python -m benchmarks.first_run dry-run \
      "${TINY[@]}" "${REBUILD[@]}"
    exit $?
  fi
  mkdir -p "$OUT"
  if [ ${#TINY[@]} -gt 0 ]; then
    PY=.venv/bin/python
    export TRITON_INTERPRET=1  # the triton backend on CPU tensors
  else
    [ -f .triton-cache.tgz ] && tar xzf .triton-cache.tgz
    export TRITON_CACHE_DIR="$PWD/.triton-cache"
    if ls .whl/*.whl >/dev/null 2>&1 && "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade \
        --target /tmp/peer-site .whl/*.whl >>"$LOG" 2>&1; then
      export PYTHONPATH="/tmp/peer-site${PYTHONPATH:+:$PYTHONPATH}" CONTRASTIVE_OPS_REQUIRE_PEERS=1
    fi
  fi
  "$PY" -m benchmarks.first_run run "${TINY[@]}" --out "$OUT" 2>&1 | tee -a "$LOG"
  exit "${PIPESTATUS[0]}"
fi
mkdir -p "$OUT"

step() {  # step NAME CAP CMD...: run within CAP seconds and before LIMIT_S, output appended to the log
  local name="$1" limit="$2"; shift 2
  local start=$SECONDS
  [ $((LIMIT_S - SECONDS)) -lt "$limit" ] && limit=$((LIMIT_S - SECONDS))
  if [ "$limit" -le 0 ]; then echo "$name: not run (LIMIT_S=$LIMIT_S s spent)" | tee -a "$LOG"; return 124; fi
  echo "=== $name: $*" >>"$LOG"
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$LOG"
  return $rc
}

echo "=== $(date -u +%FT%TZ) stage $STAGE, commit ${CONTRASTIVE_OPS_COMMIT:-from git}" >>"$LOG"
if ls .whl/*.whl >/dev/null 2>&1; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/peer-site .whl/*.whl >>"$LOG" 2>&1; then
    export PYTHONPATH="/tmp/peer-site${PYTHONPATH:+:$PYTHONPATH}" CONTRASTIVE_OPS_REQUIRE_PEERS=1
  else
    echo "peer wheels: install failed (see $LOG); peers will be skipped" | tee -a "$LOG"
  fi
fi
CONTRASTIVE_OPS_BUILD_CUDA=1 CONTRASTIVE_OPS_CUDA_ARCHS="${CONTRASTIVE_OPS_CUDA_ARCHS:-90}" \
  step build 200 "$PY" -m pip install -q --no-deps --no-build-isolation -e . || { tail -30 "$LOG"; exit 1; }

status=0
if [ "$STAGE" != bench ]; then
  { "$PY" -m contrastive_ops.info; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv; } \
    2>&1 | tee -a "$LOG"
  step "GPU tests" 180 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests || status=1
  tail -3 "$LOG"
  step "compiled Triton tests" "$LIMIT_S" "$PY" -m pytest -q -p no:cacheprovider tests/test_triton.py tests/test_compile.py || status=1
  tail -3 "$LOG"
fi
if [ "$STAGE" != check ]; then
  step suite "$LIMIT_S" "$PY" -m benchmarks.suite --no-gpu-tests --out "$OUT/results.jsonl" \
    --sizes lease --budget-s $((LIMIT_S - SECONDS - 60)) "$@" || status=1
  grep -E "^(device|matmul|results|plot|table)" "$LOG" | tail -8
fi
ls -la "$OUT"
exit $status
