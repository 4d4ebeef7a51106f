"""Meta-training speed: meta-iterations per second with the fused kernels and with the pure-PyTorch
reference, and the peak memory of one meta-iteration (the unrolled inner loop and its backward).

    python3 -m bench.meta_train --quick
    python3 -m bench.meta_train --device cuda --data synthetic
    python3 -m bench.meta_train --cases all      # with the ResNet-12 cases (~20 more minutes on 2 cores)

Cases (SPEC defaults of learnedopt.algorithms for each task family; the numbers are stable):
  1-5: sine TURTLE (second order), sine meta-learner LSTM, and Omniglot 5-way 1-shot with a Conv4
  learner for the meta-learner LSTM, TURTLE and MAML (MAML uses no learned-optimizer op, so it is
  measured once, as the baseline);
  6: MetaLSTM++ (meta-batch 4) on Omniglot 5-way 1-shot; 7-8: Omniglot 20-way 1-shot MetaLSTM++
  and TURTLE, where Conv4's convolutions take a larger share; 9-10: ResNet-12 (~8.0 M parameters,
  learnedopt.backbones through from_module) on random 5-way 1-shot 84x84 RGB episodes, TURTLE and
  the enhanced LSTM, with bench.byom's protocol (meta-batch 1, one inner step), run only when
  asked for (--cases 9,10 or --cases all). A meta-iteration
  is what the training loop does: sample a meta-batch, meta_loss, backward, clip_meta_gradients,
  Adam step.
Omniglot images come from --data-root (default ../shared/data/omniglot next to the repository,
used only if it exists) or are random images of the same shape (--data synthetic); the output says
which.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import traceback
from pathlib import Path
from typing import NamedTuple

if __package__ in (None, ""):  # run as a file: import this checkout's bench and learnedopt
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench import machine, memory, results
from bench.timing import measure_interleaved
from learnedopt import ops
from learnedopt.tasks.base import TaskBatch
from learnedopt.train import meta_optimizer

DEFAULT_DATA_ROOT = machine.REPO_ROOT.parent / "shared" / "data" / "omniglot"
CACHE_DIR = Path(__file__).resolve().parent / ".cache"



class Case(NamedTuple):
    """A benchmark case: ``task`` is the task family ("sine", "omniglot" with ``ways``-way 1-shot
    Conv4 episodes, or "resnet12": bench.byom's ResNet-12 episodes); ``op`` is the learned-optimizer
    op the algorithm runs in its inner loop (None: measured once, on the reference backend)."""
    name: str
    task: str
    algorithm: str
    op: str | None
    ways: int = 5


CASES = (
    Case("sine TURTLE (SO)", "sine", "turtle", "turtle_step"),
    Case("sine meta-learner LSTM", "sine", "metalstm", "meta_lstm_step"),
    Case("Omniglot 5-way 1-shot meta-learner LSTM", "omniglot", "metalstm", "meta_lstm_step"),
    Case("Omniglot 5-way 1-shot TURTLE", "omniglot", "turtle", "turtle_step"),
    Case("Omniglot 5-way 1-shot MAML", "omniglot", "maml", None),
    Case("Omniglot 5-way 1-shot MetaLSTM++ (mb 4)", "omniglot", "metalstm++", "meta_lstm_step"),
    Case("Omniglot 20-way 1-shot MetaLSTM++ (mb 4)", "omniglot", "metalstm++", "meta_lstm_step", 20),
    Case("Omniglot 20-way 1-shot TURTLE", "omniglot", "turtle", "turtle_step", 20),
    Case("ResNet-12 5-way 1-shot TURTLE", "resnet12", "turtle", "turtle_step"),
    Case("ResNet-12 5-way 1-shot enhanced LSTM", "resnet12", "enhanced-lstm", "meta_lstm_step"),
)
# Without --cases: all but the ResNet-12 ones, whose iterations take 15-75 s each on 2 CPU cores
# (a run of both is ~20 minutes); "--cases all" adds them.
DEFAULT_CASES = tuple(case for case in CASES if case.task != "resnet12")
SHOTS, QUERIES = 1, 15
# Shortest timed sample, in seconds of back-to-back meta-iterations (about ten sine iterations,
# one Omniglot iteration). Measured on 2 cores: alternating the backends one sine iteration at a
# time made both ~1 ms slower than either runs alone, the fused one relatively more (sine TURTLE
# 6.0 / 10.3 ms interleaved vs 4.8 / 8.9 ms alone); blocks after an untimed iteration do not.
SAMPLE_S = 0.05


class SyntheticImageTasks:
    """Random 1×28×28 images in [0, 1] shaped like Omniglot N-way K-shot episodes: the same tensor
    shapes and therefore the same work per meta-iteration, without the data set."""
    kind = "classification"

    def __init__(self, ways: int, shots: int, queries: int, device: torch.device):
        self.num_classes, self.shots, self.queries, self.device = ways, shots, queries, device

    def config(self) -> dict:
        return {"task": "synthetic-images", "image_size": 28, "ways": self.num_classes,
                "shots": self.shots, "queries": self.queries}

    def sample(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        def part(per_class):
            x = torch.rand((batch_size, self.num_classes * per_class, 1, 28, 28), generator=generator)
            y = torch.arange(self.num_classes).repeat_interleave(per_class).expand(batch_size, -1)
            return x.to(self.device), y.contiguous().to(self.device)
        return TaskBatch(*part(self.shots), *part(self.queries))


def make_sampler(task: str, data: str, data_root: Path, device: torch.device, ways: int = 5):
    """(sampler, description of the data actually used)."""
    if task == "resnet12":
        from bench.byom import RESNET_TASKS, RandomEpisodes
        return (RandomEpisodes(*RESNET_TASKS),
                "random 3x84x84 images, 5-way 1-shot, 5 queries (bench.byom.RESNET_TASKS)")
    if task == "sine":
        from learnedopt.tasks.sine import SineTasks
        return SineTasks(device=device), "sine (SineTasks defaults)"
    if data != "synthetic":
        why = None
        if not data_root.is_dir():
            why = f"no Omniglot data at {data_root}"
        else:
            try:
                from learnedopt.tasks.omniglot import OmniglotTasks
            except ImportError as exc:
                why = f"learnedopt.tasks.omniglot is not importable ({exc})"
        if why is None:
            sampler = OmniglotTasks(data_root, ways=ways, shots=SHOTS, queries=QUERIES,
                                    cache_dir=CACHE_DIR, device=device)
            return sampler, f"real Omniglot from {data_root} ({ways}-way {SHOTS}-shot, {QUERIES} queries)"
        if data == "omniglot":
            raise SystemExit(f"--data omniglot: {why}")
        note = f"synthetic random 1x28x28 images ({why})"
    else:
        note = "synthetic random 1x28x28 images (--data synthetic)"
    return (SyntheticImageTasks(ways, SHOTS, QUERIES, device),
            f"{note}, {ways}-way {SHOTS}-shot, {QUERIES} queries")


def build(algorithm_name: str, task: str, device: torch.device, options: dict, ways: int = 5):
    """The algorithm with its SPEC defaults for the task family (Conv4: 64 filters, padding;
    ResNet-12: bench.byom's learner and protocol)."""
    from learnedopt.algorithms import build_algorithm
    from learnedopt.learners import MLP, Conv4
    if task == "resnet12":
        from bench.byom import resnet_algorithm
        return resnet_algorithm(algorithm_name, device, **options)
    torch.manual_seed(0)
    learner = MLP() if task == "sine" else Conv4(ways=ways, in_shape=(1, 28, 28), filters=64)
    algorithm = build_algorithm(algorithm_name, learner, **options).to(device)
    return algorithm, learner


def meta_iteration_fn(algorithm, sampler, backend: str):
    """One meta-iteration of ``algorithm`` under ``backend`` ("fused" or "reference"), as the
    training loop does it (learnedopt.train's meta-optimizer), with its own sampling generator."""
    optimizer = meta_optimizer(algorithm.parameters(), algorithm.outer_lr)
    generator = torch.Generator().manual_seed(0)

    def meta_iteration(_):
        with ops.use_backend(backend):
            batch = sampler.sample(algorithm.meta_batch_size, generator)
            loss, _ = algorithm.meta_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            algorithm.clip_meta_gradients()
            optimizer.step()

    return meta_iteration


def peak_bytes(meta_iteration, device) -> int:
    """Peak memory of one meta-iteration, after one that initialises Adam's state (kept out)."""
    meta_iteration(0)
    with memory.PeakMemory(device) as peak:
        meta_iteration(1)
    return peak.bytes


def benchmark(device, cases, data: str, data_root: Path, budget_s: float, min_samples: int,
              log=print, on_progress=None) -> tuple[list[dict], dict]:
    """Rows per (case, backend) and the data each task family used; ``on_progress(rows,
    data_used)`` runs after every case, so a run stopped by a time limit keeps them. The fused
    and the reference backend of a case are timed interleaved (bench.timing.measure_interleaved),
    so that their ratio does not depend on when each ran: in samples of at least SAMPLE_S of
    back-to-back meta-iterations, each after one untimed meta-iteration, so that what a switch
    between the two costs (a training run never switches) stays out of both."""
    rows, data_used = [], {}
    try:
        import learnedopt.algorithms  # noqa: F401
        import learnedopt.learners  # noqa: F401
        missing = None
    except ImportError as exc:
        missing = f"learnedopt.algorithms / learnedopt.learners are not importable yet ({exc})"
    samplers = {}
    for case, task, algorithm_name, op, ways in cases:
        backends = ["fused", "reference"] if op else ["none"]
        base = [{"case": case, "task": task, "algorithm": algorithm_name, "op": op,
                 "backend": backend, "what": f"{case} [{backend}]"} for backend in backends]
        if missing:
            rows += [{**row, "status": "skipped", "reason": missing} for row in base]
            continue
        if op and not ops.available(device, op):
            rows.append({**base[0], "status": "skipped",
                         "reason": f"no fused {op} kernel for {device.type} in this build"})
            base = base[1:]
        try:
            key = task if task != "omniglot" else f"omniglot {ways}-way"
            if key not in samplers:
                samplers[key], data_used[key] = make_sampler(task, data, data_root, device, ways)
            fns, peaks = {}, {}
            for row in base:
                backend = "reference" if row["backend"] == "none" else row["backend"]
                algorithm, learner = build(algorithm_name, task, device, {}, ways)
                fns[row["backend"]] = meta_iteration_fn(algorithm, samplers[key], backend)
                peaks[row["backend"]] = peak_bytes(fns[row["backend"]], device)
                described = {"learner_parameters": learner.num_params,
                             "options": _jsonable(algorithm.options())}
                gc.collect()
            timings = measure_interleaved(fns, device, budget_s=budget_s * len(fns),
                                          min_samples=min_samples, min_sample_s=SAMPLE_S,
                                          warmup_calls=1, switch_warmup_calls=1)
        except torch.OutOfMemoryError:
            rows += [{**row, "status": "skipped", "reason": "out of device memory"} for row in base]
            continue
        except Exception as exc:  # one failing case must not lose the others
            text = str(exc).strip().splitlines()
            reason = f"{type(exc).__name__}: {text[0][:300] if text else ''}"
            log(f"  {case}: {reason}")
            if os.environ.get("BENCH_TRACEBACK"):
                traceback.print_exc()
            rows += [{**row, "status": "error", "reason": reason} for row in base]
            continue
        finally:
            fns = algorithm = learner = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        for row in base:
            timing = timings[row["backend"]]
            rows.append({**row, "status": "ok", "timing": timing.as_dict(),
                         "meta_iterations_per_s": 1.0 / timing.median_s,
                         "peak_bytes": peaks[row["backend"]], **described,
                         "data": data_used[key]})
            log(f"  {row['what']}: {1.0 / timing.median_s:.3g} it/s "
                f"({results.spread(timing.as_dict())} per iteration, "
                f"peak {results.mebibytes(peaks[row['backend']])})")
        _add_speedups(rows)
        if on_progress:
            on_progress(rows, data_used)
    _add_speedups(rows)
    return rows, data_used


def _add_speedups(rows: list[dict]) -> None:
    fused = {r["case"]: r for r in rows if r["status"] == "ok" and r["backend"] == "fused"}
    for r in rows:
        if r["status"] == "ok" and r["backend"] == "reference" and r["case"] in fused:
            fused[r["case"]]["speedup_vs_reference"] = (r["timing"]["median_s"]
                                                        / fused[r["case"]]["timing"]["median_s"])


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def render_markdown(record: dict) -> str:
    rows = []
    for r in record["results"]:
        if r["status"] != "ok":
            continue
        o = r.get("options", {})
        protocol = (f"T={o.get('inner_steps', '?')}, mb={o.get('meta_batch_size', '?')}, "
                    f"{'FO' if o.get('first_order') else 'SO'}")
        rows.append([r["case"], r["backend"], protocol, f"{r['meta_iterations_per_s']:.3g}",
                     results.spread(r["timing"]), results.ratio(r.get("speedup_vs_reference")),
                     results.mebibytes(r["peak_bytes"])])
    data = "; ".join(f"{task}: {what}" for task, what in record["settings"]["data"].items()) or "none loaded"
    head = (f"**Meta-training, {record['device'].upper()}** — meta-iterations per second (sample "
            f"a meta-batch, meta-loss, backward, clip, Adam step), fused kernels vs the pure-PyTorch "
            f"reference; peak memory of one meta-iteration ({record['settings']['memory']}). "
            f"Data: {data}.")
    return head + "\n\n" + results.table(
        ["case", "backend", "protocol", "it/s", "time per iteration", "fused vs reference",
         "peak memory"], rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Meta-iterations per second and peak memory, fused kernels vs reference.",
        epilog="Example: python3 -m bench.meta_train --quick   "
               "(writes bench/results/meta_train-cpu-*.json)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--quick", action="store_true", help="short budgets: a few minutes on 2 cores")
    parser.add_argument("--data", choices=["auto", "omniglot", "synthetic"], default="auto",
                        help="Omniglot images: auto = real data if --data-root exists, else synthetic")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                        help=f"Omniglot release folder (default {DEFAULT_DATA_ROOT})")
    parser.add_argument("--cases", help=f"comma-separated case numbers 1..{len(CASES)}, or 'all' (default: all but the "
                        "ResNet-12 ones): "
                        + "; ".join(f"{i + 1}={c[0]}" for i, c in enumerate(CASES)))
    parser.add_argument("--budget", type=float, help="seconds of samples per case and backend (default 10, 2 with --quick)")
    parser.add_argument("--threads", type=int, help="torch threads on the CPU (default: all cores)")
    parser.add_argument("--out", type=Path, help="result file (default bench/results/...)")
    parser.add_argument("--label", help="a word saved with the result and in its file name")
    args = parser.parse_args(argv)
    args.cases = results.pick_cases(parser, args.cases, CASES, DEFAULT_CASES)
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    device = machine.setup_device(args.device, args.threads)
    budget = args.budget or (2.0 if args.quick else 10.0)
    min_samples = 3 if args.quick else 5
    record = machine.run_header("meta_train", device, argv)
    record["label"] = args.label
    print(f"# bench.meta_train on {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {record['date']}\n# command: {record['command']}\n"
          f"# {ops.describe()}")
    path = args.out or results.default_path(record, args.label)

    def save(rows, data_used, complete=False):
        record["settings"] = {"budget_s": budget, "min_samples": min_samples, "quick": args.quick,
                              "data": data_used, "memory": memory.METHOD[device.type],
                              "learners": "sine: MLP 1-40-40-1; Omniglot: Conv4, 64 filters, padding 1; "
                                          "resnet12: learnedopt.backbones.resnet12 (from_module)"}
        record["results"], record["complete"] = rows, complete
        results.write_json(record, path)

    rows, data_used = benchmark(device, args.cases, args.data, args.data_root, budget, min_samples,
                                on_progress=save)
    save(rows, data_used, complete=True)
    print("\n" + results.render(record) + f"\n\nwrote {path}")
    return path


if __name__ == "__main__":
    main()
