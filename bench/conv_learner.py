"""The learner side of conv-heavy meta-training (issue 15, item 5): one meta-iteration on 3×84×84
image tasks with the package's Conv4 learner against the straightforward eager version a user
would write — an ``nn.Module`` Conv4 (nn.Conv2d, nn.BatchNorm2d, ReLU, MaxPool2d, Linear) called
task by task with its fast weights through ``torch.func.functional_call``, the same inner loop and
meta-loss, and the package's own update rule run on its pure-PyTorch reference
(``learnedopt.reference`` via ``ops.use_backend("reference")``), so only the learner side differs.

    python3 -m bench.conv_learner --quick
    python3 -m bench.conv_learner --cases 1 --budget 60

Cases (synthetic random images; there is no miniImageNet here, and the work per iteration
depends only on the shapes):
  1. TURTLE, second order, 5-way 1-shot, Conv4-64, 16 queries per class, T = 5, meta-batch 2;
  2. the meta-learner LSTM (Ravi & Larochelle's setting), 5-way 5-shot, Conv4-32, T = 8,
     meta-batch 1, 16 queries per class;
  3. the same, 1-shot.
Variants, timed interleaved sample by sample (bench.timing.measure_interleaved): "eager" (the
baseline), "package fused" and "package reference" (learnedopt.algorithms with the package's
Conv4, fused and reference backends). A meta-iteration: meta-loss, backward, clip, Adam step.
"""

from __future__ import annotations

import argparse
import gc
import sys
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import this checkout's bench and learnedopt
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn

from bench import machine, results
from bench.timing import measure_interleaved
from learnedopt import ops
from learnedopt.tasks.base import TaskBatch
from learnedopt.train import meta_optimizer

# (case, algorithm, shots, filters, options beyond the algorithm's SPEC defaults for images)
CASES = (
    ("TURTLE SO 5-way 1-shot Conv4-64", "turtle", 1, 64, {}),
    ("meta-learner LSTM 5-way 5-shot Conv4-32", "metalstm", 5, 32,
     {"inner_steps": 8, "test_inner_steps": 8}),
    ("meta-learner LSTM 5-way 1-shot Conv4-32", "metalstm", 1, 32,
     {"inner_steps": 8, "test_inner_steps": 8}),
)
WAYS, QUERIES, IMAGE = 5, 16, (3, 84, 84)
VARIANTS = ("eager", "package fused", "package reference")


class EagerConv4(nn.Module):
    """The plain nn.Module Conv4: 4 × [Conv2d 3×3, BatchNorm2d (batch statistics), ReLU,
    MaxPool2d 2] and a Linear head, its parameter names those of learnedopt's Conv4 layout."""

    def __init__(self, ways: int, in_shape=IMAGE, filters: int = 64, padding: bool = True):
        super().__init__()
        channels, height, width = in_shape
        for k in range(4):
            setattr(self, f"conv{k}", nn.Conv2d(channels, filters, 3, padding=int(padding)))
            setattr(self, f"bn{k}", nn.BatchNorm2d(filters, track_running_stats=False))
            channels = filters
            height, width = (height - (0 if padding else 2)) // 2, (width - (0 if padding else 2)) // 2
        self.head = nn.Linear(filters * height * width, ways)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        for k in range(4):
            x = self.pool(torch.relu(getattr(self, f"bn{k}")(getattr(self, f"conv{k}")(x))))
        return self.head(x.flatten(1))


def eager_meta_loss(algorithm, module: nn.Module, batch: TaskBatch) -> torch.Tensor:
    """The meta-loss of ``algorithm`` written plainly: each task on its own, its fast weights
    a dict of views of theta fed to the module with functional_call, the rule's step (the
    algorithm's _step, run under whatever ops backend is active) on the flat vector."""
    layout, steps = algorithm.learner.layout, algorithm.options()["inner_steps"]
    second_order = not algorithm.first_order
    losses = []
    for b in range(batch.num_tasks):
        x, y = batch.x_support[b], batch.y_support[b]
        theta = algorithm.theta0.unsqueeze(0)
        state = algorithm._init_state(theta)
        for t in range(steps):
            params = layout.unflatten(theta[0])
            loss = F.cross_entropy(torch.func.functional_call(module, params, (x,)), y)
            (grad,) = torch.autograd.grad(loss, theta, create_graph=second_order)
            if not second_order:
                loss, grad = loss.detach(), grad.detach()
            grad = algorithm._prepare_grad(grad, x.shape[0], steps)
            theta, state = algorithm._step(theta, grad, loss.view(1), state, t, steps)
        output = torch.func.functional_call(module, layout.unflatten(theta[0]), (batch.x_query[b],))
        losses.append(F.cross_entropy(output, batch.y_query[b]))
    return torch.stack(losses).mean()


def synthetic_batch(tasks: int, shots: int, generator: torch.Generator) -> TaskBatch:
    def part(per_class):
        x = torch.rand((tasks, WAYS * per_class, *IMAGE), generator=generator)
        y = torch.arange(WAYS).repeat_interleave(per_class).expand(tasks, -1).contiguous()
        return x, y
    return TaskBatch(*part(shots), *part(QUERIES))


# Conv4 options of the package's learner (--grouped / --channels-last; None: Conv4's default).
LEARNER_OPTIONS: dict = {}


def build(algorithm_name: str, filters: int, options: dict):
    from learnedopt.algorithms import build_algorithm
    from learnedopt.learners import Conv4
    torch.manual_seed(0)
    learner = Conv4(ways=WAYS, in_shape=IMAGE, filters=filters, **LEARNER_OPTIONS)
    return build_algorithm(algorithm_name, learner, **options)


def iteration_fn(algorithm, batches, variant: str):
    """One meta-iteration (meta-loss, backward, clip, Adam step) of one variant."""
    optimizer = meta_optimizer(algorithm.parameters(), algorithm.outer_lr)
    backend = "fused" if variant == "package fused" else "reference"
    module = EagerConv4(WAYS, IMAGE, algorithm.learner.filters) if variant == "eager" else None

    def meta_iteration(call):
        batch = batches[call % len(batches)]
        with ops.use_backend(backend):
            if module is None:
                loss, _ = algorithm.meta_loss(batch)
            else:
                loss = eager_meta_loss(algorithm, module, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            algorithm.clip_meta_gradients()
            optimizer.step()

    return meta_iteration


def benchmark(cases, budget_s: float, min_samples: int, log=print, on_progress=None) -> list[dict]:
    device = torch.device("cpu")
    rows = []
    for case, algorithm_name, shots, filters, options in cases:
        base = [{"case": case, "algorithm": algorithm_name, "shots": shots, "filters": filters,
                 "variant": v, "what": f"{case} [{v}]"} for v in VARIANTS]
        op = "turtle_step" if algorithm_name == "turtle" else "meta_lstm_step"
        if not ops.available(device, op):
            rows.append({**base[1], "status": "skipped",
                         "reason": f"no fused {op} kernel for the CPU in this build"})
            base = [base[0], base[2]]
        try:
            generator = torch.Generator().manual_seed(0)
            fns = {}
            for row in base:
                algorithm = build(algorithm_name, filters, options)
                batches = [synthetic_batch(algorithm.meta_batch_size, shots, generator)
                           for _ in range(2)]
                fns[row["variant"]] = iteration_fn(algorithm, batches, row["variant"])
                described = {"options": {k: v for k, v in algorithm.options().items()
                                         if isinstance(v, (int, float, bool, str, type(None)))},
                             "learner": algorithm.learner.config()}
            timings = measure_interleaved(fns, device, budget_s=budget_s * len(fns),
                                          min_samples=min_samples, warmup_calls=1)
        except Exception as exc:  # one failing case must not lose the others
            text = str(exc).strip().splitlines()
            reason = f"{type(exc).__name__}: {text[0][:300] if text else ''}"
            log(f"  {case}: {reason}")
            traceback.print_exc()
            rows += [{**row, "status": "error", "reason": reason} for row in base]
            continue
        finally:
            fns = None
            gc.collect()
        eager = timings.get("eager")
        for row in base:
            timing = timings[row["variant"]]
            speedup = eager.median_s / timing.median_s if eager else None
            rows.append({**row, "status": "ok", "timing": timing.as_dict(),
                         "speedup_vs_eager": speedup, **described})
            log(f"  {row['what']}: {results.spread(timing.as_dict())} per iteration, "
                f"{results.ratio(speedup)} vs eager")
        if on_progress:
            on_progress(rows)
    return rows


def render_markdown(record: dict) -> str:
    rows = []
    for r in record["results"]:
        if r["status"] != "ok":
            continue
        o = r.get("options", {})
        protocol = (f"T={o.get('inner_steps', '?')}, mb={o.get('meta_batch_size', '?')}, "
                    f"{'FO' if o.get('first_order') else 'SO'}")
        rows.append([r["case"], r["variant"], protocol, results.spread(r["timing"]),
                     results.ratio(r.get("speedup_vs_eager"))])
    head = (f"**Conv learner, {record['device'].upper()}** — one meta-iteration (meta-loss, "
            f"backward, clip, Adam step) on synthetic 3×84×84 tasks, {QUERIES} queries per class: "
            f"the package's Conv4 ({record['settings']['package_learner']}) against an "
            f"nn.Module Conv4 called per task with functional_call (the rule on the reference "
            f"backend in both).")
    return head + "\n\n" + results.table(
        ["case", "variant", "protocol", "time per iteration", "speed-up vs eager"], rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Conv4 meta-iteration time: the package's learner vs the eager nn.Module one.",
        epilog="Example: python3 -m bench.conv_learner --quick "
               "(writes bench/results/conv_learner-cpu-*.json)")
    parser.add_argument("--quick", action="store_true", help="short budgets (about 5 minutes on 2 cores)")
    parser.add_argument("--cases", help="comma-separated case numbers 1..3 (default all): "
                        + "; ".join(f"{i + 1}={c[0]}" for i, c in enumerate(CASES)))
    parser.add_argument("--budget", type=float,
                        help="seconds of samples per case and variant (default 30, 6 with --quick)")
    for name in ("grouped", "channels-last"):
        parser.add_argument(f"--{name}", choices=["auto", "true", "false"], default="auto",
                            help=f"the package Conv4's {name.replace('-', '_')} option "
                                 "(default auto: Conv4's own default)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--out", type=Path, help="result file (default bench/results/...)")
    parser.add_argument("--label", help="a word saved with the result and in its file name")
    args = parser.parse_args(argv)
    args.cases = results.pick_cases(parser, args.cases, CASES)
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    device = machine.setup_device("cpu", args.threads)
    budget = args.budget or (6.0 if args.quick else 30.0)
    min_samples = 3 if args.quick else 5
    record = machine.run_header("conv_learner", device, argv)
    record["label"] = args.label
    print(f"# bench.conv_learner on {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {record['date']}\n# command: {record['command']}\n"
          f"# {ops.describe()}")
    path = args.out or results.default_path(record, args.label)
    from learnedopt.learners import Conv4
    LEARNER_OPTIONS.clear()
    for name in ("grouped", "channels_last"):
        value = getattr(args, name)
        if value != "auto":
            LEARNER_OPTIONS[name] = value == "true"
    package = Conv4(WAYS, IMAGE, **LEARNER_OPTIONS).config()

    def save(rows, complete=False):
        record["settings"] = {"budget_s": budget, "min_samples": min_samples, "quick": args.quick,
                              "data": f"synthetic random {'x'.join(map(str, IMAGE))} images",
                              "package_learner": f"grouped={package['grouped']}, "
                                                 f"channels_last={package['channels_last']}"}
        record["results"], record["complete"] = rows, complete
        results.write_json(record, path)

    rows = benchmark(args.cases, budget, min_samples, on_progress=save)
    save(rows, complete=True)
    print("\n" + results.render(record) + f"\n\nwrote {path}")
    return path


if __name__ == "__main__":
    main()
