"""Distributed meta-training speed: meta-iterations per second for 1 and 2 processes on this
machine, 1 torch thread each (so that the comparison is of processes, not of threads), and the
scaling efficiency (speed-up / processes).

    python3 -m bench.distributed                 # both cases, 1 and 2 processes (a few minutes)
    python3 -m bench.distributed --quick --repeats 1 --label smoke   # a harness check

On a shared 2-core machine (load average 5.5) one Omniglot meta-iteration took about 25 s on one
thread and --quick --repeats 1 took 4 minutes; on a quiet machine expect a third of that.

Cases (SPEC defaults of learnedopt.algorithms for each task family):
  Omniglot 20-way 1-shot, Conv4, MAML (second order; 5 inner steps, meta-batch 16), and
  sine TURTLE (second order; 5 inner steps, meta-batch 2: one task per rank with 2 processes).
A meta-iteration is the training loop's own step (learnedopt.train's _Trainer._step): draw the
whole meta-batch, adapt this rank's share, backward, the one all_reduce of meta-gradients, clip,
Adam. The ranks are started as torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1 in the
environment, gloo); each times ``--iterations`` steps between two barriers after ``--warmup``
untimed ones, and rank 0 reports. Process start-up and data loading are not timed.
Omniglot comes from --data-root (default ../shared/data/omniglot next to the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import this checkout's bench and learnedopt
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import machine, results

DEFAULT_DATA_ROOT = machine.REPO_ROOT.parent / "shared" / "data" / "omniglot"
CACHE_DIR = Path(__file__).resolve().parent / ".cache"

# (case, algorithm, task spec without the data root, timed iterations, warm-up iterations)
CASES = (
    ("Omniglot 20-way 1-shot Conv4 MAML (SO)", "maml",
     {"name": "omniglot", "ways": 20, "shots": 1}, 3, 1),
    ("sine TURTLE (SO)", "turtle", {"name": "sine"}, 300, 20),
)
WORLD_SIZES = (1, 2)


def worker(args) -> None:
    """One rank: build the training loop for the case, time its steps, rank 0 writes the rate."""
    import torch
    from learnedopt import distributed
    from learnedopt.train import TrainConfig, _Trainer

    torch.set_num_threads(1)
    name, algorithm, task, iterations, warmup = CASES[args.worker]
    if args.quick:
        iterations, warmup = max(2, iterations // 10), 1
    task = dict(task)
    if task["name"] == "omniglot":
        task.update(data_root=str(args.data_root), cache_dir=str(CACHE_DIR))
    context = distributed.init_from_env("cpu")
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(algorithm=algorithm, task=task, out=out, iterations=10 ** 9,
                             val_every=10 ** 9, progress=False)
        trainer = _Trainer(config, resume=False)
        trainer.algorithm.train()
        for _ in range(warmup):
            trainer._step()
        context.barrier()
        start = time.perf_counter()
        for _ in range(iterations):
            trainer._step()
        context.barrier()
        elapsed = time.perf_counter() - start
        meta_batch = trainer.algorithm.meta_batch_size
    if context.is_writer:
        Path(args.report).write_text(json.dumps({
            "iterations": iterations, "warmup": warmup, "elapsed_s": elapsed,
            "iterations_per_s": iterations / elapsed, "meta_batch": meta_batch,
            "tasks_per_rank": meta_batch // context.world_size,
            "distributed": context.record(), "threads_per_process": torch.get_num_threads()}))


def launch(case: int, world: int, args, timeout_s: float) -> dict:
    """Run ``world`` worker processes of ``case``; rank 0's report."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rank0.json"
        argv = [sys.executable, "-m", "bench.distributed", "--worker", str(case), "--report",
                str(report), "--data-root", str(args.data_root)] + (["--quick"] if args.quick else [])
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        env.update(PYTHONPATH=str(machine.REPO_ROOT), OMP_NUM_THREADS="1")
        if world > 1:
            env.update(WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), LEARNEDOPT_DIST_TIMEOUT=str(timeout_s))
        procs = [subprocess.Popen(argv, cwd=machine.REPO_ROOT, stderr=subprocess.PIPE, text=True,
                                  env={**env, **({"RANK": str(r), "LOCAL_RANK": str(r)}
                                                 if world > 1 else {})})
                 for r in range(world)]
        errors = []
        try:
            for proc in procs:
                _, err = proc.communicate(timeout=timeout_s)
                if proc.returncode != 0:
                    errors.append(err.strip().splitlines()[-1] if err.strip() else
                                  f"exit code {proc.returncode}")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        if errors:
            raise RuntimeError("; ".join(errors))
        return json.loads(report.read_text())


def render_markdown(record: dict) -> str:
    ok = [r for r in record["results"] if r["status"] == "ok"]
    rows = []
    for r in ok:
        rows.append([r["case"], str(r["processes"]), f"{r['tasks_per_rank']}",
                     f"{r['iterations_per_s']:.3g}", results.ratio(r.get("speedup")),
                     "–" if r.get("efficiency") is None else f"{100 * r['efficiency']:.0f} %"])
    if not rows:
        return "No case completed."
    return ("**Distributed meta-training, CPU** — meta-iterations per second with 1 and 2 "
            "processes on gloo, 1 torch thread each (median of the repeats), the speed-up over "
            "1 process and the scaling efficiency (speed-up / processes).\n\n"
            + results.table(["case", "processes", "tasks per rank", "meta-iterations/s",
                             "speed-up", "efficiency"], rows))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="writes bench/results/distributed-cpu-*.json")
    parser.add_argument("--quick", action="store_true", help="a tenth of the iterations")
    parser.add_argument("--repeats", type=int, default=2,
                        help="launches per case and process count, alternating 1 and 2 "
                             "processes (default 2)")
    parser.add_argument("--cases", help="comma-separated case numbers (default all): "
                        + "; ".join(f"{i + 1}={c[0]}" for i, c in enumerate(CASES)))
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds one launch may take before it is stopped (default 600)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--label")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.cases = results.pick_cases(parser, args.cases, range(len(CASES)))  # indices into CASES
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv=None) -> Path | None:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args)
        return None
    import torch
    device = machine.setup_device("cpu", 1)
    record = machine.run_header("distributed", device, argv)
    record["label"] = args.label
    print(f"# bench.distributed, torch {torch.__version__}, 1 thread per process, {record['date']}"
          f"\n# command: {record['command']}")
    path = args.out or results.default_path(record, args.label)
    rows: list[dict] = []
    for case in args.cases:
        name, algorithm = CASES[case][:2]
        if CASES[case][2]["name"] == "omniglot" and not args.data_root.is_dir():
            rows.append({"case": name, "what": name, "status": "skipped",
                         "reason": f"no Omniglot data at {args.data_root} (--data-root)"})
            continue
        samples: dict[int, list[dict]] = {w: [] for w in WORLD_SIZES}
        try:
            for _ in range(args.repeats):
                for world in WORLD_SIZES:
                    samples[world].append(launch(case, world, args, args.timeout))
                    print(f"{name}, {world} process(es): "
                          f"{samples[world][-1]['iterations_per_s']:.3g} it/s", flush=True)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            rows.append({"case": name, "what": name, "status": "error", "reason": str(exc)[:500]})
            continue
        base = statistics.median(s["iterations_per_s"] for s in samples[1])
        for world in WORLD_SIZES:
            rate = statistics.median(s["iterations_per_s"] for s in samples[world])
            first = samples[world][0]
            rows.append({"case": name, "what": name, "status": "ok", "algorithm": algorithm,
                         "processes": world, "threads_per_process": first["threads_per_process"],
                         "meta_batch": first["meta_batch"], "tasks_per_rank": first["tasks_per_rank"],
                         "iterations": first["iterations"], "warmup": first["warmup"],
                         "iterations_per_s": rate,
                         "samples_iterations_per_s": [s["iterations_per_s"] for s in samples[world]],
                         "speedup": rate / base, "efficiency": rate / base / world,
                         "backend": first["distributed"]["backend"]})
    record["settings"] = {"repeats": args.repeats, "quick": args.quick,
                          "world_sizes": list(WORLD_SIZES)}
    record["results"], record["complete"] = rows, True
    results.write_json(record, path)
    print(render_markdown(record))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
