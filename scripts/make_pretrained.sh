#!/usr/bin/env bash
# Meta-train the shipped learned rules on sine regression and export them to learnedopt/pretrained/.
#
#   scripts/make_pretrained.sh [ITERATIONS] [OUT_DIR]
#
# Needs the `learnedopt train` CLI. Each rule is meta-trained with the algorithm's SPEC defaults
# on 10-shot sine (seed 0); only the transferable part (rule weights, summary of the learned step
# sizes, the step horizon) is kept, via `python -m learnedopt.optim export-rule`.
set -euo pipefail
ITERATIONS="${1:-5000}"
OUT_DIR="${2:-learnedopt/pretrained}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT_DIR"
for algorithm in turtle metalstm metasgd; do
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" learnedopt train --algorithm "$algorithm" --task sine \
        --shots 10 --iterations "$ITERATIONS" --seed 0 --out "$WORK/$algorithm"
    python3 -m learnedopt.optim export-rule "$WORK/$algorithm/best.pt" "$OUT_DIR/$algorithm-sine.pt"
done
python3 -m learnedopt.optim show
