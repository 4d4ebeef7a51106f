#!/usr/bin/env bash
# Table 1 of the MetaLSTM++ stress test (shared/seeds/metalstm_plusplus_stress_test.txt): MAML,
# Meta-SGD, TAML, MetaLSTM and MetaLSTM++ on Omniglot 20-way 1-shot and 5-shot, 300 meta-test
# tasks, with the protocol of 'learnedopt protocol show omniglot20'. Writes
# results/omniglot20/BUDGET/ALGORITHM-20wSHOTSs.json and the table (results_table.py).
usage() {
  cat <<USAGE
usage: scripts/reproduce_omniglot20.sh [--budget paper|cpu] [--data-root DIR] [--device DEV]
                                       [--algorithms "maml metasgd ..."] [SHOTS ...]
  --budget paper  the protocol: 20,000 meta-iterations, validation on 300 tasks every 250 (default)
  --budget cpu    reduced: $CPU_ITERATIONS meta-iterations, validation on $CPU_VAL_TASKS tasks every
                  $CPU_VAL_EVERY (CPU_ITERATIONS, CPU_VAL_EVERY, CPU_VAL_TASKS override)
  SHOTS           default: 1 5
Runs go to runs/omniglot/BUDGET/ (RUNS_DIR overrides), shared with reproduce_stress_test.sh's
20-way runs; rerunning resumes or reuses them.
USAGE
}
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/omniglot_protocol.sh
parse_common_args "$@"
shots=("${REST[@]}")
[ ${#shots[@]} -gt 0 ] || shots=(1 5)
out="results/omniglot20/$BUDGET"
mkdir -p "$out"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for s in "${shots[@]}"; do
  for algorithm in "${ALGORITHMS[@]}"; do
    run_case omniglot20 "$algorithm" 20 "$s" "$out/$algorithm-20w${s}s.json"
  done
done
python3 scripts/results_table.py "$out" --name "omniglot20-$BUDGET"
