#!/usr/bin/env bash
# Sets everything up, then runs the package's main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 scripts/demo.py
