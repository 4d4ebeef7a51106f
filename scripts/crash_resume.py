"""Does a training killed at random moments (kill -9) always resume to the uninterrupted result?

Runs a small sine meta-training (Meta-SGD, ``learnedopt train`` in a subprocess) once without
interruption, then ``--trials`` times killed with SIGKILL at a random moment and resumed with
``learnedopt train --resume RUN_DIR``. With a checkpoint at every iteration (``--checkpoint-every
1``), a good share of the kills land inside a checkpoint write, which shows as a temporary file
left in the run directory (counted per trial; the resume removes it).

A trial passes when:

- every checkpoint in the killed run's directory loads (learnedopt.checkpoint.load_checkpoint:
  readable, complete, content checksum intact);
- the resumed run's final last.pt and best.pt equal the uninterrupted run's bitwise: every
  tensor (meta-parameters, outer-optimizer state, RNG states) with torch.equal, every other field
  with ==, except the wall-clock fields (elapsed_s, and the run directory's path in the config);
- its metrics.jsonl equals the uninterrupted run's without the elapsed_s fields.

The kill moment is uniform over the uninterrupted run's measured training time, counted from
when the process has set the run up (it holds the run directory's lock and has written
config.json), so that the kills land in training, not in Python's start-up. (A kill before
config.json exists leaves nothing to resume; the trial then reruns the original command with
--resume, as a user would.)

    python3 scripts/crash_resume.py --out results/reliability/crash_resume.json
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.machine import run_header  # noqa: E402
from bench.results import write_json  # noqa: E402
from learnedopt.checkpoint import load_checkpoint  # noqa: E402
from learnedopt.train import load_metrics  # noqa: E402

WALL_CLOCK = {"elapsed_s"}


def train_args(out: Path, iterations: int, checkpoint_every: int) -> list[str]:
    return ["train", "--algorithm", "metasgd", "--task", "sine", "--shots", "5", "--queries", "5",
            "--meta-batch", "4", "--iterations", str(iterations), "--val-every", "10",
            "--val-tasks", "20", "--log-every", "5", "--checkpoint-every", str(checkpoint_every),
            "--seed", "1", "--no-progress", "--out", str(out)]


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "learnedopt", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> None:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed (exit {proc.returncode}):\n{err}")


def wait_training(run: Path, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Until ``proc`` has set its run up and starts training: it holds ``run``'s lock and has
    written config.json (False if it ended first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if f'"pid": {proc.pid},' in (run / ".lock").read_text() and \
                    (run / "config.json").exists():
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise TimeoutError(f"the training in {run} did not start within {timeout} s")


def comparable(value: Any, key: str = "") -> Any:
    """``value`` without wall-clock fields; tensors as (dtype, shape, bytes) for exact equality."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        return ("tensor", str(t.dtype), tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if isinstance(value, dict):
        return {k: comparable(v, k) for k, v in value.items()
                if k not in WALL_CLOCK and k != "checksum" and not (key == "config" and k == "out")}
    if isinstance(value, (list, tuple)):
        return type(value)(comparable(v) for v in value)
    return value


def differences(a: dict, b: dict) -> list[str]:
    ca, cb = comparable(a), comparable(b)
    return sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))


def trial(index: int, workdir: Path, reference: Path, delay_s: float, iterations: int,
          checkpoint_every: int) -> dict[str, Any]:
    run = workdir / f"trial-{index:02d}"
    proc = start(train_args(run, iterations, checkpoint_every))
    killed_at = None
    if wait_training(run, proc):
        time.sleep(delay_s)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = delay_s
    proc.communicate()
    left = sorted(p.name for p in run.glob(".*.tmp"))
    loads, problems, at_iteration = {}, [], None
    for name in ("last.pt", "best.pt"):
        if (run / name).exists():
            try:
                checkpoint = load_checkpoint(run / name)
                loads[name] = True
                if name == "last.pt":
                    at_iteration = int(checkpoint["iteration"])
            except Exception as exc:  # noqa: BLE001 - what the trial is about
                loads[name] = False
                problems.append(f"{name} does not load: {exc}")
    if (run / "config.json").exists():
        resumed_with = "learnedopt train --resume RUN_DIR"
        finish(start(["train", "--resume", str(run)]))
    else:  # killed before the run recorded its config: nothing to resume but the command
        resumed_with = "the original command with --resume (no config.json yet)"
        finish(start([*train_args(run, iterations, checkpoint_every), "--resume"]))
    for name in ("last.pt", "best.pt"):
        diff = differences(load_checkpoint(reference / name), load_checkpoint(run / name))
        if diff:
            problems.append(f"{name} differs from the uninterrupted run's in {diff}")
    drop = lambda records: [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in records]  # noqa: E731
    if drop(load_metrics(reference)) != drop(load_metrics(run)):
        problems.append("metrics.jsonl differs from the uninterrupted run's")
    return {"trial": index, "killed_after_s": None if killed_at is None else round(killed_at, 3),
            "killed": killed_at is not None, "last_pt_iteration_at_kill": at_iteration,
            "temporaries_left_by_the_kill": left, "killed_during_a_write": bool(left),
            "checkpoints_loaded": loads, "resumed_with": resumed_with, "passed": not problems, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--checkpoint-every", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--workdir", type=Path, help="where the runs go (default: a temporary "
                                                     "directory, removed afterwards)")
    parser.add_argument("--out", type=Path, help="write the JSON record here")
    args = parser.parse_args(argv)
    record = run_header("crash_resume", torch.device("cpu"), argv)
    record["command"] = " ".join(["python3", "scripts/crash_resume.py",
                                  *(sys.argv[1:] if argv is None else argv)])
    record.update(schema="learnedopt-reliability/1", trials=args.trials,
                  iterations=args.iterations, checkpoint_every=args.checkpoint_every,
                  kill_seed=args.seed, training_command="learnedopt " + " ".join(
                      train_args(Path("RUN_DIR"), args.iterations, args.checkpoint_every)))
    with tempfile.TemporaryDirectory(prefix="crash-resume-") as tmp:
        workdir = args.workdir or Path(tmp)
        reference = workdir / "uninterrupted"
        proc = start(train_args(reference, args.iterations, args.checkpoint_every))
        wait_training(reference, proc)
        began = time.monotonic()
        finish(proc)
        training_s = time.monotonic() - began
        record["uninterrupted_training_s"] = round(training_s, 3)
        print(f"uninterrupted run: {training_s:.2f} s of training", flush=True)
        rng = random.Random(args.seed)
        results = []
        for index in range(args.trials):
            result = trial(index, workdir, reference, rng.uniform(0, training_s), args.iterations,
                           args.checkpoint_every)
            results.append(result)
            print(f"trial {index}: killed {'after ' + str(result['killed_after_s']) + ' s' if result['killed'] else 'never (it finished first)'}"
                  f", last.pt at iteration {result['last_pt_iteration_at_kill']}"
                  f"{', during a write' if result['killed_during_a_write'] else ''}: "
                  f"{'ok' if result['passed'] else 'FAILED ' + '; '.join(result['problems'])}",
                  flush=True)
    record["results"] = results
    record["killed"] = sum(r["killed"] for r in results)
    record["killed_during_a_write"] = sum(r["killed_during_a_write"] for r in results)
    record["passed"] = all(r["passed"] for r in results)
    print(f"{sum(r['passed'] for r in results)}/{len(results)} trials passed "
          f"({record['killed']} killed, {record['killed_during_a_write']} during a checkpoint write)")
    if args.out:
        write_json(record, args.out)
        print(f"written to {args.out}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
