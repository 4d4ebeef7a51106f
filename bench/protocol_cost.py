"""What the stress test's full protocol costs: per-meta-iteration and per-evaluation-task times of
the five algorithms at a few ways (1-shot, the protocol's options), and from them the CPU-hours
(and, without a GPU to measure on, an estimated GPU-hours range) of the whole experiment.

    python3 -m bench.protocol_cost --data-root ../shared/data/omniglot \
        --out results/stress-test/protocol_cost.json --markdown results/stress-test/protocol_cost.md

Each case: one warm-up meta-iteration, then ``--iterations`` timed ones (wall clock and this
process's CPU time: on a shared machine the wall time includes waiting for a core, the CPU time
does not), and ``--eval-tasks`` meta-test tasks adapted in one batch. A full run of the protocol
is 20,000 meta-iterations, a validation on 300 tasks every 250 iterations (81 of them, counting
the one at the end) and 300 meta-test tasks; the ways not measured are extrapolated linearly in
the ways from the measured ones (cost per iteration grows with the images per task).

GPU: with ``--device cuda`` the same measurement runs on a GPU. On the CPU the script also counts,
for one meta-iteration, the tensor operations dispatched (each is at least one kernel launch on a
GPU) and the FLOPs of the convolutions and matmuls, and turns them into a GPU-time range that is
an estimate, not a measurement: at most ``--launch-us`` per operation (launch-bound, a small conv
net's regime) plus the FLOPs at ``--gpu-tflops`` effective.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from bench.machine import run_header
from learnedopt import experiment, protocols
from learnedopt.train import meta_optimizer

FULL = {"iterations": 20000, "val_every": 250, "val_tasks": 300, "test_tasks": 300}


class _OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched (the fused extension ops count once each)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def build_case(algorithm: str, ways: int, data_root: str, device: str, cache_dir: str | None):
    protocol = protocols.get_protocol("stress-test")
    spec = {"name": "omniglot", "data_root": data_root, **protocol.task_spec(ways, 1)}
    if cache_dir:
        spec["cache_dir"] = cache_dir
    sampler = experiment.build_sampler(spec, device)
    torch.manual_seed(0)
    learner = experiment.build_learner(experiment.default_learner_spec(spec, sampler), sampler)
    algorithm_obj = experiment.build_algorithm(algorithm, learner,
                                               protocol.algorithm_options(algorithm), sampler)
    return sampler, algorithm_obj.to(device)


def time_case(sampler, algorithm, iterations: int, eval_tasks: int, device: str,
              count_ops: bool) -> dict:
    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
    optimizer = meta_optimizer(algorithm.parameters(), algorithm.outer_lr)
    generator = torch.Generator(device=sampler.device).manual_seed(0)

    def step():
        batch = sampler.sample(algorithm.meta_batch_size, generator)
        loss, _ = algorithm.meta_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        algorithm.clip_meta_gradients()
        optimizer.step()

    step()  # warm-up: allocator growth, Adam state
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iterations):
        step()
    sync()
    iteration_wall = (time.perf_counter() - wall) / iterations
    iteration_cpu = (time.process_time() - cpu) / iterations

    batch = next(iter(sampler.fixed_tasks("test", eval_tasks, eval_tasks, 0)))
    algorithm.eval()
    algorithm.adapt_and_evaluate(batch)  # warm-up
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    algorithm.adapt_and_evaluate(batch)
    sync()
    task_wall = (time.perf_counter() - wall) / eval_tasks
    task_cpu = (time.process_time() - cpu) / eval_tasks
    algorithm.train()
    record = {"iteration_wall_s": iteration_wall, "iteration_cpu_s": iteration_cpu,
              "eval_task_wall_s": task_wall, "eval_task_cpu_s": task_cpu,
              "iterations_timed": iterations, "eval_tasks_timed": eval_tasks}
    if count_ops:
        ops, flops = _OpCounter(), FlopCounterMode(display=False)
        with flops, ops:
            step()
        record["ops_per_iteration"] = ops.count
        record["flops_per_iteration"] = flops.get_total_flops()
        ops, flops = _OpCounter(), FlopCounterMode(display=False)
        algorithm.eval()
        with flops, ops:
            algorithm.adapt_and_evaluate(batch)
        algorithm.train()
        record["ops_per_eval_batch"] = ops.count
        record["flops_per_eval_task"] = flops.get_total_flops() / eval_tasks
    return record


def full_run_seconds(iteration_s: float, task_s: float) -> float:
    validations = FULL["iterations"] // FULL["val_every"] + 1
    return (FULL["iterations"] * iteration_s
            + (validations * FULL["val_tasks"] + FULL["test_tasks"]) * task_s)


def extrapolate(points: dict[int, float], ways: int) -> float:
    """Least-squares line through (ways, value) evaluated at ``ways`` (exact at measured ones)."""
    if ways in points:
        return points[ways]
    xs, ys = list(points), list(points.values())
    if len(xs) == 1:
        return ys[0] * ways / xs[0]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return max(my + slope * (ways - mx), min(ys))


def estimate(cases: list[dict], launch_us: float, gpu_tflops: float, device: str) -> dict:
    by_algorithm: dict[str, dict[int, dict]] = {}
    for case in cases:
        by_algorithm.setdefault(case["algorithm"], {})[case["ways"]] = case
    runs, total_cpu, total_gpu_low, total_gpu_high = [], 0.0, 0.0, 0.0
    for algorithm, per_ways in by_algorithm.items():
        for ways in protocols.STRESS_TEST_WAYS:
            def value(key):
                return extrapolate({w: c[key] for w, c in per_ways.items() if key in c}, ways)
            seconds = full_run_seconds(value("iteration_cpu_s" if device == "cpu" else
                                             "iteration_wall_s"),
                                       value("eval_task_cpu_s" if device == "cpu" else
                                             "eval_task_wall_s"))
            run = {"algorithm": algorithm, "ways": ways, "measured": ways in per_ways,
                   ("cpu_hours" if device == "cpu" else "gpu_hours_measured"): seconds / 3600}
            if device == "cpu" and "ops_per_iteration" in next(iter(per_ways.values())):
                launch = full_run_seconds(value("ops_per_iteration") * launch_us * 1e-6,
                                          value("ops_per_eval_batch") * launch_us * 1e-6
                                          / next(iter(per_ways.values()))["eval_tasks_timed"])
                compute = full_run_seconds(value("flops_per_iteration") / (gpu_tflops * 1e12),
                                           value("flops_per_eval_task") / (gpu_tflops * 1e12))
                run["gpu_hours_estimate"] = [max(launch, compute) / 3600,
                                             (launch + compute) / 3600]
                total_gpu_low += run["gpu_hours_estimate"][0]
                total_gpu_high += run["gpu_hours_estimate"][1]
            total_cpu += seconds / 3600
            runs.append(run)
    totals = {("cpu_hours" if device == "cpu" else "gpu_hours_measured"): total_cpu,
              "runs": len(runs)}
    if total_gpu_high:
        totals["gpu_hours_estimate"] = [total_gpu_low, total_gpu_high]
    # Table 1 adds the 20-way 5-shot column: 5 more runs, about 5 x the 20-way 1-shot images per
    # task, so roughly the cost of the 100-way 1-shot runs.
    return {"full_protocol": FULL, "runs": runs, "totals_stress_test": totals}


def render_markdown(record: dict) -> str:
    device = record["device"]
    lines = [f"# Cost of the stress test's full protocol ({record['date']})", "",
             f"Measured with `{record['command']}` on {record['machine'].get('cpu') or device}"
             + (" — a **shared, loaded** 2-core machine (other jobs running, load average "
                f"{record['machine'].get('load_average')}), process niced: the wall times are "
                "inflated by waiting for a core; the CPU time (this process only, one thread) is "
                "the work itself." if device == "cpu" else "."), "",
             "| algorithm | ways | meta-iteration wall | meta-iteration CPU | eval task wall | "
             "eval task CPU | ops / iteration | GFLOP / iteration |",
             "|---|---|---|---|---|---|---|---|"]
    for c in record["cases"]:
        lines.append(f"| {c['algorithm']} | {c['ways']} | {c['iteration_wall_s']:.2f} s | "
                     f"{c['iteration_cpu_s']:.2f} s | {c['eval_task_wall_s'] * 1e3:.0f} ms | "
                     f"{c['eval_task_cpu_s'] * 1e3:.0f} ms | {c.get('ops_per_iteration', '—')} | "
                     + (f"{c['flops_per_iteration'] / 1e9:.1f}" if 'flops_per_iteration' in c
                        else "—") + " |")
    est = record["estimate"]
    full = est["full_protocol"]
    lines += ["", f"One full run: {full['iterations']} meta-iterations, validation on "
              f"{full['val_tasks']} tasks every {full['val_every']}, {full['test_tasks']} "
              f"meta-test tasks. Ways not measured are extrapolated linearly.", "",
              "| algorithm | ways | " + ("CPU-hours (one thread)" if device == "cpu" else
                                        "GPU-hours (measured)")
              + (" | GPU-hours (estimate, range)" if device == "cpu" else "") + " |",
              "|---|---|---|" + ("---|" if device == "cpu" else "")]
    for r in est["runs"]:
        hours = r.get("cpu_hours", r.get("gpu_hours_measured"))
        gpu = r.get("gpu_hours_estimate")
        lines.append(f"| {r['algorithm']} | {r['ways']}{'' if r['measured'] else ' (extrap.)'} | "
                     f"{hours:.1f} |" + (f" {gpu[0]:.2f} – {gpu[1]:.2f} |" if gpu else ""))
    t = est["totals_stress_test"]
    lines += ["", f"**Whole stress test ({t['runs']} runs):** "
              + (f"{t['cpu_hours']:.0f} CPU-hours on one thread of this machine"
                 if "cpu_hours" in t else f"{t['gpu_hours_measured']:.1f} GPU-hours measured")
              + (f"; estimated {t['gpu_hours_estimate'][0]:.1f} – {t['gpu_hours_estimate'][1]:.1f}"
                 f" GPU-hours (not measured: {record['gpu_model']})"
                 if "gpu_hours_estimate" in t else "") + "."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True)
    p.add_argument("--cache-dir")
    p.add_argument("--algorithms", nargs="+", default=list(protocols.STRESS_TEST_ALGORITHMS))
    p.add_argument("--ways", nargs="+", type=int, default=[20, 50, 100])
    p.add_argument("--iterations", type=int, default=3, help="timed meta-iterations per case")
    p.add_argument("--eval-tasks", type=int, default=10, help="timed meta-test tasks per case")
    p.add_argument("--device", default="cpu")
    p.add_argument("--launch-us", type=float, default=10.0,
                   help="GPU estimate: microseconds per dispatched operation (default: 10)")
    p.add_argument("--gpu-tflops", type=float, default=20.0,
                   help="GPU estimate: effective TFLOP/s of the convolutions (default: 20)")
    p.add_argument("--out", type=Path, required=True, help="JSON to write")
    p.add_argument("--markdown", type=Path, help="Markdown summary to write")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1) if args.device == "cpu" else None
    record = run_header("protocol_cost", torch.device(args.device),
                        sys.argv[1:] if argv is None else argv)
    record["gpu_model"] = (f"launch-bound at {args.launch_us} us per operation, compute at "
                           f"{args.gpu_tflops} TFLOP/s effective")
    record["cases"] = []
    for ways in args.ways:
        for algorithm in args.algorithms:
            sampler, algo = build_case(algorithm, ways, args.data_root, args.device, args.cache_dir)
            case = {"algorithm": algorithm, "ways": ways,
                    **time_case(sampler, algo, args.iterations, args.eval_tasks, args.device,
                                count_ops=args.device == "cpu")}
            record["cases"].append(case)
            print(json.dumps(case), flush=True)
            record["estimate"] = estimate(record["cases"], args.launch_us, args.gpu_tflops,
                                          args.device)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(record, indent=2) + "\n")  # partial results survive
            if args.markdown:
                args.markdown.write_text(render_markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
