# Shared by reproduce_omniglot20.sh and reproduce_stress_test.sh (sourced, not run): the budget
# flags and one train + eval case of the stress test's protocol (learnedopt protocol show
# stress-test). A case's run directory depends only on algorithm, ways, shots and budget, so the
# two experiments share their common 20-way 1-shot runs, and a rerun resumes (or reuses) them.

# Budgets. paper: the protocol's own run settings (20,000 meta-iterations, validation on 300 tasks
# every 250) and 300 meta-test tasks. cpu: a stated reduced budget that fits a few CPU-hours;
# only the number of meta-iterations and of validation tasks shrink, the rest is the protocol.
CPU_ITERATIONS=${CPU_ITERATIONS:-200}
CPU_VAL_EVERY=${CPU_VAL_EVERY:-100}
CPU_VAL_TASKS=${CPU_VAL_TASKS:-50}
TEST_TASKS=300

budget_flags() {  # budget_flags paper|cpu -> the train flags of that budget
  case "$1" in
    paper) echo "" ;;
    cpu) echo "--iterations $CPU_ITERATIONS --val-every $CPU_VAL_EVERY --val-tasks $CPU_VAL_TASKS" ;;
    *) echo "unknown budget '$1' (expected paper or cpu)" >&2; return 2 ;;
  esac
}

parse_common_args() {  # sets BUDGET DATA_ROOT DEVICE ALGORITHMS, leaves the rest in REST
  BUDGET=paper; DATA_ROOT=${DATA_ROOT:-../shared/data/omniglot}; DEVICE=${DEVICE:-cpu}
  ALGORITHMS=(maml metasgd taml metalstm metalstm++); REST=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --budget) BUDGET=${2:?--budget needs paper or cpu}; shift 2 ;;
      --data-root) DATA_ROOT=${2:?--data-root needs a directory}; shift 2 ;;
      --device) DEVICE=${2:?--device needs cpu or cuda}; shift 2 ;;
      --algorithms) read -r -a ALGORITHMS <<< "${2:?--algorithms needs a list}"; shift 2 ;;
      -h|--help) usage; exit 0 ;;
      *) REST+=("$1"); shift ;;
    esac
  done
  budget_flags "$BUDGET" > /dev/null || exit 2
  [ -d "$DATA_ROOT" ] || { echo "data root '$DATA_ROOT' is not a directory (--data-root DIR)" >&2; exit 2; }
}

run_case() {  # run_case PROTOCOL ALGORITHM WAYS SHOTS RESULT_JSON
  local protocol=$1 algorithm=$2 ways=$3 shots=$4 result=$5
  local run="${RUNS_DIR:-runs/omniglot}/$BUDGET/$algorithm-${ways}w${shots}s"
  # shellcheck disable=SC2046  # the budget's flags are words
  python3 -m learnedopt train --protocol "$protocol" --algorithm "$algorithm" --ways "$ways" \
    --shots "$shots" --data-root "$DATA_ROOT" $(budget_flags "$BUDGET") --seed 0 \
    --device "$DEVICE" --no-progress --out "$run" --resume
  # Meta-test again only when best.pt changed since (the two experiments share the 20-way 1-shot
  # runs and so their meta-test result too).
  local tested="$run/test-$TEST_TASKS.json"
  if [ ! -f "$tested" ] || [ "$run/best.pt" -nt "$tested" ]; then
    python3 -m learnedopt eval --checkpoint "$run/best.pt" --tasks "$TEST_TASKS" \
      --device "$DEVICE" --out "$tested"
  fi
  cp "$tested" "$result"
  echo "result: $result"
}
