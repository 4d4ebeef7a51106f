"""Bring your own model: what the generic learner (learnedopt.learners.from_module) costs, and what
the fused rules are worth on a real backbone.

    python3 -m bench.byom --quick
    python3 -m bench.byom --part resnet12

Two parts:
  learner   meta-iterations of the same algorithm on the built-in learner (MLP, Conv4) and on the
            same network written as a user's nn.Module (tests/user_models.py shapes), fused
            kernels, timed interleaved: the generic path's overhead, "nn.Module vs built-in".
  resnet12  ResNet-12 (learnedopt.backbones, ~8.0 M parameters) on 5-way 1-shot 84×84 RGB
            episodes: MAML, Meta-SGD, TURTLE and the enhanced LSTM, fused vs the pure-PyTorch
            reference (interleaved) and the peak memory of one meta-iteration.
Images are random (the work per meta-iteration depends on the shapes only). A meta-iteration is
what the training loop does: sample a meta-batch, meta_loss, backward, clip, Adam step.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import this checkout's bench and learnedopt
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from bench import machine, memory, results
from bench.meta_train import meta_iteration_fn, peak_bytes
from bench.timing import measure_interleaved
from learnedopt import ops
from learnedopt.tasks.base import TaskBatch

SAMPLE_S = 0.05


class RandomEpisodes:
    """Random images in [0, 1] shaped like N-way K-shot episodes (C×S×S), or sine-like regression
    tasks (channels 0): the tensor shapes, hence the work, of the real data."""

    def __init__(self, ways: int, shots: int, queries: int, channels: int, side: int):
        self.ways, self.shots, self.queries, self.channels, self.side = ways, shots, queries, channels, side

    def sample(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        def part(per_class):
            if self.channels == 0:
                x = torch.rand((batch_size, per_class, 1), generator=generator) * 10 - 5
                return x, torch.sin(x)
            x = torch.rand((batch_size, self.ways * per_class, self.channels, self.side, self.side),
                           generator=generator)
            y = torch.arange(self.ways).repeat_interleave(per_class).expand(batch_size, -1)
            return x, y.contiguous()
        return TaskBatch(*part(self.shots), *part(self.queries))


def _sine_module() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))


def _conv4_module(filters: int = 64, ways: int = 5) -> nn.Module:
    layers: list[nn.Module] = []
    for k in range(4):
        layers += [nn.Conv2d(1 if k == 0 else filters, filters, 3, padding=1),
                   nn.BatchNorm2d(filters), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(filters, ways))


def _learners(kind: str):
    """(built-in learner, the same network as a user nn.Module learner)."""
    from learnedopt.learners import MLP, Conv4, from_module
    torch.manual_seed(0)
    if kind == "sine":
        return MLP(), from_module(_sine_module(), loss="mse", head="4")
    return (Conv4(ways=5, in_shape=(1, 28, 28), filters=64),
            from_module(_conv4_module(), loss="cross_entropy", head="17", task_family="omniglot"))


# (case, tasks (ways, shots, queries, channels, side), algorithm, options)
LEARNER_CASES = (
    ("sine TURTLE (SO)", "sine", (1, 10, 10, 0, 0), "turtle", {}),
    ("Omniglot 5-way 1-shot TURTLE (SO)", "conv4", (5, 1, 15, 1, 28), "turtle", {}),
    ("Omniglot 5-way 1-shot meta-learner LSTM", "conv4", (5, 1, 15, 1, 28), "metalstm", {}),
    ("Omniglot 5-way 1-shot MAML", "conv4", (5, 1, 15, 1, 28), "maml", {"meta_batch_size": 8}),
)
# ResNet-12 protocol: 5-way 1-shot, 5 queries per class, meta-batch 1, INNER_STEPS steps: short
# enough for a CPU, the same for both backends.
RESNET_TASKS = (5, 1, 5, 3, 84)
RESNET_CHANNELS = (64, 128, 256, 512)
RESNET_ALGORITHMS = (("maml", None), ("metasgd", None), ("turtle", "turtle_step"),
                     ("enhanced-lstm", "meta_lstm_step"))


def resnet_algorithm(name: str, device, channels=RESNET_CHANNELS, inner_steps: int = 1, **options):
    """(algorithm, learner): ``name`` on ResNet-12 (learnedopt.backbones through from_module) with
    this file's protocol (meta-batch 1, ``inner_steps`` inner steps); bench.meta_train's ResNet-12
    cases use it too."""
    from learnedopt.algorithms import build_algorithm
    from learnedopt.backbones import resnet12
    from learnedopt.learners import from_module
    torch.manual_seed(0)
    learner = from_module(resnet12(ways=5, channels=channels), head="head", task_family="images")
    algorithm = build_algorithm(name, learner, **{"meta_batch_size": 1, "inner_steps": inner_steps,
                                                  **options}).to(device)
    return algorithm, learner


def _run_case(rows, base, build_fns, device, budget_s, min_samples, log):
    """Time the variants of one case interleaved; append one row per variant (or the reason)."""
    fns = peaks = None
    try:
        fns, peaks, described = build_fns()
        timings = measure_interleaved(fns, device, budget_s=budget_s * len(fns),
                                      min_samples=min_samples, min_sample_s=SAMPLE_S,
                                      warmup_calls=1, switch_warmup_calls=1)
    except Exception as exc:  # one failing case must not lose the others
        text = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {text[0][:300] if text else ''}"
        log(f"  {base[0]['case']}: {reason}")
        if os.environ.get("BENCH_TRACEBACK"):
            traceback.print_exc()
        rows += [{**row, "status": "error", "reason": reason} for row in base]
        return
    finally:
        fns = None
        gc.collect()
    for row in base:
        timing = timings[row["variant"]]
        rows.append({**row, "status": "ok", "timing": timing.as_dict(),
                     "meta_iterations_per_s": 1.0 / timing.median_s,
                     "peak_bytes": peaks[row["variant"]], **described[row["variant"]]})
        log(f"  {row['what']}: {results.spread(timing.as_dict())} per iteration, "
            f"peak {results.mebibytes(peaks[row['variant']])}")


def learner_part(device, cases, budget_s, min_samples, log, on_progress):
    from learnedopt.algorithms import build_algorithm
    rows: list[dict] = []
    for case, kind, shape, name, options in cases:
        base = [{"part": "learner", "case": case, "algorithm": name, "variant": variant,
                 "backend": "fused", "what": f"{case} [{variant}]"} for variant in ("built-in", "nn.Module")]

        def build_fns():
            fns, peaks, described = {}, {}, {}
            for variant, learner in zip(("built-in", "nn.Module"), _learners(kind)):
                torch.manual_seed(0)
                algorithm = build_algorithm(name, learner, **options).to(device)
                fns[variant] = meta_iteration_fn(algorithm, RandomEpisodes(*shape), "auto")
                peaks[variant] = peak_bytes(fns[variant], device)
                described[variant] = {"learner_parameters": learner.num_params,
                                      "options": _jsonable(algorithm.options())}
            return fns, peaks, described

        _run_case(rows, base, build_fns, device, budget_s, min_samples, log)
        _ratios(rows, "nn.Module", "built-in", "vs_builtin")
        on_progress(rows)
    return rows


def resnet_part(device, algorithms, channels, budget_s, min_samples, inner_steps, log, on_progress):
    rows: list[dict] = []
    for name, op in algorithms:
        case = f"ResNet-12 5-way 1-shot {name}"
        backends = ("fused", "reference") if op else ("none",)
        base = [{"part": "resnet12", "case": case, "algorithm": name, "variant": backend,
                 "backend": backend, "op": op, "what": f"{case} [{backend}]"} for backend in backends]

        def build_fns():
            fns, peaks, described = {}, {}, {}
            for backend in backends:
                algorithm, learner = resnet_algorithm(name, device, channels, inner_steps)
                fns[backend] = meta_iteration_fn(algorithm, RandomEpisodes(*RESNET_TASKS),
                                                 "reference" if backend == "none" else backend)
                peaks[backend] = peak_bytes(fns[backend], device)
                described[backend] = {"learner_parameters": learner.num_params,
                                      "options": _jsonable(algorithm.options())}
                gc.collect()
            return fns, peaks, described

        _run_case(rows, base, build_fns, device, budget_s, min_samples, log)
        _ratios(rows, "fused", "reference", "speedup_vs_reference", invert=True)
        on_progress(rows)
    return rows


def _ratios(rows, numerator: str, denominator: str, key: str, invert: bool = False) -> None:
    """time(numerator) / time(denominator) per case (or its inverse, a speed-up)."""
    by_case: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["status"] == "ok":
            by_case.setdefault(r["case"], {})[r["variant"]] = r
    for variants in by_case.values():
        if numerator in variants and denominator in variants:
            value = variants[numerator]["timing"]["median_s"] / variants[denominator]["timing"]["median_s"]
            variants[numerator][key] = 1.0 / value if invert else value


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def _protocol(o: dict) -> str:
    return (f"T={o.get('inner_steps', '?')}, mb={o.get('meta_batch_size', '?')}, "
            f"{'FO' if o.get('first_order') else 'SO'}")


def render_markdown(record: dict) -> str:
    ok = [r for r in record["results"] if r["status"] == "ok"]
    parts = []
    learner_rows = [[r["case"], r["variant"], _protocol(r.get("options", {})),
                     results.spread(r["timing"]), results.ratio(r.get("vs_builtin")),
                     results.mebibytes(r["peak_bytes"])] for r in ok if r["part"] == "learner"]
    if learner_rows:
        parts.append(
            f"**Bring your own model: the generic learner, {record['device'].upper()}** — the same "
            "algorithm and network as the built-in learner and as a user's `nn.Module` "
            "(`learnedopt.learners.from_module`), fused kernels, timed interleaved; time per "
            "meta-iteration, the nn.Module's time relative to the built-in's, peak memory.\n\n"
            + results.table(["case", "learner", "protocol", "time per iteration",
                             "nn.Module vs built-in", "peak memory"], learner_rows))
    resnet_rows = [[r["case"], r["backend"], _protocol(r.get("options", {})),
                    f"{r.get('learner_parameters', 0) / 1e6:.2f} M", results.spread(r["timing"]),
                    results.ratio(r.get("speedup_vs_reference")), results.mebibytes(r["peak_bytes"])]
                   for r in ok if r["part"] == "resnet12"]
    if resnet_rows:
        ways, shots, queries, channels, side = RESNET_TASKS
        parts.append(
            f"**ResNet-12, {record['device'].upper()}** — {ways}-way {shots}-shot, {queries} "
            f"queries per class, {channels}×{side}×{side} images, one meta-iteration (fused "
            "kernels vs the pure-PyTorch reference, interleaved) and its peak memory.\n\n"
            + results.table(["case", "backend", "protocol", "parameters", "time per iteration",
                             "fused vs reference", "peak memory"], resnet_rows))
    return "\n\n".join(parts) if parts else "No case completed."


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="writes bench/results/byom-<device>-*.json")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--part", choices=("all", "learner", "resnet12"), default="all")
    parser.add_argument("--quick", action="store_true", help="short budgets")
    parser.add_argument("--budget", type=float, help="seconds of samples per variant (default 10, 2 with --quick)")
    parser.add_argument("--inner-steps", type=int, default=1,
                        help="ResNet-12 inner steps, both backends (default 1)")
    parser.add_argument("--cases", help="learner part: comma-separated case numbers (default all): "
                        + "; ".join(f"{i + 1}={c[0]}" for i, c in enumerate(LEARNER_CASES)))
    parser.add_argument("--algorithms", help="ResNet-12 part: comma-separated algorithms (default "
                        + ",".join(name for name, _ in RESNET_ALGORITHMS) + ")")
    parser.add_argument("--resnet-channels", default=",".join(map(str, RESNET_CHANNELS)),
                        help="ResNet-12 widths (default 64,128,256,512; smaller only for checks)")
    parser.add_argument("--threads", type=int, help="torch threads on the CPU (default: all cores)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--label")
    args = parser.parse_args(argv)
    args.cases = results.pick_cases(parser, args.cases, LEARNER_CASES)
    known = dict(RESNET_ALGORITHMS)
    names = args.algorithms.split(",") if args.algorithms else list(known)
    if any(n not in known for n in names):
        parser.error(f"--algorithms: expected some of {sorted(known)}, got {args.algorithms!r}")
    args.algorithms = [(n, known[n]) for n in names]
    try:
        args.resnet_channels = tuple(int(c) for c in args.resnet_channels.split(","))
    except ValueError:
        parser.error(f"--resnet-channels: expected four integers, got {args.resnet_channels!r}")
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    device = machine.setup_device(args.device, args.threads)
    budget = args.budget or (2.0 if args.quick else 10.0)
    min_samples = 3 if args.quick else 5
    record = machine.run_header("byom", device, argv)
    record["label"] = args.label
    print(f"# bench.byom on {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{record['date']}\n# command: {record['command']}\n# {ops.describe()}")
    path = args.out or results.default_path(record, args.label)
    done: list[dict] = []

    def save(rows, complete=False):
        record["settings"] = {"budget_s": budget, "min_samples": min_samples, "quick": args.quick,
                              "memory": memory.METHOD[device.type], "resnet_tasks": RESNET_TASKS,
                              "resnet_inner_steps": args.inner_steps,
                              "resnet_channels": list(args.resnet_channels)}
        record["results"], record["complete"] = done + rows, complete
        results.write_json(record, path)

    if args.part in ("all", "learner"):
        done += learner_part(device, args.cases, budget, min_samples, print, save)
    if args.part in ("all", "resnet12"):
        done += resnet_part(device, args.algorithms, args.resnet_channels, budget, min_samples,
                            args.inner_steps, print, save)
    save([], complete=True)
    print("\n" + results.render(record) + f"\n\nwrote {path}")
    return path


if __name__ == "__main__":
    main()
