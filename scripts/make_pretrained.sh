#!/usr/bin/env bash
# Makes the learned rules shipped in learnedopt/pretrained/: the TURTLE, meta-learner LSTM and
# Meta-SGD runs of scripts/reproduce_sine.sh (10-shot sine, seed 0; reused when already trained),
# exported with `python -m learnedopt.optim export-rule`, which keeps only what transfers to a new
# model (the rule weights, a summary of the learned step sizes, the step horizon).
#   bash scripts/make_pretrained.sh
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS_DIR:-runs/sine}
bash scripts/reproduce_sine.sh turtle=20000 metalstm=10000 metasgd=10000
for algorithm in turtle metalstm metasgd; do
  python3 -m learnedopt.optim export-rule "$runs/$algorithm/best.pt" "learnedopt/pretrained/$algorithm-sine.pt"
done
python3 -m learnedopt.optim show
