"""The drop-in optimizers' memory stays flat over many steps (a bounded run of
scripts/optimizer_memory.py, whose 10,000-step output is committed in results/reliability/),
and the measurement catches a leak when there is one.

Each measurement runs in a fresh process, as the script does: in the test process, memory that
earlier tests freed is reused by the allocator, so a leak need not show in its RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "optimizer_memory.py"
# Looser than the script's 1 % default, for a warm-up of 200 steps instead of 1,000; a leak of
# one state buffer per step of the LSTM (h and c, 2 x 20 floats per coordinate) would add
# 16 MiB, 5 % of the process, over these steps.
MAX_GROWTH = 0.02


def run_script(tmp_path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "memory.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(SCRIPT), "--warmup", "200", "--sample-every", "200",
                           "--max-growth", str(MAX_GROWTH), "--out", str(out), *args],
                          capture_output=True, text=True, env=env, timeout=600)
    assert out.is_file(), done.stderr
    return done.returncode, json.loads(out.read_text())


def test_memory_stays_flat_over_many_steps(tmp_path):
    code, record = run_script(tmp_path, "--steps", "600")
    assert [r["optimizer"] for r in record["results"]] == ["LSTMOptimizer", "TurtleOptimizer",
                                                           "MetaSGD"]
    for result in record["results"]:
        assert result["python_objects_growth"] <= 0, result
        assert result["tensors_growth"] <= 0, result
        assert result["rss_growth_fraction"] < MAX_GROWTH, result
    assert code == 0 and record["passed"]


def test_the_measurement_catches_a_leak(tmp_path):
    code, record = run_script(tmp_path, "--steps", "400", "--optimizers", "MetaSGD",
                              "--leak-kib", "256")
    (result,) = record["results"]
    assert result["tensors_growth"] == 200  # one kept tensor per step after warm-up
    assert result["rss_growth_fraction"] > MAX_GROWTH  # 50 MiB more of a ~320 MiB process
    assert code == 1 and not record["passed"] and not result["passed"]
