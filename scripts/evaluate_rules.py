"""Do the shipped learned optimizers help on problems they were NOT meta-trained on?

The rules in ``learnedopt/pretrained/`` were meta-trained on 10-shot sine regression (A ~ U[0.1, 5],
a few inner steps from a meta-learned initialisation). This script trains fresh, randomly
initialised models on other problems with them and with SGD and Adam, and compares the training
loss against the number of steps:

- ``sine-wide``: y = A sin(x - phi) with A ~ U[5, 10] (outside the meta-training range), 100
  points, the 1-40-40-1 ReLU MLP, mean squared error.
- ``omniglot-mlp``: 20 Omniglot characters of the evaluation alphabets, 15 drawings each to train
  on (the other 5 held out), flattened 28x28, a 784-128-20 ReLU MLP, cross-entropy.
- ``omniglot-conv``: the same data through a small conv net (two 3x3 stride-2 convs, 16 and 32
  channels, ReLU, a linear head), cross-entropy.

Protocol (also written into the JSON):
- Full-batch training, so the loss curves are deterministic given the seed; the curve point at
  step t is the training loss after t updates. Every optimizer gets the same data and the same
  initial weights for a given seed.
- SGD and Adam (torch.optim defaults apart from lr) take the lr from a log grid that gives the
  lowest final training loss on a separate tuning seed, never on an evaluation seed.
- The learned optimizers run as shipped (lr = 1: the meta-learned update; Meta-SGD = SGD with the
  median learned step size). TURTLE and the LSTM also get the same lr-sweep protocol over a small
  grid; the tuned variant is reported as its own row, labelled, only when its lr is not 1.
- A run diverges when its loss is not finite or exceeds 1000x its initial loss; it stops there
  and is counted, never silently averaged: means and curves are over the seeds that did not
  diverge, and every table cell says how many did.

    python3 scripts/evaluate_rules.py --out results/evaluate_rules.json --plot results/evaluate_rules.png

``--state-dtype bfloat16`` runs TURTLE and the LSTM with their reducible state (m; h, c) stored in
bfloat16 (``state_dtype`` of learnedopt.optim); ``compare A.json B.json`` prints, per problem and
learned rule, the final losses and held-out metrics of two such runs side by side.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file: import the learnedopt of this checkout
    sys.path.insert(0, str(REPO))

from learnedopt import ops  # noqa: E402
from learnedopt.optim import LSTMOptimizer, MetaSGD, TurtleOptimizer  # noqa: E402
from learnedopt.optim.pretrained import PretrainedError, load_rule, resolve  # noqa: E402

PROBLEMS = ("sine-wide", "omniglot-mlp", "omniglot-conv")
LEARNED = ("turtle", "metalstm", "metasgd")
LEARNED_CLASS = {"turtle": TurtleOptimizer, "metalstm": LSTMOptimizer, "metasgd": MetaSGD}
SGD_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0)
ADAM_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
# Scales of the meta-learned update; 1 (as shipped) is always in it.
LEARNED_LR_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
DIVERGENCE_FACTOR = 1e3
OMNIGLOT_WAYS, OMNIGLOT_TRAIN_PER_CLASS = 20, 15
SINE_POINTS, SINE_AMPLITUDE = 100, (5.0, 10.0)


# -- problems ----------------------------------------------------------------------------------

@dataclass
class Data:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def _stream_seed(*parts: Any) -> int:
    """Independent, reproducible seeds per (problem, seed, purpose), so the data and the initial
    weights of one seed never share a random stream."""
    return zlib.crc32(repr(parts).encode())


def sine_data(seed: int) -> Data:
    g = torch.Generator().manual_seed(_stream_seed("sine-wide", seed, "data"))
    lo, hi = SINE_AMPLITUDE
    amplitude = lo + (hi - lo) * torch.rand((), generator=g)
    phase = math.pi * torch.rand((), generator=g)
    x = torch.rand(2 * SINE_POINTS, 1, generator=g) * 10.0 - 5.0
    y = amplitude * torch.sin(x - phase)
    return Data(x[:SINE_POINTS], y[:SINE_POINTS], x[SINE_POINTS:], y[SINE_POINTS:])


def omniglot_data(seed: int, images: Tensor, counts: list[int]) -> Data:
    """OMNIGLOT_WAYS characters drawn by the seed, each with its drawings shuffled into
    OMNIGLOT_TRAIN_PER_CLASS to train on and the rest held out."""
    g = torch.Generator().manual_seed(_stream_seed("omniglot", seed, "data"))
    starts = [0]
    for n in counts[:-1]:
        starts.append(starts[-1] + n)
    characters = torch.randperm(len(counts), generator=g)[:OMNIGLOT_WAYS].tolist()
    train, test = [], []
    for label, c in enumerate(characters):
        order = torch.randperm(counts[c], generator=g) + starts[c]
        train += [(i, label) for i in order[:OMNIGLOT_TRAIN_PER_CLASS].tolist()]
        test += [(i, label) for i in order[OMNIGLOT_TRAIN_PER_CLASS:].tolist()]

    def stack(pairs):
        index = torch.tensor([i for i, _ in pairs])
        return images[index].float() / 255.0, torch.tensor([label for _, label in pairs])
    return Data(*stack(train), *stack(test))


class SmallConvNet(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.head = nn.Linear(32 * 7 * 7, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


@dataclass
class Problem:
    name: str
    description: str
    make_data: Callable[[int], Data]
    make_model: Callable[[], nn.Module]
    loss: Callable[[Tensor, Tensor], Tensor]
    classification: bool


def build_problem(name: str, omniglot: tuple[Tensor, list[int]] | None) -> Problem:
    if name == "sine-wide":
        return Problem(name, f"sine regression, A ~ U{list(SINE_AMPLITUDE)}, phi ~ U[0, pi], "
                             f"{SINE_POINTS} points x ~ U[-5, 5]; 1-40-40-1 ReLU MLP; MSE",
                       sine_data,
                       lambda: nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40),
                                             nn.ReLU(), nn.Linear(40, 1)),
                       F.mse_loss, classification=False)
    if omniglot is None:
        raise ValueError(f"problem {name!r} needs the Omniglot images")
    images, counts = omniglot
    if len(counts) < OMNIGLOT_WAYS or min(counts) <= OMNIGLOT_TRAIN_PER_CLASS:
        raise ValueError(f"problem {name!r} needs >= {OMNIGLOT_WAYS} characters with more than "
                         f"{OMNIGLOT_TRAIN_PER_CLASS} drawings each; the Omniglot evaluation set "
                         f"given has {len(counts)} characters with {min(counts, default=0)} to "
                         f"{max(counts, default=0)} drawings")
    data = lambda seed: omniglot_data(seed, images, counts)  # noqa: E731
    common = (f"{OMNIGLOT_WAYS} Omniglot evaluation-set characters, {OMNIGLOT_TRAIN_PER_CLASS} "
              f"drawings each (rest held out), 28x28")
    if name == "omniglot-mlp":
        return Problem(name, f"{common}, flattened; 784-128-{OMNIGLOT_WAYS} ReLU MLP; cross-entropy",
                       lambda seed: _flattened(data(seed)),
                       lambda: nn.Sequential(nn.Linear(784, 128), nn.ReLU(),
                                             nn.Linear(128, OMNIGLOT_WAYS)),
                       F.cross_entropy, classification=True)
    if name == "omniglot-conv":
        return Problem(name, f"{common}; conv 3x3/2 (16) - ReLU - conv 3x3/2 (32) - ReLU - linear; "
                             f"cross-entropy",
                       data, lambda: SmallConvNet(OMNIGLOT_WAYS), F.cross_entropy,
                       classification=True)
    raise ValueError(f"unknown problem {name!r} (expected one of {PROBLEMS})")


def _flattened(d: Data) -> Data:
    return Data(d.x_train.flatten(1), d.y_train, d.x_test.flatten(1), d.y_test)


# -- optimizers --------------------------------------------------------------------------------

STATE_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def make_optimizer(kind: str, lr: float, params, rules: dict[str, str],
                   state_dtype: str = "float32") -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    options = {"lr": lr}
    if kind in ("turtle", "metalstm"):  # Meta-SGD's only state is alpha, kept full precision
        options["state_dtype"] = STATE_DTYPES[state_dtype]
    return LEARNED_CLASS[kind].from_pretrained(rules[kind], params, **options)


# -- one training run ----------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(omniglot, rules, threads: int, state_dtype: str = "float32") -> None:
    torch.set_num_threads(threads)
    _WORKER.update(omniglot=omniglot, rules=rules, problems={}, state_dtype=state_dtype)


def train_once(job: tuple[str, int, str, float, int]) -> dict[str, Any]:
    """Train one fresh model on one seed's data with one optimizer; the loss before every step."""
    problem_name, seed, kind, lr, steps = job
    problems = _WORKER["problems"]
    if problem_name not in problems:
        problems[problem_name] = build_problem(problem_name, _WORKER["omniglot"])
    problem = problems[problem_name]
    data = problem.make_data(seed)
    torch.manual_seed(_stream_seed(problem_name, seed, "init"))
    model = problem.make_model()
    optimizer = make_optimizer(kind, lr, model.parameters(), _WORKER["rules"],
                               _WORKER["state_dtype"])

    curve: list[float] = []
    diverged_at = None
    started = time.perf_counter()
    for step in range(steps + 1):
        loss = problem.loss(model(data.x_train), data.y_train)
        value = loss.item()
        if not math.isfinite(value) or (curve and value > DIVERGENCE_FACTOR * curve[0]):
            curve.append(value if math.isfinite(value) else None)  # JSON has no NaN
            diverged_at = step
            break
        curve.append(value)
        if step == steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step(loss=loss.detach()) if kind in LEARNED else optimizer.step()
    result = {"problem": problem_name, "seed": seed, "optimizer": kind, "lr": lr,
              "curve": curve, "diverged_at": diverged_at,
              "seconds": time.perf_counter() - started}
    if diverged_at is None:
        with torch.no_grad():
            out = model(data.x_test)
            test_loss = problem.loss(out, data.y_test).item()
            result["test_loss"] = test_loss if math.isfinite(test_loss) else None
            if problem.classification:
                result["test_accuracy"] = (out.argmax(1) == data.y_test).float().mean().item()
    return result


def final_loss(run: dict[str, Any]) -> float:
    return math.inf if run["diverged_at"] is not None else run["curve"][-1]


# -- aggregation -------------------------------------------------------------------------------

def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread over the seeds that did not diverge; diverged seeds are counted."""
    ok = [r for r in runs if r["diverged_at"] is None]
    finals = [r["curve"][-1] for r in ok]
    out: dict[str, Any] = {
        "seeds": [r["seed"] for r in runs],
        "diverged": [r["seed"] for r in runs if r["diverged_at"] is not None],
        "final_loss": {"per_seed": [final_loss(r) if r["diverged_at"] is None else None
                                    for r in runs],
                       "mean": statistics.fmean(finals) if finals else None,
                       "std": statistics.stdev(finals) if len(finals) > 1 else (0.0 if finals else None)},
        "curves_per_seed": [r["curve"] for r in runs],
        "diverged_at_step": [r["diverged_at"] for r in runs],
        "seconds": round(sum(r["seconds"] for r in runs), 2),
    }
    if ok:
        columns = list(zip(*[r["curve"] for r in ok]))
        out["curve"] = {"mean": [statistics.fmean(c) for c in columns],
                        "min": [min(c) for c in columns], "max": [max(c) for c in columns]}
        for metric in ("test_loss", "test_accuracy"):
            values = [r[metric] for r in ok if r.get(metric) is not None]
            if values:
                out[metric] = {"mean": statistics.fmean(values),
                               "per_seed": [r.get(metric) for r in runs]}
    return out


def pick_lr(tuning: list[dict[str, Any]]) -> tuple[float, bool]:
    """The lr of the lowest final training loss (diverged: +inf) and whether it is a grid edge."""
    grid = sorted(r["lr"] for r in tuning)
    best = min(tuning, key=lambda r: (final_loss(r), r["lr"]))
    if not math.isfinite(final_loss(best)):
        raise RuntimeError(f"{best['optimizer']} diverged at every lr of {grid} on "
                           f"{best['problem']}'s tuning seed")
    return best["lr"], best["lr"] in (grid[0], grid[-1])


# -- reporting ---------------------------------------------------------------------------------

def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def cell(entry: dict[str, Any]) -> str:
    s = entry["summary"]
    n, bad = len(s["seeds"]), len(s["diverged"])
    fl = s["final_loss"]
    text = "diverged" if fl["mean"] is None else f"{_fmt(fl['mean'])} ± {_fmt(fl['std'])}"
    if bad:
        text += f" ({bad}/{n} diverged)"
    edge = " †" if entry.get("lr_at_grid_edge") else ""
    return f"{text} (lr {entry['lr']:g}{edge})"


# Every row label in table order; a label keeps its colour in every panel of the plot.
LABELS = (*LEARNED, *(f"{k} (lr tuned)" for k in LEARNED), "sgd (tuned)", "adam (tuned)")


def markdown_table(results: dict[str, Any]) -> str:
    problems = list(results["problems"])
    labels = [label for label in LABELS
              if any(label in results["problems"][p]["entries"] for p in problems)]
    lines = ["| optimizer | " + " | ".join(problems) + " |",
             "|---|" + "---|" * len(problems)]
    for label in labels:
        cells = []
        for p in problems:
            entries = results["problems"][p]["entries"]
            if label in entries:
                cells.append(cell(entries[label]))
            elif label.endswith("(lr tuned)"):
                cells.append("the sweep picked lr 1")
            else:
                cells.append("—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if any(e.get("lr_at_grid_edge") for p in problems
           for e in results["problems"][p]["entries"].values()):
        lines.append("\n† the tuning picked the smallest or largest lr of the grid: a wider grid "
                     "might do better.")
    return "\n".join(lines)


def heldout_table(results: dict[str, Any]) -> str:
    """Held-out data after training, for context only: what the optimizers minimise is the
    training loss. Omniglot: accuracy on the held-out drawings; sine: MSE on 100 fresh points."""
    problems = list(results["problems"])
    labels = [label for label in LABELS
              if any(label in results["problems"][p]["entries"] for p in problems)]
    lines = ["| optimizer | " + " | ".join(
                 f"{p} ({'accuracy' if p.startswith('omniglot') else 'test MSE'})" for p in problems)
             + " |", "|---|" + "---|" * len(problems)]
    for label in labels:
        cells = []
        for p in problems:
            summary = results["problems"][p]["entries"].get(label, {}).get("summary", {})
            if "test_accuracy" in summary:
                cells.append(f"{100 * summary['test_accuracy']['mean']:.1f} %")
            elif "test_loss" in summary:
                cells.append(_fmt(summary["test_loss"]["mean"]))
            else:
                cells.append("—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(problem: str, entries: dict[str, Any]) -> str:
    """One plain line: which learned entries end above the best tuned baseline, and by how much."""
    baselines = {k: e for k, e in entries.items() if e["optimizer"] in ("sgd", "adam")}
    best_label = min(baselines, key=lambda k: baselines[k]["summary"]["final_loss"]["mean"]
                     if baselines[k]["summary"]["final_loss"]["mean"] is not None else math.inf)
    best = baselines[best_label]
    best_mean = best["summary"]["final_loss"]["mean"]
    best_finals = best["summary"]["final_loss"]["per_seed"]
    losses, wins = [], []
    for label, e in entries.items():
        if e["optimizer"] not in LEARNED:
            continue
        s = e["summary"]
        n = len(s["seeds"])
        if s["diverged"]:
            losses.append(f"{label} diverges on {len(s['diverged'])}/{n} seeds")
            continue
        mean = s["final_loss"]["mean"]
        paired = sum(1 for a, b in zip(s["final_loss"]["per_seed"], best_finals)
                     if b is None or a < b)
        if best_mean is None or mean < best_mean:
            wins.append(f"{label} ({_fmt(mean)}, lower on {paired}/{n} seeds)")
        else:
            losses.append(f"{label} ends at {_fmt(mean)}, {mean / best_mean:.3g}x {best_label}'s "
                          f"{_fmt(best_mean)} (lower on {paired}/{n} seeds)")
    line = f"- **{problem}** — where the learned rules lose: "
    line += "; ".join(losses) if losses else "nowhere"
    if wins:
        line += f". Below {best_label} ({_fmt(best_mean)}): " + "; ".join(wins)
    return line + "."


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    problems = list(results["problems"])
    fig, axes = plt.subplots(1, len(problems), figsize=(5.2 * len(problems), 4.2), squeeze=False)
    for ax, p in zip(axes[0], problems):
        for label, e in results["problems"][p]["entries"].items():
            curve = e["summary"].get("curve")
            if curve is None:
                continue
            steps = range(len(curve["mean"]))
            style = "-" if e["optimizer"] in LEARNED else "--"
            bad = len(e["summary"]["diverged"])
            name = f"{label}, lr {e['lr']:g}" + (f", {bad} diverged" if bad else "")
            color = f"C{LABELS.index(label)}"
            ax.plot(steps, curve["mean"], style, lw=1.6, color=color, label=name)
            ax.fill_between(steps, curve["min"], curve["max"], color=color, alpha=0.15, lw=0)
        ax.set_yscale("log")
        ax.set_title(p)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (mean, min–max over seeds)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, allow_nan=False)  # diverged values are stored as null, never NaN
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- main ----------------------------------------------------------------------------------------

def default_data_root() -> Path | None:
    candidate = REPO.parent / "shared" / "data" / "omniglot"
    return candidate if candidate.is_dir() else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Loss vs steps of the shipped learned optimizers against tuned SGD and Adam "
                    "on problems they were not meta-trained on (see the module docstring).")
    parser.add_argument("--out", required=True, help="result JSON to write")
    parser.add_argument("--plot", help="PNG to write (loss vs steps, one panel per problem)")
    parser.add_argument("--problems", default=",".join(PROBLEMS),
                        help=f"comma-separated subset of {','.join(PROBLEMS)}")
    parser.add_argument("--learned", default=",".join(LEARNED),
                        help=f"comma-separated subset of {','.join(LEARNED)}")
    for kind in LEARNED:
        parser.add_argument(f"--{kind}-rule", default=f"{kind}-sine",
                            help=f"rule file or shipped name (default: {kind}-sine)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per run")
    parser.add_argument("--seeds", type=int, default=5, help="evaluation seeds 0..N-1")
    parser.add_argument("--tuning-seed", type=int, default=1000,
                        help="seed on which every lr is picked (not an evaluation seed)")
    parser.add_argument("--sgd-grid", default=",".join(map(str, SGD_GRID)))
    parser.add_argument("--adam-grid", default=",".join(map(str, ADAM_GRID)))
    parser.add_argument("--learned-lr-grid", default=",".join(map(str, LEARNED_LR_GRID)),
                        help="lr sweep for turtle and metalstm (empty: none)")
    parser.add_argument("--data-root", default=None,
                        help="Omniglot release folder (default: ../shared/data/omniglot next to "
                             "the repository, when it exists)")
    parser.add_argument("--cache-dir", default=None, help="where decoded Omniglot images are cached")
    parser.add_argument("--workers", type=int, default=2, help="processes, one thread each")
    parser.add_argument("--state-dtype", choices=tuple(STATE_DTYPES), default="float32",
                        help="storage of TURTLE's m and the LSTM's h, c (default float32)")
    args = parser.parse_args(argv)

    def names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
        chosen = [t for t in text.split(",") if t]
        unknown = [t for t in chosen if t not in allowed]
        if unknown or not chosen:
            parser.error(f"--{what}: expected a non-empty subset of {','.join(allowed)}, got {text!r}")
        return chosen

    def grid(text: str, what: str, allow_empty: bool = False) -> list[float]:
        try:
            values = [float(t) for t in text.split(",") if t]
        except ValueError:
            parser.error(f"--{what}: expected comma-separated numbers, got {text!r}")
        if (not values and not allow_empty) or any(not (v > 0 and math.isfinite(v)) for v in values):
            parser.error(f"--{what}: expected positive finite numbers, got {text!r}")
        return sorted(set(values))

    args.problems = names(args.problems, PROBLEMS, "problems")
    args.learned = names(args.learned, LEARNED, "learned")
    args.sgd_grid = grid(args.sgd_grid, "sgd-grid")
    args.adam_grid = grid(args.adam_grid, "adam-grid")
    args.learned_lr_grid = grid(args.learned_lr_grid, "learned-lr-grid", allow_empty=True)
    if args.steps < 1 or args.seeds < 1 or args.workers < 1:
        parser.error("--steps, --seeds and --workers must be >= 1")
    if args.tuning_seed in range(args.seeds):
        parser.error(f"--tuning-seed {args.tuning_seed} is one of the evaluation seeds 0..{args.seeds - 1}")
    if any(p.startswith("omniglot") for p in args.problems):
        args.data_root = Path(args.data_root) if args.data_root else default_data_root()
        if args.data_root is None:
            parser.error("the Omniglot problems need --data-root (no ../shared/data/omniglot next "
                         "to the repository); or leave them out with --problems sine-wide")
    return args


def rule_provenance(kind: str, name: str) -> dict[str, Any]:
    path = resolve(name)
    data = load_rule(path)
    # A config may hold math.inf (TURTLE's "no clamp"), which JSON cannot: written as a string.
    config = {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v
              for k, v in data["config"].items()}
    entry = {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
             "kind": data["kind"], "config": config, "max_t": data.get("max_t"),
             "source": {k: data.get("source", {}).get(k) for k in ("algorithm", "iteration")}}
    if "alpha" in data:
        entry["alpha_median"] = data["alpha"]["median"]
    if data["kind"] != kind:
        raise PretrainedError(f"--{kind}-rule {name!r} holds a {data['kind']!r} rule")
    return entry


def run_jobs(pool, jobs: list[tuple]) -> list[dict[str, Any]]:
    return pool.map(train_once, jobs, chunksize=1) if pool is not None else [train_once(j) for j in jobs]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    started = time.time()
    try:
        provenance = {k: rule_provenance(k, getattr(args, f"{k}_rule")) for k in args.learned}
    except PretrainedError as exc:
        print(f"error: {exc}\n(the shipped rules are made by scripts/make_pretrained.sh; pass "
              f"--KIND-rule FILE to use another rule file)", file=sys.stderr)
        return 2
    rules = {k: v["file"] for k, v in provenance.items()}

    omniglot = None
    try:
        if any(p.startswith("omniglot") for p in args.problems):
            from learnedopt.tasks.omniglot import load_omniglot_set
            chars = load_omniglot_set(args.data_root, "images_evaluation", 28, args.cache_dir)
            omniglot = (chars.images, chars.counts)
        problems = {p: build_problem(p, omniglot) for p in args.problems}
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # Learned rules first, so their tuned-lr rows sit next to them in the table.
    swept = [k for k in args.learned if k in ("turtle", "metalstm") and args.learned_lr_grid]
    grids = {k: sorted(set(args.learned_lr_grid) | {1.0}) for k in swept}
    grids.update(sgd=args.sgd_grid, adam=args.adam_grid)

    pool = None
    if args.workers > 1:
        pool = multiprocessing.get_context("spawn").Pool(
            args.workers, initializer=_init_worker, initargs=(omniglot, rules, 1, args.state_dtype))
    else:
        _init_worker(omniglot, rules, 1, args.state_dtype)
    try:
        tuning_jobs = [(p, args.tuning_seed, kind, lr, args.steps)
                       for p in args.problems for kind, grid in grids.items() for lr in grid]
        tuning_runs = run_jobs(pool, tuning_jobs)

        # What to evaluate per problem: label -> (optimizer, lr, how the lr was chosen, whether it
        # is an edge of its grid).
        plan: dict[str, dict[str, tuple[str, float, str, bool]]] = {}
        tuning_report: dict[str, Any] = {}
        for p in args.problems:
            plan[p] = {}
            tuning_report[p] = {}
            for kind in args.learned:
                plan[p][kind] = (kind, 1.0, "as shipped (lr = 1: the meta-learned update)", False)
            for kind, grid in grids.items():
                runs = [r for r in tuning_runs if r["problem"] == p and r["optimizer"] == kind]
                lr, edge = pick_lr(runs)
                tuning_report[p][kind] = {"grid": grid, "final_loss": [
                    None if not math.isfinite(final_loss(r)) else final_loss(r)
                    for r in sorted(runs, key=lambda r: r["lr"])], "picked_lr": lr,
                    "picked_at_grid_edge": edge}
                how = f"tuned on seed {args.tuning_seed} over {grid}" + \
                      (" (at the grid's edge)" if edge else "")
                if kind in ("sgd", "adam"):
                    plan[p][f"{kind} (tuned)"] = (kind, lr, how, edge)
                elif lr != 1.0:
                    plan[p][f"{kind} (lr tuned)"] = (kind, lr, how, edge)

        eval_jobs = [(p, seed, kind, lr, args.steps) for p in args.problems
                     for kind, lr, _, _ in plan[p].values() for seed in range(args.seeds)]
        eval_runs = run_jobs(pool, eval_jobs)
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    results: dict[str, Any] = {
        "format": "learnedopt-evaluate-rules/1",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python3", os.path.relpath(__file__, REPO), *argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads_per_worker": 1,
                    "workers": args.workers, "learnedopt_backend": ops.get_backend(),
                    "fused_cpu_kernels": ops.available("cpu")},
        "rules": provenance,
        "protocol": {
            "steps": args.steps, "evaluation_seeds": list(range(args.seeds)),
            "tuning_seed": args.tuning_seed, "grids": grids,
            "state_dtype": args.state_dtype,
            "training": "full batch; curve[t] = training loss after t updates; same data and "
                        "initial weights for every optimizer on a seed",
            "lr_selection": "lowest final training loss on the tuning seed (diverged = +inf)",
            "learned_lr": "lr = 1 is the meta-learned update; a tuned-lr row appears only when "
                          "the sweep picks lr != 1",
            "divergence": f"loss not finite or above {DIVERGENCE_FACTOR:g}x the initial loss; the "
                          f"run stops and is excluded from means and curves, and counted",
            "spread": "final_loss.std: sample standard deviation over non-diverged seeds; "
                      "plot bands: min-max over them"},
        "tuning": tuning_report,
        "problems": {},
        "seconds": None,
    }
    for p in args.problems:
        entries = {}
        for label, (kind, lr, how, edge) in plan[p].items():
            runs = sorted((r for r in eval_runs if r["problem"] == p and r["optimizer"] == kind
                           and r["lr"] == lr), key=lambda r: r["seed"])
            entries[label] = {"optimizer": kind, "lr": lr, "lr_choice": how,
                              "lr_at_grid_edge": edge, "summary": summarize(runs)}
        results["problems"][p] = {"description": problems[p].description, "entries": entries}
    results["verdicts"] = {p: verdict(p, results["problems"][p]["entries"]) for p in args.problems}
    results["seconds"] = round(time.time() - started, 1)

    out = Path(args.out)
    write_json(results, out)
    if args.plot:
        plot(results, Path(args.plot))
    print(report(results))
    print(f"\nwrote {out}" + (f" and {args.plot}" if args.plot else "") +
          f" in {results['seconds']:.0f} s")
    return 0


def report(results: dict[str, Any]) -> str:
    """The Markdown summary of a result JSON: final losses, held-out metrics, verdicts."""
    steps, seeds = results["protocol"]["steps"], len(results["protocol"]["evaluation_seeds"])
    return "\n".join([
        f"Final training loss after {steps} steps (mean ± std over {seeds} seeds):\n",
        markdown_table(results),
        f"\nHeld-out data after {steps} steps (mean over non-diverged seeds; context only):\n",
        heldout_table(results), "", "\n".join(results["verdicts"].values())])


def render(json_path: str, readme: str | None) -> int:
    """Print the summary of a committed result JSON and, with a README, write it between
    `<!-- results:rules:start -->` and `<!-- results:rules:end -->` (generated, never typed)."""
    import re
    text = report(json.loads(Path(json_path).read_text()))
    print(text)
    if readme:
        start, end = "<!-- results:rules:start -->", "<!-- results:rules:end -->"
        body = Path(readme).read_text()
        if start not in body or end not in body:
            print(f"{readme} lacks the markers {start} / {end}", file=sys.stderr)
            return 1
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
        Path(readme).write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", body))
    return 0


def compare(a_path: str, b_path: str) -> str:
    """Markdown: the learned rules' final training loss and held-out metric in run A and run B
    (e.g. float32 and bfloat16 optimizer state), per problem, with B's final loss relative to A's
    per seed (median and worst), so that a change of the state's precision shows at a glance."""
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    name = lambda r: r["protocol"].get("state_dtype", "float32")  # noqa: E731
    head = ["rule (lr)", "problem", f"final loss, {name(a)}", f"final loss, {name(b)}",
            f"{name(b)} / {name(a)} per seed (median, worst)", f"held-out, {name(a)}",
            f"held-out, {name(b)}"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for problem, described in a["problems"].items():
        for label, entry in described["entries"].items():
            if entry["optimizer"] not in ("turtle", "metalstm"):
                continue
            other = b["problems"].get(problem, {}).get("entries", {}).get(label)
            if other is None:
                continue
            sa, sb = entry["summary"], other["summary"]
            ratios = [y / x for x, y in zip(sa["final_loss"]["per_seed"], sb["final_loss"]["per_seed"])
                      if x is not None and y is not None and x > 0]
            worst = max(ratios, key=lambda r: abs(math.log(r))) if ratios else None
            metric = "test_accuracy" if "test_accuracy" in sa else "test_loss"
            held = lambda s: ("—" if metric not in s else  # noqa: E731
                              f"{100 * s[metric]['mean']:.1f} %" if metric == "test_accuracy"
                              else f"{s[metric]['mean']:.3g} (MSE)")
            lines.append("| " + " | ".join([
                f"{entry['optimizer']} ({entry['lr']:g}"
                + ("" if other["lr"] == entry["lr"] else f" / {other['lr']:g}: tuned apart") + ")",
                problem, cell(entry), cell(other),
                "—" if not ratios else f"{statistics.median(ratios):.3f}, {worst:.3f}",
                held(sa), held(sb)]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "render":
        sys.exit(render(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
    if len(sys.argv) > 1 and sys.argv[1] == "compare":
        if len(sys.argv) != 4:
            sys.exit("usage: python3 scripts/evaluate_rules.py compare A.json B.json")
        print(compare(sys.argv[2], sys.argv[3]))
        sys.exit(0)
    sys.exit(main())
