"""The fast version of scripts/crash_resume.py: a sine training killed with SIGKILL at random
moments (a checkpoint at every iteration, so kills land in writes too) resumes with
``learnedopt train --resume RUN_DIR`` to checkpoints bitwise equal to an uninterrupted run's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("crash_resume", REPO / "scripts" / "crash_resume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_killed_runs_resume_bitwise(tmp_path):
    script = load_script()
    out = tmp_path / "crash.json"
    status = script.main(["--trials", "2", "--iterations", "40", "--seed", "3",
                          "--workdir", str(tmp_path / "runs"), "--out", str(out)])
    record = json.loads(out.read_text())
    assert status == 0 and record["passed"], record["results"]
    assert len(record["results"]) == 2
    assert all(r["passed"] and not r["problems"] for r in record["results"])


def test_the_comparison_sees_a_difference(tmp_path):
    """The bitwise check is not vacuous: one flipped bit in a meta-parameter is reported."""
    import torch
    script = load_script()
    a = {"iteration": 3, "state_dict": {"theta0": torch.ones(4)}, "elapsed_s": 1.0,
         "config": {"out": "a", "seed": 1}}
    b = {"iteration": 3, "state_dict": {"theta0": torch.ones(4)}, "elapsed_s": 2.0,
         "config": {"out": "b", "seed": 1}}
    assert script.differences(a, b) == []  # wall-clock and location only
    b["state_dict"]["theta0"].view(torch.int32)[2] ^= 1
    assert script.differences(a, b) == ["state_dict"]
