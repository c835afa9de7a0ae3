#!/usr/bin/env bash
# Runs on a fresh GPU machine (no network needed) within a time limit, writing everything into an
# output folder: build the CUDA extension, check every backend on the GPU, benchmark.
#
#   bash tools/gpu_run/session.sh [--time-limit S] [--out DIR] STAGE [stage options]
#
#   --time-limit S   every step ends by S seconds after the start (default 570; first: 480)
#   --out DIR        output folder (default gpu-out): session.log, results.jsonl, results.md, plots
#
# Stages:
#   first --dry-run   on a CPU machine: the first run's plan, predicted times and compile counts; compiles
#                     the plan's Triton kernels for sm_90a into .triton-cache.tgz (needs Triton 3.6, the GPU
#                     machines' version: tools/bootstrap.sh puts it in .venv/triton-3.6); --rebuild redoes it
#   first             on the GPU machine, with .whl/ and .triton-cache.tgz copied beside the tree: every step
#                     of tools/gpu_run/first_run.py (environment, build, smoke, headline, report, calibration,
#                     GPU tests)
#   first --tiny      the same steps on a CPU at tiny sizes
#   check             build, environment, GPU tests, compiled Triton tests
#   bench [suite args]  build, then the benchmark suite (default: --sizes timeboxed)
#   all [suite args]  both (needs more than 10 minutes)
#   calibrate         the static model's calibration points timed on this GPU (benchmarks/static/device_points.py:
#                     the attention tutorial's configs, siglip-kernel, its GEMMs) into device-points.json; no build
#
# e.g. bash tools/gpu_run/session.sh --time-limit 300 --out out bench --losses clip info_nce \
#          --impls triton cuda inf_cl --n 1048576 --d 768 --dtypes bfloat16 --modes fwd_bwd --max-seconds 120
#
# Where the tree has no .git, pass the commit as CONTRASTIVE_OPS_COMMIT=<hash>. Peers missing on the GPU
# machine (inf-cl, memeff, siglip-kernel, open_clip) are installed from wheels in .whl/ (tools/peer_wheels.sh
# fetches them); when they install, their tests must run (CONTRASTIVE_OPS_REQUIRE_PEERS=1). Within the time
# limit the build gets 200 s, the GPU tests 180 s, and the suite --budget-s of what is left less 60 s, to
# finish its point in flight and write its table and plots (arguments after the stage come later on the
# suite's command line, so they win).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=gpu-out
LIMIT_S=
while [ $# -gt 0 ]; do
  case "$1" in
    --time-limit) LIMIT_S="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) break ;;
  esac
done
STAGE="${1:-all}"
[ $# -gt 0 ] && shift
case "$STAGE" in first|check|bench|all|calibrate) ;; *) echo "usage: $0 [--time-limit S] [--out DIR] [first [--dry-run] [--tiny]|check|bench|all|calibrate] [suite args]" >&2; exit 2 ;; esac
LOG="$OUT/session.log"
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
    PYTHONPATH=".venv/triton-3.6${PYTHONPATH:+:$PYTHONPATH}" .venv/bin/python -m tools.gpu_run.first_run dry-run \
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
  "$PY" -m tools.gpu_run.first_run run "${TINY[@]}" --out "$OUT" ${LIMIT_S:+--limit-s "$LIMIT_S"} 2>&1 | tee -a "$LOG"
  exit "${PIPESTATUS[0]}"
fi
LIMIT_S="${LIMIT_S:-570}"
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
if [ "$STAGE" = calibrate ]; then  # public kernels and cuBLAS only: nothing of the package to build
  step calibrate "$LIMIT_S" "$PY" -m benchmarks.static.device_points measure --out "$OUT" \
    --time-limit $((LIMIT_S - SECONDS - 30))
  status=$?
  ls -la "$OUT"
  exit $status
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
    --sizes timeboxed --budget-s $((LIMIT_S - SECONDS - 60)) "$@" || status=1
  grep -E "^(device|matmul|results|plot|table)" "$LOG" | tail -8
fi
ls -la "$OUT"
exit $status
