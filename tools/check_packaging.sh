#!/usr/bin/env bash
# Packaging check (run by .ci/run after tools/bootstrap.sh): what a user installs works.
#  1. a wheel built from a fresh clone of HEAD (`pip wheel --no-build-isolation .`, the default
#     targets) holds the CUDA extension with machine code for every default target, its PTX, and
#     the Triton kernels;
#  2. that wheel installed into a fresh venv reports its targets in `python -m contrastive_ops.info`;
#  3. an install from source on a machine without nvcc succeeds without the extension, and the
#     package works there (chunked backend).
# Uses .venv (from tools/bootstrap.sh) for torch at build time and for Triton's cuobjdump.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
PY="$REPO/.venv/bin/python"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "== wheel from a fresh clone of $(git rev-parse --short HEAD)"
git clone --quiet "$REPO" "$WORK/src"
(cd "$WORK/src" && "$PY" -m pip wheel --quiet --no-build-isolation --no-deps -w "$WORK/dist" .)
WHEEL="$(ls "$WORK"/dist/contrastive_ops-*.whl)"
mkdir "$WORK/unpacked"
"$PY" -m zipfile -e "$WHEEL" "$WORK/unpacked"
SO="$(ls "$WORK"/unpacked/contrastive_ops/_cuda_ext*.so)"
for module in contrastive_fwd contrastive_bwd tiles config; do
  test -f "$WORK/unpacked/contrastive_ops/kernels/$module.py" || { echo "wheel lacks kernels/$module.py" >&2; exit 1; }
done
CUOBJDUMP="$("$PY" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump"))')"
EXPECTED="$(cd "$REPO" && "$PY" -c 'from contrastive_ops import _build; print(" ".join(_build.targets(_build.parse_archs(_build.DEFAULT_ARCHS))))')"
ELF="$("$CUOBJDUMP" --list-elf "$SO")"
PTX="$("$CUOBJDUMP" --list-ptx "$SO")"
for target in $EXPECTED; do
  case "$target" in
    sm_*) grep -q "\.${target}\.cubin" <<<"$ELF" || { echo "wheel's extension lacks $target code:"$'\n'"$ELF" >&2; exit 1; } ;;
    compute_*) grep -q "\.sm_${target#compute_}\.ptx" <<<"$PTX" || { echo "wheel's extension lacks $target PTX:"$'\n'"$PTX" >&2; exit 1; } ;;
  esac
done
if grep -qw sm_90a <<<"$EXPECTED"; then  # the fused tiles' wgmma in the sm_90a machine code
  "$CUOBJDUMP" -sass "$SO" | grep -q "HGMMA.64x128x16.F32" || { echo "wheel's sm_90a code holds no HGMMA" >&2; exit 1; }
fi
echo "wheel $(basename "$WHEEL"): kernels + extension with $EXPECTED"

echo "== the wheel in a fresh venv"
python3 -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}" numpy
"$VPY" -m pip install --quiet --no-deps "$WHEEL"
INFO="$(cd "$WORK" && "$VPY" -m contrastive_ops.info)"
echo "$INFO"
WANT="built for $(cd "$REPO" && "$PY" -c 'from contrastive_ops import _build; t = _build.targets(_build.parse_archs(_build.DEFAULT_ARCHS)); sm = [x for x in t if x.startswith("sm_")]; ptx = [x for x in t if x.startswith("compute_")]; print(", ".join(sm) + (" + PTX " + ", ".join(ptx) if ptx else ""))')"
grep -qF "$WANT" <<<"$INFO" || { echo "info does not say '$WANT'" >&2; exit 1; }

echo "== install from source without nvcc"
"$VPY" -m pip uninstall --quiet --yes contrastive_ops
NO_NVCC_PATH="$(tr ':' '\n' <<<"$PATH" | while read -r dir; do [ -n "$dir" ] && [ ! -x "$dir/nvcc" ] && echo "$dir"; done | paste -sd: -)"
(cd "$WORK/src" && rm -rf build && env -u CUDA_HOME -u CUDA_PATH PATH="$NO_NVCC_PATH" \
  "$VPY" -m pip install --verbose --no-build-isolation --no-deps . >"$WORK/no-nvcc.log" 2>&1) \
  || { cat "$WORK/no-nvcc.log" >&2; exit 1; }
grep -q "building without the CUDA extension" "$WORK/no-nvcc.log" || { echo "no warning about the missing extension:" >&2; cat "$WORK/no-nvcc.log" >&2; exit 1; }
INFO="$(cd "$WORK" && env -u CUDA_HOME -u CUDA_PATH PATH="$NO_NVCC_PATH" "$VPY" -m contrastive_ops.info)"
echo "$INFO"
grep -q "CUDA extension (backend 'cuda'): not built" <<<"$INFO" || { echo "info should say the extension is not built" >&2; exit 1; }
(cd "$WORK" && "$VPY" -c '
import torch, contrastive_ops as co
q, k = torch.randn(8, 4, requires_grad=True), torch.randn(8, 4)
loss = co.info_nce(q, k)
loss.backward()
assert torch.isfinite(loss) and q.grad is not None
print("without the extension: info_nce on", co.available_backends(), "ok")
')
echo "packaging check passed"
