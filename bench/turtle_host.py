"""Per-call host cost of turtle_step: the op called directly (torch.ops.learnedopt.turtle_step and
turtle_step_backward, no Python wrapper) at n = 0 (nothing but the call's own work: checks, the
weights' handling, allocations, dispatch) and n = 1761 (the sine learner's parameter count), on
one thread, the paper's [g, m, t] network at t = 1 (the t column is folded into b_0).

Two builds compared, interleaved: each round runs one worker subprocess per checkout, the order
alternating from round to round, and the medians over rounds are compared.

    python3 -m bench.turtle_host --trees /path/to/old/checkout . --rounds 6
    python3 -m bench.turtle_host --worker          # one checkout's numbers, as JSON on stdout
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

SIZES = (0, 1761)
PASSES = ("forward", "backward")


def paper_net(gen):
    """The paper's [g, m, t] -> 5 x 20 -> 1 MLP, random weights of a trained rule's scale."""
    import torch

    sizes = [3, 20, 20, 20, 20, 20, 1]
    weights = [torch.randn(o, i, generator=gen) * 0.3 for i, o in zip(sizes, sizes[1:])]
    biases = [torch.randn(o, generator=gen) * 0.1 for o in sizes[1:]]
    return weights, biases


def worker(budget_s: float) -> dict:
    import torch

    import learnedopt  # loads the extension
    from bench.timing import measure

    torch.set_num_threads(1)
    out = {"learnedopt": learnedopt.__file__}  # which checkout's build is measured
    device = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    weights, biases = paper_net(gen)
    for n in SIZES:
        theta, grad, m, alpha, g = (torch.randn(n, generator=gen) for _ in range(5))
        forward = lambda i: torch.ops.learnedopt.turtle_step(  # noqa: E731
            theta, grad, m, 1, alpha, weights, biases, 0.9, 10.0)
        backward = lambda i: torch.ops.learnedopt.turtle_step_backward(  # noqa: E731
            g, g, theta, grad, m, 1, alpha, weights, biases, 0.9, 10.0)
        for name, fn in (("forward", forward), ("backward", backward)):
            out[f"{name} n={n}"] = measure(fn, device, budget_s=budget_s).median_s
    return out


def run_worker(tree: Path, budget_s: float) -> dict:
    """This file's worker with `tree`'s learnedopt (and bench.timing) first on the path, so that an
    older checkout without this script can be measured too."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "--budget",
                           str(budget_s)], cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"bench.turtle_host: the worker in {tree} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    loaded = Path(result.pop("learnedopt"))
    if tree not in loaded.parents:
        raise SystemExit(f"bench.turtle_host: the worker for {tree} loaded learnedopt from {loaded}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help="measure this checkout, print JSON")
    parser.add_argument("--trees", nargs=2, type=Path, metavar=("A", "B"),
                        help="two checkouts with built extensions: A is the baseline")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument("--out", type=Path, help="JSON file for the A/B (default: print only)")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.budget)))
        return 0
    if not args.trees:
        parser.error("give --trees A B (or --worker)")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    # Here, not at the top: the worker also runs in older checkouts, which may lack bench.ab.
    from bench.ab import alternate_rounds, medians as medians_of
    from bench.machine import git_commit
    from bench.results import _short_commit as short_commit

    trees = [t.resolve() for t in args.trees]
    runs_a, runs_b = alternate_rounds(args.rounds, lambda r: run_worker(trees[0], args.budget),
                                      lambda r: run_worker(trees[1], args.budget))
    runs: dict[str, list[dict]] = {}
    for tree, tree_runs in zip(trees, (runs_a, runs_b)):
        runs.setdefault(str(tree), []).extend(tree_runs)
    keys = list(runs_a[0])
    medians = {tree: medians_of(tree_runs, keys) for tree, tree_runs in runs.items()}
    a, b = medians[str(trees[0])], medians[str(trees[1])]
    commits = [short_commit(git_commit(t)) for t in trees]
    print(f"| call | A {commits[0]} | B {commits[1]} | A − B | A / B |")
    print("| --- | --- | --- | --- | --- |")
    for k in keys:
        print(f"| {k} | {a[k] * 1e6:.2f} µs | {b[k] * 1e6:.2f} µs | {(a[k] - b[k]) * 1e6:.2f} µs "
              f"| {a[k] / b[k]:.2f}× |")
    if args.out:
        from bench.machine import cpu_model, cpu_simd_path, host_simd_path, load_average
        from bench.results import write_json
        record = {"benchmark": "turtle_host", "date": datetime.datetime.now(datetime.timezone.utc)
                  .isoformat(timespec="seconds"),
                  "command": "python3 -m bench.turtle_host " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "cpu_model": cpu_model(), "simd_path": cpu_simd_path(), "host_simd_path": host_simd_path(), "load_average": load_average(),
                  "trees": {str(t): c for t, c in zip(trees, commits)}, "median_s": medians, "runs": runs}
        write_json(record, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a file by run_worker: bench/ is not a package here
        sys.path.pop(0)
    raise SystemExit(main())
