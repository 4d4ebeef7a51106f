#!/usr/bin/env bash
# Sets everything up, then runs the package's main job: meta-train on 10-shot sine regression,
# meta-test on 2,000 tasks, print the result and write plots (runs/demo/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m learnedopt demo --out runs/demo "$@"
