"""Does a drop-in learned optimizer's memory stay flat over many steps?

Trains a small user-style CNN (conv, batch norm, linear head, a 0-dim learnable temperature) for
``--steps`` optimizer steps with each of LSTMOptimizer, TurtleOptimizer and MetaSGD, on a fixed
batch, and samples over the run:

- the process's resident set size (VmRSS of /proc/self/status): catches memory held anywhere,
  tensors kept by C++ (an autograd graph, a cache) included;
- the number of objects the Python garbage collector tracks and, among them, of live tensors:
  catches references that pile up in Python (a list that grows per step), independent of how
  the allocator hands memory back.

After ``--warmup`` steps (first calls convert the rule's weights, fill caches, grow the
allocator's pools) the run passes when RSS grows by less than ``--max-growth`` (a fraction of the
RSS at the end of warm-up) and the Python object and tensor counts do not grow at all.

Each training step exercises the paths a user's loop takes, by turns: ``step(loss=...)`` and a
closure; ``zero_grad()`` (in place) and ``zero_grad(set_to_none=True)`` (gradients re-adopted at
the next step); a ``StepLR`` scheduler; and, every 100 steps, reading ``opt.state[p]`` and
``opt.state_dict()``.

    python3 scripts/optimizer_memory.py --out results/reliability/optimizer_memory.json

``--leak-kib N`` keeps N KiB alive per step (a cache that never empties) to check that the
measurement sees a leak; run it in a fresh process, as the tests do: in a process that has
already freed much memory the allocator reuses those pages and RSS need not grow.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.machine import run_header  # noqa: E402
from bench.memory import python_counts, rss_bytes  # noqa: E402
from bench.results import write_json  # noqa: E402
from learnedopt.optim import LSTMOptimizer, MetaSGD, TurtleOptimizer  # noqa: E402

OPTIMIZERS = {"LSTMOptimizer": LSTMOptimizer, "TurtleOptimizer": TurtleOptimizer,
              "MetaSGD": MetaSGD}


class SmallCNN(nn.Module):
    """What a user hands the optimizer: conv + batch norm + linear, and a 0-dim temperature."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(32, 5)
        self.temperature = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


def measure(cls: type, steps: int, warmup: int, sample_every: int,
            step_hook: Callable | None = None) -> dict:
    """Run ``steps`` training steps of ``cls`` and sample RSS and Python counts; see the module
    docstring. ``step_hook`` (tests only) is registered as the optimizer's step post-hook, e.g.
    one that leaks, to check that the measurement sees it."""
    if not 0 < warmup < steps:
        raise ValueError(f"need 0 < warmup < steps, got warmup={warmup}, steps={steps}")
    torch.manual_seed(0)
    model = SmallCNN()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 12, 12, generator=generator)
    y = torch.randint(0, 5, (16,), generator=generator)
    # A small lr keeps 10,000 steps of an untrained rule finite; the memory paths are the same.
    opt = cls(model.parameters(), lr=1e-3)
    if step_hook is not None:
        opt.register_step_post_hook(step_hook)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1000, gamma=1.0)
    params = list(model.parameters())

    def loss_fn():
        return nn.functional.cross_entropy(model(x), y)

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    samples = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if step % 2:
            loss = loss_fn()
            loss.backward()
            opt.step(loss=loss)
        else:
            loss = opt.step(closure)
        opt.zero_grad(set_to_none=(step % 4 == 1))
        scheduler.step()
        if step % 100 == 0:
            _ = [dict(opt.state[p]) for p in params], opt.state_dict()
        if step == warmup or step % sample_every == 0 or step == steps:
            objects, tensors = python_counts()
            samples.append({"step": step, "rss_bytes": rss_bytes(), "python_objects": objects,
                            "tensors": tensors})
    elapsed = time.perf_counter() - start
    if not torch.isfinite(loss.detach()):
        raise RuntimeError(f"{cls.__name__}: the loss became non-finite; the run is not a "
                           f"training run any more")
    after = [s for s in samples if s["step"] >= warmup]
    base = after[0]
    peak = max(s["rss_bytes"] for s in after)
    return {"optimizer": cls.__name__, "steps": steps, "warmup_steps": warmup,
            "parameters": sum(p.numel() for p in params), "seconds": round(elapsed, 2),
            "rss_after_warmup_bytes": base["rss_bytes"], "rss_final_bytes": after[-1]["rss_bytes"],
            "rss_peak_after_warmup_bytes": peak,
            "rss_growth_fraction": (peak - base["rss_bytes"]) / base["rss_bytes"],
            "python_objects_growth": after[-1]["python_objects"] - base["python_objects"],
            "tensors_growth": after[-1]["tensors"] - base["tensors"],
            "final_loss": float(loss.detach()), "samples": samples}


def leaky_hook(kib: int) -> Callable:
    """A step post-hook that keeps ``kib`` KiB alive per step: a leak for the measurement to see."""
    kept = []

    def hook(optimizer, args, kwargs):
        kept.append(torch.ones(kib * 256))  # float32: 256 per KiB
    return hook


def passes(result: dict, max_growth: float) -> bool:
    return (result["rss_growth_fraction"] < max_growth and result["python_objects_growth"] <= 0
            and result["tensors_growth"] <= 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--max-growth", type=float, default=0.01,
                        help="largest allowed RSS growth after warm-up, as a fraction (0.01: 1%%)")
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    parser.add_argument("--out", type=Path, help="write the JSON record here")
    parser.add_argument("--leak-kib", type=int, default=0,
                        help="(checks the measurement) keep this many KiB alive per step")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread: no per-thread allocator arenas appearing mid-run
    record = run_header("optimizer_memory", torch.device("cpu"), argv)
    record["command"] = " ".join(["python3", "scripts/optimizer_memory.py",
                                  *(sys.argv[1:] if argv is None else argv)])
    record.update(schema="learnedopt-reliability/1", max_growth=args.max_growth, results=[])
    ok = True
    for name in args.optimizers:
        result = measure(OPTIMIZERS[name], args.steps, args.warmup, args.sample_every,
                         step_hook=leaky_hook(args.leak_kib) if args.leak_kib else None)
        result["passed"] = passes(result, args.max_growth)
        ok &= result["passed"]
        record["results"].append(result)
        print(f"{name}: {result['steps']} steps in {result['seconds']} s; RSS after warm-up "
              f"{result['rss_after_warmup_bytes'] / 2**20:.1f} MiB, peak after warm-up "
              f"+{100 * result['rss_growth_fraction']:.3f} %, final "
              f"{result['rss_final_bytes'] / 2**20:.1f} MiB; Python objects "
              f"{result['python_objects_growth']:+d}, tensors {result['tensors_growth']:+d}: "
              f"{'flat' if result['passed'] else 'GROWS'}")
    record["passed"] = ok
    if args.out:
        write_json(record, args.out)
        print(f"written to {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
