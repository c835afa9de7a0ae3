#!/usr/bin/env bash
# Run the whole test suite N times (default 20), each with fresh random inputs (the tests draw their
# seeds from SystemRandom), and print one summary line per run: the check that no test depends on the
# seed or the CPU. Not part of CI (about 4 minutes a run on 2 cores). Logs go to ${LOGS:-seed-runs/}.
#   bash tools/seed_runs.sh 20
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
logs="${LOGS:-seed-runs}"
mkdir -p "$logs"
export CONTRASTIVE_OPS_REQUIRE_PEERS=1 CONTRASTIVE_OPS_REQUIRE_TRITON=1 CONTRASTIVE_OPS_REQUIRE_CUDA_EXT=1
failed=0
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  .venv/bin/python -m pytest -q -n auto -p no:cacheprovider tests -rf > "$logs/run$i.log" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
  echo "run $i: rc=$rc, $(( $(date +%s) - start )) s, $(tail -1 "$logs/run$i.log") $(grep '^FAILED' "$logs/run$i.log" | tr '\n' ' ')"
done
echo "$failed of $runs runs failed"
[ "$failed" -eq 0 ]
