#!/usr/bin/env bash
# Installs learnedopt and what it needs into the current Python environment, building the
# extension (CPU kernels; CUDA kernels too when torch is a CUDA build and nvcc is found).
# TORCH_SPEC overrides which torch to install when none is present (default: torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
"$PY" -m pip install -q numpy tqdm pillow matplotlib pytest ninja setuptools wheel
MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install -q --no-build-isolation -e .
"$PY" -m learnedopt info 2>/dev/null || "$PY" -c "import learnedopt; print(learnedopt.ops.describe())"
