#!/usr/bin/env bash
# Download the benchmark's peers as wheels into .whl/ (git-ignored), for a GPU machine without
# network: tools/gpu_run/session.sh installs whatever .whl/ holds, and the device tool carries it
# (carry [".whl"]). All four are pure-Python wheels; their dependencies (torch, triton, numpy) are
# expected on the GPU machine. Pins match tools/bootstrap.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
mkdir -p .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d .whl \
  "inf-cl==1.2.1" "memeff==0.3.1" "siglip-kernel==0.1.2" "open_clip_torch==3.3.0"
ls -la .whl
