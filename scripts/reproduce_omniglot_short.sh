#!/usr/bin/env bash
# A short CPU run of every algorithm on Omniglot 5-way 1-shot (Vinyals split, 28x28, rotations):
# a few hundred meta-iterations with a small meta-batch, meta-tested on 200 fixed test tasks.
# Shows that each algorithm trains and beats chance (20%); it is NOT the full protocol (see the
# README for that). Writes results/omniglot-short/<algorithm>.json.
#   bash scripts/reproduce_omniglot_short.sh DATA_ROOT [ALGORITHM ...]
set -euo pipefail
cd "$(dirname "$0")/.."
data_root=${1:?usage: reproduce_omniglot_short.sh DATA_ROOT [ALGORITHM ...]}; shift
algorithms=("$@")
[ ${#algorithms[@]} -gt 0 ] || algorithms=(maml fomaml metasgd taml metalstm metalstm++ enhanced-lstm turtle scratch finetune baseline++)
runs=${RUNS_DIR:-runs/omniglot-short}
out=${RESULTS_DIR:-results/omniglot-short}
iterations=${ITERATIONS:-300}
mkdir -p "$runs" "$out"
for algorithm in "${algorithms[@]}"; do
  case "$algorithm" in
    metalstm) batch=() ;;   # Ravi: one task per meta-update
    *) batch=(--meta-batch 4) ;;
  esac
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} python3 -m learnedopt train --algorithm "$algorithm" \
    --task omniglot --data-root "$data_root" --cache-dir "$runs/.cache" --ways 5 --shots 1 \
    --queries 5 "${batch[@]}" --iterations "$iterations" --val-every 100 --val-tasks 50 --seed 0 \
    --no-progress --out "$runs/$algorithm" --resume
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} python3 -m learnedopt eval \
    --checkpoint "$runs/$algorithm/best.pt" --tasks 200 --out "$out/$algorithm.json"
done
