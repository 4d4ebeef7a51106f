#!/usr/bin/env bash
# Sets everything up and runs the whole test suite (what CI runs):
#   1. scripts/setup.sh: install dependencies and build the extension (reusing an up-to-date build);
#   2. scripts/check_cuda_sources.sh: compile every .cu with nvcc for sm_80 and sm_90, and
#      syntax-check the CUDA glue against a CUDA torch's headers (skipped where nvcc is missing);
#   3. the emulated CUDA library (tests/cuda_emulation): csrc/cuda's kernels and glue built on
#      HIP-CPU for CPU tensors, cached by a hash of its sources; without HIP-CPU or TBB the emulated
#      tests skip with the reason, unless LEARNEDOPT_REQUIRE_EMULATION=1 (.ci/run), which fails;
#   4. pytest, where a skipped CPU test counts as a failure (only GPU tests may skip).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
if command -v nvcc >/dev/null; then
  if inc=$(bash scripts/fetch_cuda_torch_headers.sh 2>/dev/null); then
    TORCH_CUDA_INCLUDE=$inc bash scripts/check_cuda_sources.sh
  else
    echo "warning: could not fetch a CUDA torch's headers; checking the .cu files only"
    bash scripts/check_cuda_sources.sh
  fi
else
  echo "nvcc not found: CUDA sources not compile-checked"
fi
require=()
[ "${LEARNEDOPT_REQUIRE_EMULATION:-0}" = 1 ] && require=(--require)
start=$SECONDS
"$PY" -m tests.cuda_emulation.build "${require[@]}"
echo "emulated CUDA library ready after $((SECONDS - start)) s"
LEARNEDOPT_NO_CPU_SKIPS=1 "$PY" -m pytest -q -rs "$@"
