#!/usr/bin/env bash
# One call on a GPU machine (at most 10 minutes): build the CUDA extension, run the CUDA tests,
# run the GPU benchmarks. Raw logs and result JSON go to bench/results/ and, when $OUT is set,
# to $OUT as well.
#
#   bash bench/gpu_all.sh            # from the repository root (or anywhere: it cd's there)
#
# Every stage has its own time limit (seconds, overridable through the environment) so that one
# slow stage cannot starve the rest: build 200, tests 150, ops 110, meta-training 50, optimizer 30,
# info and report 30 each. Those add up to 10 minutes, the most one call may take, so each stage
# is also cut to what is left of TOTAL_S (510 s from the script's start, start-up included): the
# copy to $OUT at the end always happens. The benchmarks write their JSON progressively, so a stage
# cut by its limit still leaves what it finished (marked "complete": false).
set -uo pipefail
cd "$(dirname "$0")/.."

BUILD_S=${BUILD_S:-200}; TESTS_S=${TESTS_S:-150}; OPS_S=${OPS_S:-110}
META_S=${META_S:-50}; OPTIM_S=${OPTIM_S:-30}; TOTAL_S=${TOTAL_S:-510}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOGS=bench/results/logs/gpu-$STAMP
mkdir -p "$LOGS"
PY=${PYTHON:-python3}

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, tee its log, report its status
  local name=$1 limit=$2; shift 2
  local left=$((TOTAL_S - SECONDS - 10))  # timeout's --kill-after may add 10 s
  if ((left < limit)); then limit=$left; fi
  if ((limit < 5)); then
    echo "=== $name: not run, the script's ${TOTAL_S}s are spent"
    echo "$name skipped 0" >> "$LOGS/stages.txt"
    return 124
  fi
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0))s$([ "$rc" = 124 ] && echo ' (time limit)')"
  echo "$name $rc $((SECONDS - t0))" >> "$LOGS/stages.txt"
  return "$rc"
}

{
  echo "date: $(date -u --iso-8601=seconds)"
  echo "command: bash bench/gpu_all.sh (BUILD_S=$BUILD_S TESTS_S=$TESTS_S OPS_S=$OPS_S META_S=$META_S OPTIM_S=$OPTIM_S TOTAL_S=$TOTAL_S)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi: not available"
  nvcc --version 2>&1 | tail -2 || echo "nvcc: not available"
  $PY -c "import torch, os; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None, 'cpu threads', torch.get_num_threads(), 'cores', os.cpu_count())"
} 2>&1 | tee "$LOGS/header.log"

# Build only for this GPU's architecture: compiling for every default one would take minutes.
ARCH=$($PY -c "import torch; p = torch.cuda.get_device_capability(); print(f'{p[0]}.{p[1]}')" 2>/dev/null)
[[ $ARCH =~ ^[0-9]+\.[0-9]+$ ]] || ARCH=""
BUILD_ENV=(env LEARNEDOPT_CUDA=1 ${ARCH:+TORCH_CUDA_ARCH_LIST=$ARCH} MAX_JOBS=$(nproc))
T0=$SECONDS
# --no-deps: the machine may have no network; torch, numpy, tqdm must already be there.
stage build "$BUILD_S" "${BUILD_ENV[@]}" $PY -m pip install --no-build-isolation --no-deps -e . ||
  stage build_inplace $((BUILD_S - (SECONDS - T0) > 30 ? BUILD_S - (SECONDS - T0) : 30)) \
    "${BUILD_ENV[@]}" $PY setup.py -q build_ext --inplace
stage info 30 $PY -c "import learnedopt; from learnedopt import ops; print(ops.describe())"
# -k cuda selects the tests parametrised on the "cuda" device, tests named after CUDA and tests marked
# @pytest.mark.cuda (markers are keywords); "not emulat" leaves out the emulated CUDA suite, which
# the CPU CI runs (and which would need HIP-CPU and TBB here).
stage tests "$TESTS_S" $PY -m pytest -q -k "cuda and not emulat" -p no:cacheprovider tests/
# The sizes of the GPU targets (10^5, 10^7) first, for every op: a run cut by its limit loses the rest.
stage ops "$OPS_S" $PY -m bench.ops --device cuda --budget 0.2 --sizes 1e5,1e7,1e3,1e4,1e6,1e8 \
  --out "bench/results/ops-cuda-$STAMP.json"
stage meta_train "$META_S" $PY -m bench.meta_train --device cuda --quick --budget 3 \
  --out "bench/results/meta_train-cuda-$STAMP.json"
stage optimizer "$OPTIM_S" $PY -m bench.optimizer --device cuda --budget 1 \
  --out "bench/results/optimizer-cuda-$STAMP.json"
MADE=(bench/results/*-cuda-"$STAMP".json)
[ -e "${MADE[0]}" ] && stage report 30 $PY -m bench.report "${MADE[@]}" --plots "$LOGS"

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/results"
  [ -e "${MADE[0]}" ] && cp "${MADE[@]}" "$OUT/results/"
  cp -r "$LOGS" "$OUT/"
  echo "copied results and logs to $OUT"
fi
cat "$LOGS/stages.txt"
