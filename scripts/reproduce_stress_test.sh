#!/usr/bin/env bash
# The MetaLSTM++ stress test (shared/seeds/metalstm_plusplus_stress_test.txt, Figure 2): meta-test
# accuracy against the number of ways, 1-shot, for MAML, Meta-SGD, TAML, MetaLSTM and MetaLSTM++,
# with the protocol of 'learnedopt protocol show stress-test'. Writes
# results/stress-test/BUDGET/ALGORITHM-WAYSw1s.json (300 meta-test tasks each) and ways.png.
usage() {
  cat <<USAGE
usage: scripts/reproduce_stress_test.sh [--budget paper|cpu] [--data-root DIR] [--device DEV]
                                        [--algorithms "maml metasgd ..."] [WAYS ...]
  --budget paper  the protocol: 20,000 meta-iterations, validation on 300 tasks every 250
                  (default; days on a CPU, see results/stress-test/protocol_cost.md)
  --budget cpu    reduced: $CPU_ITERATIONS meta-iterations, validation on $CPU_VAL_TASKS tasks every
                  $CPU_VAL_EVERY (CPU_ITERATIONS, CPU_VAL_EVERY, CPU_VAL_TASKS override)
  WAYS            default: 20 40 60 80 100 150 175 200 (paper), 20 50 100 (cpu)
Runs go to runs/omniglot/BUDGET/ (RUNS_DIR overrides); rerunning resumes or reuses them.
USAGE
}
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/omniglot_protocol.sh
parse_common_args "$@"
ways=("${REST[@]}")
if [ ${#ways[@]} -eq 0 ]; then
  if [ "$BUDGET" = paper ]; then ways=(20 40 60 80 100 150 175 200); else ways=(20 50 100); fi
fi
out="results/stress-test/$BUDGET"
mkdir -p "$out"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for w in "${ways[@]}"; do
  for algorithm in "${ALGORITHMS[@]}"; do
    run_case stress-test "$algorithm" "$w" 1 "$out/$algorithm-${w}w1s.json"
  done
done
python3 -m learnedopt plot ways "$out" --out "$out/ways.png"
