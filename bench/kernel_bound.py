"""Where a fused CPU forward's time goes: the kernel against the call. For 1 and 2 threads, the
FMA probe's rate at that thread count, then per n the forward's counted FLOP rate as a fraction of
it, for the functional op (fresh outputs every call, as `bench.ops` times it) and, for the LSTM,
`meta_lstm_step_inplace` (the same kernel writing into the state it reads: no output allocation,
so no page faults of fresh memory). The gap between the two is allocation; what is left below the
instruction-mix bound (bench/instruction_mix/README.md) is the kernel's own.

Each row is bracketed by a short FMA probe before and after it. On a shared machine a burst of
other work slows a timing by up to 2x within a minute; the probe, which touches no memory, slows
with it. A row whose bracketing probes fall more than 10 % below the best probe of its thread count
is marked noisy (`quiet: false`), and every fraction is taken against that best probe, the
hardware's rate, not a depressed one.

    python3 -m bench.kernel_bound [--sizes 1e4,1e5,1e6] [--budget 0.5] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

from bench.machine import (cpu_model, cpu_simd_path, host_simd_path, load_average, measure_cpu_fma_peak,
                           performance_environment)
from bench.ops import meta_lstm_forward_flop, turtle_forward_flop
from bench.quick_meta_lstm import make_inputs
from bench.results import RESULTS_DIR, write_json
from bench.timing import measure
from bench.turtle_host import paper_net


# A row is quiet when both probes around it reach this share of the best probe.
QUIET_PROBE_SHARE = 0.9
BRACKET_PROBE_BUDGET_S = 0.2


def rows_for(n: int, budget: float) -> list[dict]:
    device = torch.device("cpu")
    gen = torch.Generator().manual_seed(n)
    rows = []
    x = make_inputs(n, 20, 4, seed=n)
    lstm = torch.ops.learnedopt.meta_lstm_step
    inplace = torch.ops.learnedopt.meta_lstm_step_inplace
    flop = meta_lstm_forward_flop(20, 4) * n
    with torch.no_grad():
        theta, grad, m, alpha = (torch.randn(n, generator=gen) for _ in range(4))
        weights, biases = paper_net(gen)
        turtle = torch.ops.learnedopt.turtle_step
        calls = [("meta_lstm_step", "functional", flop, lambda i: lstm(*x, 10.0, 0.0, False)),
                 ("meta_lstm_step", "inplace", flop, lambda i: inplace(*x, 10.0, 0.0, False)),
                 ("turtle_step", "functional", turtle_forward_flop([3, 20, 20, 20, 20, 20, 1]) * n,
                  lambda i: turtle(theta, grad, m, 1, alpha, weights, biases, 0.9, 10.0))]
        for op, call, op_flop, fn in calls:
            # One probe run, not the best of several: a best-of would pick the one time slice in
            # which the other work was descheduled and so hide the contention it is there to see.
            before, _ = measure_cpu_fma_peak(BRACKET_PROBE_BUDGET_S, repeats=1)
            median_s = measure(fn, device, budget).median_s
            after, _ = measure_cpu_fma_peak(BRACKET_PROBE_BUDGET_S, repeats=1)
            rows.append({"op": op, "call": call, "n": n, "flop": op_flop, "median_s": median_s,
                         "probe_before_flop_per_s": before, "probe_after_flop_per_s": after})
    return rows


def bracket_probes(row: dict) -> list[float]:
    """The probes measured just before and after the row (none where the probe is not built)."""
    return [p for p in (row.get("probe_before_flop_per_s"), row.get("probe_after_flop_per_s")) if p]


def judge(row: dict, best_probe: float | None) -> dict:
    """The row's rate against the best probe seen at its thread count, and whether the probes
    around it say the machine was quiet while it ran."""
    bracket = bracket_probes(row)
    row["flop_per_s"] = row["flop"] / row["median_s"]
    row["probe_flop_per_s"] = best_probe
    row["probe_fraction"] = row["flop_per_s"] / best_probe if best_probe else None
    row["quiet"] = (bool(bracket) and best_probe is not None
                    and min(bracket) >= QUIET_PROBE_SHARE * best_probe)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e4,1e5,1e6")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    try:
        sizes = [int(float(s)) for s in args.sizes.split(",")]
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error("--sizes and --threads take comma-separated numbers")
    if any(n < 1 for n in sizes) or any(t < 1 for t in threads):
        parser.error("--sizes and --threads must be >= 1")
    import learnedopt  # noqa: F401  (registers the ops)
    results = []
    print("| threads | op | call | n | time | GFLOP/s | of the probe | quiet |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for t in threads:
        torch.set_num_threads(t)
        peak, _ = measure_cpu_fma_peak(1.0)
        rows = [dict(row, threads=t) for n in sizes for row in rows_for(n, args.budget)]
        # The best probe of this thread count, bracketing ones included: a burst during the first
        # probe must not make every later fraction look better than the hardware allows.
        probes = [p for r in rows for p in bracket_probes(r)]
        best = max(probes + ([peak] if peak else []), default=None)
        for row in rows:
            judge(row, best)
            results.append(row)
            print(f"| {t} | `{row['op']}` | {row['call']} | {row['n']:.0e} | {row['median_s'] * 1e3:.3g} ms "
                  f"| {row['flop_per_s'] / 1e9:.1f} | {100 * (row['probe_fraction'] or 0):.1f} % "
                  f"| {'yes' if row['quiet'] else 'no (noisy)'} |")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    record = {"benchmark": "kernel_bound", "date": stamp,
              "command": "python3 -m bench.kernel_bound " + " ".join(sys.argv[1:] if argv is None else argv),
              "cpu_model": cpu_model(), "simd_path": cpu_simd_path(), "host_simd_path": host_simd_path(), "load_average": load_average(),
              "environment": performance_environment(),
              "results": results}
    path = write_json(record, args.out or RESULTS_DIR / "ab" / f"kernel_bound-{stamp}.json")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
