"""Interleaved A/B of two builds on one machine: runs the same `bench.ops` command in two checkouts
(each with its own built extension), alternating which goes first from round to round, and
compares the fused kernel's median time per (op, pass, n) over the rounds. Each round's result file
is kept under --out-dir.

    python3 -m bench.ab --trees /path/to/old . --rounds 3 -- --ops turtle_step --impls fused \\
        --sizes 1e4,1e5 --budget 0.5
    LEARNEDOPT_CPU_CAPABILITY=avx2 python3 -m bench.ab ...   (the environment reaches both)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench.machine import git_commit
from bench.results import RESULTS_DIR, _short_commit as short_commit, write_json


def alternate_rounds(rounds: int, run_a, run_b) -> tuple[list, list]:
    """run_a(r) and run_b(r) for r < rounds, A first in even rounds and B first in odd ones, so
    that drift in the machine's speed falls on both: (A's results, B's results)."""
    a, b = [], []
    for r in range(rounds):
        order = [(run_a, a), (run_b, b)] if r % 2 == 0 else [(run_b, b), (run_a, a)]
        for run, results in order:
            results.append(run(r))
    return a, b


def medians(runs: list[dict[str, float]], keys: list[str]) -> dict[str, float]:
    """Each key's median over the runs."""
    return {k: statistics.median(run[k] for run in runs) for k in keys}


def run_ops(tree: Path, args: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, "-m", "bench.ops", *args, "--out", str(out)], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"bench.ab: bench.ops in {tree} failed:\n{proc.stderr[-2000:]}")
    return json.loads(out.read_text())


def fused_medians(record: dict) -> dict[str, float]:
    return {f"{r['op']} {r['mode']} n={r['n']}": r["timing"]["median_s"]
            for r in record["results"] if r["impl"] == "fused" and r["status"] == "ok"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ops_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", nargs=2, type=Path, required=True, metavar=("A", "B"),
                        help="two checkouts with built extensions: A is the baseline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="ab", help="a word for the result folder and summary file")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR / "ab")
    args = parser.parse_args(own)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    trees = [t.resolve() for t in args.trees]
    commits = [short_commit(git_commit(t)) for t in trees]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = args.out_dir / f"{args.name}-{stamp}"
    runs = dict(zip("AB", alternate_rounds(
        args.rounds,
        lambda r: fused_medians(run_ops(trees[0], ops_args, folder / f"round{r}-A.json")),
        lambda r: fused_medians(run_ops(trees[1], ops_args, folder / f"round{r}-B.json")))))
    keys = [k for k in runs["A"][0] if all(k in m for m in runs["A"] + runs["B"])]
    summary = {side: medians(runs[side], keys) for side in runs}
    print(f"| call | A {commits[0]} | B {commits[1]} | A / B |")
    print("| --- | --- | --- | --- |")
    for k in keys:
        a, b = summary["A"][k], summary["B"][k]
        print(f"| {k} | {a * 1e6:.1f} µs | {b * 1e6:.1f} µs | {a / b:.2f}× |")
    record = {"benchmark": "ab", "date": stamp, "command": "python3 -m bench.ab " + " ".join(argv),
              "environment": {k: v for k, v in os.environ.items() if k.startswith("LEARNEDOPT_")},
              "trees": {"A": [str(trees[0]), commits[0]], "B": [str(trees[1]), commits[1]]},
              "median_s": summary, "rounds": runs}
    path = write_json(record, folder / "summary.json")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
