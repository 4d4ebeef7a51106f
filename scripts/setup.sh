#!/usr/bin/env bash
# Installs learnedopt and what it needs into the current Python environment, building the
# extension (CPU kernels; CUDA kernels too when torch is a CUDA build and nvcc is found).
# TORCH_SPEC overrides which torch to install when none is present (default: torch==2.13.0).
#
# An installed build that is up to date with this checkout (scripts/build_state.py: same csrc/,
# setup.py, torch and build settings) is reused without compiling; otherwise the compiler's
# progress is shown, one line per file, and the object files stay in build/temp, so that the next
# build recompiles only what changed (the full log is .cache/build.log).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
"$PY" -m pip install -q numpy tqdm pillow matplotlib pytest ninja setuptools wheel
if ! "$PY" scripts/build_state.py check; then
  start=$SECONDS
  set +e
  MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install -v --no-build-isolation -e . 2>&1 | "$PY" scripts/build_state.py progress
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" != 0 ]; then
    echo "learnedopt: the build failed (exit $status); the end of .cache/build.log:" >&2
    tail -n 60 .cache/build.log >&2
    exit "$status"
  fi
  "$PY" scripts/build_state.py record
  echo "learnedopt: built in $((SECONDS - start)) s"
fi
"$PY" -m learnedopt info 2>/dev/null || "$PY" -c "import learnedopt; print(learnedopt.ops.describe())"
