#!/usr/bin/env bash
# ResNet-12 (learnedopt.backbones, ~8.0 M parameters, an ordinary nn.Module brought in with
# --model) meta-trained by MAML, Meta-SGD, TURTLE and the enhanced LSTM on 5-way 1-shot 84x84 RGB
# episodes of an image folder (Omniglot characters laid out as one, scripts/omniglot_image_folder.py:
# no miniImageNet here), a SHORT CPU run: one inner step (train and test), meta-batch 2, 5 queries
# per class, ITERATIONS meta-iterations, meta-tested on TEST_TASKS (50) fixed test tasks. It shows the generic
# learner and the fused rules running on a real backbone; it is not a results protocol.
# Writes results/resnet12/<algorithm>.json.
#   bash scripts/resnet12_short_run.sh OMNIGLOT_DIR [ALGORITHM ...]
set -euo pipefail
cd "$(dirname "$0")/.."
omniglot=${1:?usage: resnet12_short_run.sh OMNIGLOT_DIR [ALGORITHM ...]}; shift
algorithms=("$@")
[ ${#algorithms[@]} -gt 0 ] || algorithms=(maml metasgd turtle enhanced-lstm)
runs=${RUNS_DIR:-runs/resnet12}
out=${RESULTS_DIR:-results/resnet12}
iterations=${ITERATIONS:-20}
python3 scripts/omniglot_image_folder.py --omniglot "$omniglot" --out "$runs/folder"
mkdir -p "$out"
for algorithm in "${algorithms[@]}"; do
  # The enhanced LSTM keeps an LSTM state (h, c) per coordinate and task: 25 ResNet-12 tasks
  # adapted at once need more than 24 GiB (the process was killed for memory here), so it
  # validates and meta-tests 2 tasks at a time. The tasks are the same for any batch.
  batch=25; [ "$algorithm" = enhanced-lstm ] && batch=2
  python3 -m learnedopt train --algorithm "$algorithm" --model learnedopt.backbones:resnet12 \
    --head head --task images --data-root "$runs/folder" --cache-dir "$runs/.cache" --ways 5 \
    --shots 1 --queries 5 --image-size 84 --inner-steps 1 --test-inner-steps 1 --meta-batch 2 \
    --iterations "$iterations" --val-every 10 --val-tasks 10 --val-batch "$batch" --seed 0 --no-progress \
    --out "$runs/$algorithm" --resume
  python3 -m learnedopt eval --checkpoint "$runs/$algorithm/best.pt" --tasks ${TEST_TASKS:-50} --batch "$batch" \
    --out "$out/$algorithm.json"
done
python3 scripts/results_table.py "$out" --name resnet12 --readme README.md
