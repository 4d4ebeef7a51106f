#!/usr/bin/env bash
# Meta-RL on 2D navigation (Finn et al. 2017 §5.3): meta-trains MAML and Meta-SGD (TRPO outer
# loop), TURTLE and the enhanced LSTM (Adam outer loop), and MAML's two baselines (a policy
# pre-trained on all goals jointly, and the randomly initialised policy), each adapted at test
# time by its own rule; meta-tests every best.pt on the same fixed test goals, writes
# results/navigation2d/<name>.json, the plots, and the README table.
#   bash scripts/reproduce_navigation2d.sh [NAME=ITERATIONS ...]
# ITERATIONS: the meta-iterations each run gets (the committed results: see the README, which
# says what each run got on a shared 2-core CPU; the full protocol is 500).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS_DIR:-runs/navigation2d}
out=${RESULTS_DIR:-results/navigation2d}
test_goals=${TEST_GOALS:-300}
mkdir -p "$runs" "$out"

declare -A args=(
  [maml]="--algorithm maml --opt fisher=first_order"
  [metasgd]="--algorithm metasgd --opt fisher=first_order"
  [turtle]="--algorithm turtle --opt outer_optimizer=adam"
  [enhanced-lstm]="--algorithm enhanced-lstm --opt outer_optimizer=adam"
  [pretrained]="--algorithm maml --inner-steps 0"
  [random]="--algorithm maml --opt outer_optimizer=none"
)
jobs=("$@")
[ ${#jobs[@]} -gt 0 ] || jobs=(maml=500 metasgd=500 turtle=500 enhanced-lstm=500 pretrained=500 random=1)

one() {
  local name=${1%%=*} iterations=${1#*=}
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 nice -n 10 python3 -m learnedopt train --task navigation2d ${args[$name]} \
    --iterations "$iterations" --val-every 25 --val-tasks 50 --checkpoint-every 5 --seed 0 \
    --no-progress --out "$runs/$name" --resume
  OMP_NUM_THREADS=1 nice -n 10 python3 -m learnedopt eval --checkpoint "$runs/$name/best.pt" \
    --tasks "$test_goals" --test-inner-steps 1 --out "$out/$name.json"
}

for job in "${jobs[@]}"; do
  one "$job" > "$runs/${job%%=*}.log" 2>&1 &
done
wait
python3 -m learnedopt plot returns "$out"/*.json --out "$out/returns.png"
python3 -m learnedopt plot trajectories --checkpoint "$runs/maml/best.pt" \
  --checkpoint "$runs/metasgd/best.pt" --goals 4 --steps 1 --out "$out/trajectories.png"
python3 -m learnedopt plot curves "$runs/maml" "$runs/metasgd" "$runs/turtle" \
  "$runs/enhanced-lstm" "$runs/pretrained" --out "$out/curves.png"
python3 scripts/navigation2d_table.py "$out" --readme README.md
