#!/usr/bin/env bash
# Meta-trains each algorithm on 10-shot sine regression with the CLI and meta-tests it on 2,000
# fixed tasks, writing results/sine/<algorithm>.json (the README table is rendered from them by
# scripts/results_table.py). Runs two trainings at a time, one thread each.
#   bash scripts/reproduce_sine.sh [ALGORITHM=ITERATIONS ...]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS_DIR:-runs/sine}
out=${RESULTS_DIR:-results/sine}
mkdir -p "$runs" "$out"
jobs=("$@")
[ ${#jobs[@]} -gt 0 ] || jobs=(turtle=20000 enhanced-lstm=15000 maml=20000 metasgd=10000 metalstm=10000 fomaml=20000)

one() {
  local algorithm=${1%%=*} iterations=${1#*=}
  OMP_NUM_THREADS=1 python3 -m learnedopt train --algorithm "$algorithm" --task sine --shots 10 \
    --iterations "$iterations" --val-every 500 --val-tasks 200 --seed 0 --no-progress \
    --out "$runs/$algorithm" --resume
  OMP_NUM_THREADS=1 python3 -m learnedopt eval --checkpoint "$runs/$algorithm/best.pt" \
    --tasks 2000 --out "$out/$algorithm.json"
}

running=0
for job in "${jobs[@]}"; do
  one "$job" > "$runs/${job%%=*}.log" 2>&1 &
  running=$((running + 1))
  if [ "$running" -ge 2 ]; then wait -n; running=$((running - 1)); fi
done
wait
for job in "${jobs[@]}"; do tail -n 2 "$runs/${job%%=*}.log"; done
