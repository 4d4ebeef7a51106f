"""The ``learnedopt`` command: train, eval, plot, protocol, export-rule, info and a one-command demo.

Each subcommand is a thin layer over the library: ``train`` builds a
:class:`learnedopt.train.TrainConfig`, ``eval`` calls
:func:`learnedopt.evaluate.evaluate_checkpoint`, ``plot`` calls :mod:`learnedopt.plots`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from learnedopt import distributed

MAIN_EPILOG = """\
quick start (meta-trains Meta-SGD on 10-shot sine in about two minutes on a laptop CPU,
meta-tests it on 2,000 tasks and writes plots):
  learnedopt demo --out runs/demo

step by step:
  learnedopt train --algorithm maml --task sine --shots 10 --iterations 20000 --out runs/maml-sine
  learnedopt eval --checkpoint runs/maml-sine/best.pt --tasks 2000 --out runs/maml-sine/test.json
  learnedopt plot curves runs/maml-sine --out runs/maml-sine/curves.png
  learnedopt plot sine-fit --checkpoint runs/maml-sine/best.pt --out runs/maml-sine/fit.png

the seed papers' Omniglot experiments as option sets (train --protocol NAME):
  learnedopt protocol list

run 'learnedopt COMMAND --help' for the options of a command.
"""

TRAIN_EPILOG = """\
examples:
  # MAML, 10-shot sine regression
  learnedopt train --algorithm maml --task sine --shots 10 --iterations 20000 --out runs/maml-sine
  # TURTLE, first-order, 5 inner steps, 8 tasks per meta-batch
  learnedopt train --algorithm turtle --task sine --first-order --inner-steps 5 --meta-batch 8 \\
      --out runs/turtle-fo
  # meta-learner LSTM on Omniglot 20-way 1-shot (Vinyals split), 12 inner steps at test
  learnedopt train --algorithm metalstm --task omniglot --data-root data/omniglot \\
      --ways 20 --shots 1 --split vinyals --test-inner-steps 12 --out runs/lstm-20w1s
  # any other algorithm option: --opt key=value (repeatable; values parsed as JSON)
  learnedopt train --algorithm taml --opt penalty_weight=0.5 --out runs/taml
  # your own model and tasks, by import path (recorded, so eval and --resume rebuild them)
  learnedopt train --algorithm turtle --model mypkg.nets:resnet12 --model-opt ways=5 \
      --tasks mypkg.data:tasks --tasks-opt root=data/mini --head fc --out runs/resnet-turtle
  # a seed paper's experiment by name: the stress test's 50-way 1-shot MetaLSTM++ (the protocol
  # fills in split, queries, options and run settings; flags given override it)
  learnedopt train --protocol stress-test --algorithm metalstm++ --ways 50 \
      --data-root data/omniglot --out runs/stress-test/metalstm++-50w
  # Lake et al.'s within-alphabet task, without rotations, validated on held-out alphabets
  learnedopt train --algorithm maml --task omniglot --data-root data/omniglot --split lake \
      --within-alphabet --no-rotations --ways 20 --shots 1 --out runs/lake-maml
  # continue an interrupted run from its recorded config (optionally with a larger --iterations)
  learnedopt train --resume runs/maml-sine --iterations 40000
  # the older form, every original flag given again
  learnedopt train --algorithm maml --task sine --iterations 40000 --out runs/maml-sine --resume
  # a long run in pieces: stop cleanly before 2 hours (exit code 75), then resume
  learnedopt train --algorithm turtle --task sine --iterations 100000 --out runs/t --time-limit 2h
  learnedopt train --resume runs/t --time-limit 2h

Ctrl-C (SIGINT) or SIGTERM: the current iteration finishes, last.pt is written, and the run
exits (130 / 143) with the line to resume it; a second signal stops at once (last.pt intact).
One run at a time per directory: a second one into a directory in use is refused.

A run directory holds config.json, metrics.jsonl, last.pt (resumable) and best.pt (the best
validation score; every meta-parameter).
"""

EVAL_EPILOG = """\
examples:
  learnedopt eval --checkpoint runs/maml-sine/best.pt --tasks 2000 --out result.json
  learnedopt eval --checkpoint runs/lstm-20w1s/best.pt --tasks 600 --test-inner-steps 12 \\
      --data-root /elsewhere/omniglot --out lstm-20w1s.json

Prints 'mean ± 95% CI' (1.96 · std / sqrt(tasks)) and writes a JSON record with the protocol
(split, ways, shots, queries, inner steps at train and test, FO/SO, batch-norm mode, iterations,
seeds), the backend, torch version, machine, date and this command.
"""

PLOT_EPILOG = """\
examples:
  learnedopt plot curves runs/maml-sine runs/turtle-sine --out curves.png
  learnedopt plot gates --checkpoint runs/lstm-20w1s/best.pt --out gates.png
  learnedopt plot sine-fit --checkpoint runs/maml-sine/best.pt --out fit.png
  learnedopt plot ways results/stress-test/cpu --out ways.png   # a folder: all its JSONs
  learnedopt plot returns results/navigation2d/*.json --out returns.png
  learnedopt plot trajectories --checkpoint runs/nav/maml/best.pt \
      --checkpoint runs/nav/metasgd/best.pt --out trajectories.png

Needs matplotlib (pip install matplotlib).
"""

# Meta-SGD learns sine in few iterations (val MSE ~0.4 after 3,000 meta-batches of 10 tasks,
# about 100 s on one CPU core); MAML needs tens of thousands for the same.
DEMO_ALGORITHM, DEMO_ITERATIONS, DEMO_META_BATCH = "metasgd", 3000, 10

# train's run settings when neither a flag nor a --protocol gives them.
RUN_DEFAULTS = {"iterations": 20000, "val_every": 500, "val_tasks": 100}

# The common algorithm flags and the option each sets (see each algorithm's option_defaults).
OPTION_FLAGS = {"inner_steps": "inner_steps", "test_inner_steps": "test_inner_steps",
                "meta_batch": "meta_batch_size", "first_order": "first_order"}


def _int_at_least(low: int, expected: str):
    """An argparse type: an int >= ``low``; ``expected`` describes it in the error message."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")


def _duration(text: str) -> str:
    """An argparse type: a duration (learnedopt.interrupts.parse_duration), kept as text."""
    from learnedopt.interrupts import parse_duration
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
_non_negative_int = _int_at_least(0, "an integer >= 0")


def parse_option(text: str) -> tuple[str, Any]:
    """'key=value' with value read as JSON (0.4, 5, true, [1, 2], "x") or else as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--opt expects key=value, got {text!r}")
    literals = {"True": True, "False": False, "None": None}
    if raw in literals:
        return key, literals[raw]
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def _alphabet_list(text: str) -> list[str]:
    """'A,B,C' -> ['A', 'B', 'C']; 'none' -> [] (no validation alphabets)."""
    if text.strip().lower() == "none":
        return []
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated alphabet names or 'none', "
                                         f"got {text!r}")
    return names


# The Omniglot-only task flags: (flag, attribute), refused for the other tasks.
OMNIGLOT_FLAGS = (("--within-alphabet", "within_alphabet"), ("--rotations/--no-rotations",
                  "rotations"), ("--val-alphabets", "val_alphabets"))


def _omniglot_flags_given(args: argparse.Namespace) -> list[str]:
    return [flag for flag, attr in OMNIGLOT_FLAGS if getattr(args, attr, None) is not None]


def _add_runtime(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--backend", default="auto", choices=("auto", "fused", "reference"),
                        help="fused C++/CUDA kernels, the pure-PyTorch reference, or auto: fused "
                             "where compiled for the device (default: auto)")
    parser.add_argument("--dist-timeout", type=float, metavar="SECONDS",
                        help="under torchrun: how long a rank waits for the others in a collective "
                             "before stopping with an error (default: $LEARNEDOPT_DIST_TIMEOUT or "
                             "300)")


def _add_task(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("task")
    group.add_argument("--task", default=None,
                       choices=("sine", "omniglot", "images", "custom", "navigation2d"),
                       help="sine regression, Omniglot, an image folder root/<split>/<class>/ "
                            "such as miniImageNet, custom: your own, with --tasks, or "
                            "navigation2d: meta-RL, 2D point navigation (default: sine, or custom "
                            "when --tasks is given)")
    group.add_argument("--tasks", dest="tasks_factory", metavar="MODULE:ATTR",
                       help="your own task sampler: the import path of a function (or class) "
                            "that returns it, or of the sampler itself (see learnedopt.tasks)")
    group.add_argument("--tasks-opt", action="append", type=parse_option, default=[],
                       metavar="KEY=VALUE", help="keyword argument of the --tasks factory, repeatable")
    group.add_argument("--data-root", help="data directory (omniglot, images)")
    group.add_argument("--ways", type=_positive_int, help="classes per task (omniglot, images)")
    group.add_argument("--shots", type=_positive_int,
                       help="support examples per class (sine: support points; default 10)")
    group.add_argument("--queries", type=_positive_int,
                       help="query examples per class (sine: query points; default 10)")
    group.add_argument("--split", choices=("vinyals", "maml", "lake"),
                       help="Omniglot class split (default: the sampler's)")
    group.add_argument("--image-size", type=_positive_int, help="image side in pixels")
    group.add_argument("--within-alphabet", action="store_const", const=True, default=None,
                       help="omniglot: every task's classes come from one alphabet (Lake et al.'s "
                            "harder task)")
    rotations = group.add_mutually_exclusive_group()
    rotations.add_argument("--rotations", dest="rotations", action="store_const", const=True,
                           default=None, help="omniglot: the 90/180/270-degree rotations of each "
                                              "character are classes too (the default)")
    rotations.add_argument("--no-rotations", dest="rotations", action="store_const", const=False,
                           help="omniglot: the characters as drawn only (Lake et al.)")
    group.add_argument("--val-alphabets", type=_alphabet_list, metavar="A,B,...",
                       help="omniglot --split lake: the background alphabets held out for "
                            "validation, comma-separated, or 'none' (default: "
                            "Bengali,Cyrillic,Futurama,Hebrew,Korean)")
    group.add_argument("--cache-dir", help="where decoded images are cached")
    group.add_argument("--reward", choices=("distance", "squared"),
                       help="navigation2d: minus the distance to the goal (the public code's, "
                            "default) or minus its square (the MAML paper's text)")


def _task_spec(args: argparse.Namespace) -> dict[str, Any]:
    if args.tasks_factory is not None or args.task == "custom":
        if args.task not in (None, "custom"):
            raise ValueError(f"--tasks gives your own tasks; it does not combine with --task {args.task}")
        if args.tasks_factory is None:
            raise ValueError("--task custom needs --tasks MODULE:ATTR")
        ignored = [f for f, v in (("--data-root", args.data_root), ("--ways", args.ways),
                                  ("--shots", args.shots), ("--queries", args.queries),
                                  ("--split", args.split), ("--image-size", args.image_size),
                                  ("--reward", args.reward))
                   if v is not None] + _omniglot_flags_given(args)
        if ignored:
            raise ValueError(f"{', '.join(ignored)} describe the built-in tasks; pass your tasks' "
                             f"settings with --tasks-opt key=value")
        return {"name": "custom", "factory": args.tasks_factory, "kwargs": dict(args.tasks_opt)}
    if args.tasks_opt:
        raise ValueError("--tasks-opt needs --tasks MODULE:ATTR")
    args.task = args.task or "sine"
    if args.task != "navigation2d" and args.reward is not None:
        raise ValueError("--reward applies to --task navigation2d only")
    if args.task == "navigation2d":
        ignored = [flag for flag, value in (
            ("--data-root", args.data_root), ("--ways", args.ways), ("--shots", args.shots),
            ("--queries", args.queries), ("--split", args.split), ("--image-size", args.image_size),
            ("--cache-dir", args.cache_dir)) if value is not None] + _omniglot_flags_given(args)
        if ignored:
            raise ValueError(f"{', '.join(ignored)} do not apply to --task navigation2d (its "
                             f"trajectories per task are --opt trajectories=N)")
        return {"name": "navigation2d", "reward": args.reward or "distance"}
    if args.task == "sine":
        ignored = [flag for flag, value in (("--data-root", args.data_root), ("--ways", args.ways),
                                            ("--split", args.split), ("--image-size", args.image_size))
                   if value is not None] + _omniglot_flags_given(args)
        if ignored:
            raise ValueError(f"{', '.join(ignored)} do not apply to --task sine")
        return {"name": "sine", "shots": args.shots or 10, "queries": args.queries or 10}
    if args.data_root is None:
        raise ValueError(f"--task {args.task} needs --data-root DIR")
    if args.task == "images" and args.split is not None:
        raise ValueError("--split applies to --task omniglot only (image folders are split by "
                         "directory)")
    if args.task == "images" and _omniglot_flags_given(args):
        raise ValueError(f"{', '.join(_omniglot_flags_given(args))} apply to --task omniglot only")
    if args.val_alphabets is not None and args.split != "lake":
        raise ValueError("--val-alphabets applies to --split lake only (the other splits hold "
                         "out characters)")
    spec = {"name": args.task, "data_root": str(args.data_root), "ways": args.ways,
            "shots": args.shots, "queries": args.queries, "split": args.split,
            "image_size": args.image_size, "cache_dir": args.cache_dir,
            "rotations": args.rotations, "within_alphabet": args.within_alphabet,
            "val_alphabets": args.val_alphabets}
    return {k: v for k, v in spec.items() if v is not None}


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="learnedopt", formatter_class=formatter, epilog=MAIN_EPILOG,
        description="Meta-train, evaluate and plot learned optimizers (meta-learner LSTM, TURTLE) "
                    "and their baselines (MAML, Meta-SGD, TAML, transfer learning).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # ---- train ----
    p = sub.add_parser("train", formatter_class=formatter, epilog=TRAIN_EPILOG,
                       help="meta-train an algorithm; writes a run directory",
                       description="Meta-train an algorithm on a task distribution. Algorithm "
                                   "options default to the paper settings for the task (SPEC).")
    p.add_argument("--algorithm",
                   help="maml, fomaml, metasgd, taml, metalstm, metalstm++, enhanced-lstm, turtle, "
                        "scratch, finetune, baseline++")
    p.add_argument("--out", help="run directory to create (or resume); required unless "
                                 "--resume RUN_DIR")
    p.add_argument("--protocol", help="a named experiment whose task, per-algorithm options and "
                                      "run settings fill in what the flags leave unset: "
                                      "stress-test, omniglot20, lake (see 'learnedopt protocol "
                                      "show NAME')")
    _add_task(p)
    model = p.add_argument_group("your own model (default: the paper's learner for the task)")
    model.add_argument("--model", dest="model_factory", metavar="MODULE:ATTR",
                       help="an nn.Module to meta-train: the import path of a function or class "
                            "that returns it (e.g. mypkg.nets:resnet12)")
    model.add_argument("--model-opt", action="append", type=parse_option, default=[],
                       metavar="KEY=VALUE", help="keyword argument of the --model factory, repeatable")
    model.add_argument("--loss", help="mse, cross_entropy, or MODULE:ATTR of loss_fn(outputs, "
                                      "targets) (default: after the tasks' kind)")
    model.add_argument("--head", help="name of the model's final nn.Linear (needed by the "
                                      "transfer baselines)")
    model.add_argument("--task-family", choices=("sine", "omniglot", "images"),
                       help="whose paper defaults the algorithm options take (default: sine for "
                            "regression, images otherwise)")
    model.add_argument("--batching", choices=("auto", "vmap", "loop"), default="auto",
                       help="how a meta-batch of tasks runs through the model (default: auto)")
    algo = p.add_argument_group("algorithm options (defaults: the paper's for the task)")
    algo.add_argument("--inner-steps", type=_non_negative_int, help="inner steps during meta-training")
    algo.add_argument("--test-inner-steps", type=_non_negative_int,
                      help="inner steps at validation and meta-test")
    algo.add_argument("--meta-batch", type=_positive_int, help="tasks per meta-update")
    order = algo.add_mutually_exclusive_group()
    order.add_argument("--first-order", dest="first_order", action="store_const", const=True,
                       help="first-order meta-gradients (treat inner gradients as constants)")
    order.add_argument("--second-order", dest="first_order", action="store_const", const=False,
                       help="second-order meta-gradients (through the inner gradients)")
    algo.add_argument("--opt", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
                      help="any other algorithm option, repeatable (e.g. --opt inner_lr=0.4)")
    run = p.add_argument_group("run")
    run.add_argument("--iterations", type=_positive_int,
                     help=f"meta-iterations (default: the protocol's, else "
                          f"{RUN_DEFAULTS['iterations']})")
    run.add_argument("--val-every", type=_positive_int,
                     help=f"validate every N iterations; best.pt keeps the best (default: the "
                          f"protocol's, else {RUN_DEFAULTS['val_every']})")
    run.add_argument("--val-tasks", type=_positive_int,
                     help=f"fixed validation tasks (default: the protocol's, else "
                          f"{RUN_DEFAULTS['val_tasks']})")
    run.add_argument("--val-batch", type=_positive_int, default=25,
                     help="validation tasks adapted at once (default: 25); lower it to bound the "
                          "memory of a large learner (the tasks are the same for any value)")
    run.add_argument("--log-every", type=_positive_int, default=50,
                     help="average training metrics over N iterations per log line (default: 50)")
    run.add_argument("--checkpoint-every", type=_positive_int,
                     help="write last.pt every N iterations (default: at every validation)")
    run.add_argument("--seed", type=int, default=0, help="seed for initialisation and tasks")
    run.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                     help="continue a run from its last.pt (bitwise on CPU): --resume RUN_DIR "
                          "alone takes every setting from RUN_DIR/config.json (only --iterations, "
                          "--no-progress, --backend and --time-limit may be added); plain "
                          "--resume continues --out with the flags given again")
    run.add_argument("--time-limit", type=_duration, metavar="DURATION",
                     help="stop cleanly with a checkpoint before this much wall time (2h, 90m, "
                          "1h30m, 45s or seconds); exit code 75, resume with --resume RUN_DIR")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_runtime(run)

    # ---- eval ----
    p = sub.add_parser("eval", formatter_class=formatter, epilog=EVAL_EPILOG,
                       help="meta-test a checkpoint: mean ± 95%% CI over many tasks",
                       description="Meta-test a checkpoint on fixed tasks of a split.")
    p.add_argument("--checkpoint", required=True, help="a .pt written by 'learnedopt train'")
    p.add_argument("--tasks", type=_positive_int,
                   help="meta-test tasks (default: 2000 for sine, 600 otherwise)")
    p.add_argument("--test-inner-steps", type=_non_negative_int,
                   help="inner steps at test (default: the checkpoint's test setting)")
    p.add_argument("--split", default="test", choices=("test", "val"), help="(default: test)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fixed test tasks (default: 0)")
    p.add_argument("--batch", type=_positive_int, default=25, help="tasks per batch (default: 25)")
    p.add_argument("--data-root", help="data directory, if it moved since training")
    p.add_argument("--out", help="write the result JSON here")
    _add_runtime(p)

    # ---- plot ----
    p = sub.add_parser("plot", formatter_class=formatter, epilog=PLOT_EPILOG,
                       help="write figures (PNG) from runs, checkpoints or results",
                       description="Write a figure as a PNG file.")
    kinds = p.add_subparsers(dest="figure", metavar="FIGURE", required=True)
    q = kinds.add_parser("curves", help="meta-training loss and validation curves of runs")
    q.add_argument("runs", nargs="+", help="run directories (or their metrics.jsonl)")
    q.add_argument("--out", required=True, help="PNG file to write")
    q = kinds.add_parser("gates", help="meta-learner LSTM input/forget gates over inner steps")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--data-root", help="data directory, if it moved since training")
    q.add_argument("--seed", type=int, default=0, help="which test task (default: 0)")
    q.add_argument("--out", required=True, help="PNG file to write")
    q = kinds.add_parser("sine-fit", help="sine fits before and after adaptation")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--tasks", type=_positive_int, default=4, help="tasks to draw (default: 4)")
    q.add_argument("--steps", type=_non_negative_int,
                   help="inner steps (default: the checkpoint's test setting)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True, help="PNG file to write")
    q = kinds.add_parser("returns", help="navigation2d: return against inner steps from result "
                                         "JSONs (MAML Fig. 4)")
    q.add_argument("results", nargs="+", help="result files written by 'learnedopt eval --out'")
    q.add_argument("--out", required=True, help="PNG file to write")
    q = kinds.add_parser("trajectories", help="navigation2d: trajectories before and after "
                                              "adaptation (Meta-SGD Fig. 4)")
    q.add_argument("--checkpoint", action="append", required=True,
                   help="a navigation2d checkpoint; repeat for one panel each")
    q.add_argument("--goals", type=_positive_int, default=4, help="test goals (default: 4)")
    q.add_argument("--steps", type=_positive_int, default=1, help="inner steps (default: 1)")
    q.add_argument("--seed", type=int, default=0, help="seed of the test goals (default: 0)")
    q.add_argument("--out", required=True, help="PNG file to write")
    q = kinds.add_parser("ways", help="accuracy against number of ways from result JSONs")
    q.add_argument("results", nargs="+",
                   help="result files written by 'learnedopt eval --out', directories of them "
                        "(searched recursively) or quoted glob patterns ('results/**/*.json')")
    q.add_argument("--out", required=True, help="PNG file to write")

    # ---- protocol ----
    p = sub.add_parser("protocol", formatter_class=formatter,
                       help="list the named experiment protocols or show one's option sets",
                       description="The seeds' Omniglot experiments as option sets for "
                                   "'learnedopt train --protocol NAME': task, per-algorithm "
                                   "options, run settings and meta-test tasks, with their sources.",
                       epilog="examples:\n  learnedopt protocol list\n"
                              "  learnedopt protocol show stress-test\n"
                              "  learnedopt train --protocol stress-test --algorithm metalstm++ "
                              "--ways 50 --data-root DATA --out runs/st/metalstm++-50w")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="the protocols, one line each")
    q = actions.add_parser("show", help="one protocol's settings")
    q.add_argument("name", help="a protocol name (learnedopt protocol list)")

    # ---- export-rule ----
    p = sub.add_parser("export-rule", help="write the rule file of a checkpoint for the drop-in "
                                            "optimizers (learnedopt.optim)",
                       description="Write what transfers from a meta-training checkpoint (the "
                                   "learned rule, its step sizes: per parameter when the learner "
                                   "names them) to a rule file for LSTMOptimizer / "
                                   "TurtleOptimizer / MetaSGD.from_pretrained. The same as "
                                   "'python -m learnedopt.optim export-rule'.")
    p.add_argument("checkpoint", help="a .pt written by 'learnedopt train' (best.pt, last.pt)")
    p.add_argument("out", help="the rule file to write (.pt)")

    # ---- info ----
    sub.add_parser("info", help="versions, fused-kernel backends and devices",
                   description="Print the learnedopt and torch versions, which fused kernels this "
                               "build has, and the devices torch sees.")

    # ---- demo ----
    p = sub.add_parser("demo", formatter_class=formatter,
                       help="train + meta-test + plot on sine in a few minutes",
                       description="Meta-train on 10-shot sine regression, meta-test on 2,000 "
                                   "tasks, print the result and write plots, all in --out. "
                                   "Running it again finishes or reuses the same run.",
                       epilog="examples:\n  learnedopt demo --out runs/demo\n"
                              "  learnedopt demo --algorithm maml --iterations 20000 --out runs/maml")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--algorithm", default=DEMO_ALGORITHM, help=f"(default: {DEMO_ALGORITHM})")
    p.add_argument("--iterations", type=_positive_int, default=DEMO_ITERATIONS,
                   help=f"meta-iterations (default: {DEMO_ITERATIONS})")
    p.add_argument("--meta-batch", type=_positive_int, default=DEMO_META_BATCH,
                   help=f"tasks per meta-update (default: {DEMO_META_BATCH}, fewer than the "
                        f"papers' 25 so that the demo takes minutes)")
    p.add_argument("--tasks", type=_positive_int, default=2000,
                   help="meta-test tasks (default: 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_runtime(p)
    return parser


def _apply_protocol(args: argparse.Namespace) -> dict[str, Any]:
    """Fill the task and run flags the user left unset from --protocol; returns the protocol's
    options for the algorithm ({} without a protocol), which --opt and the flags override."""
    if args.protocol is None:
        for name, value in RUN_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        return {}
    from learnedopt import protocols
    protocol = protocols.get_protocol(args.protocol)
    if args.task not in (None, "omniglot") or args.tasks_factory is not None:
        raise ValueError(f"--protocol {protocol.name} is an Omniglot protocol; it does not "
                         f"combine with {'--tasks' if args.tasks_factory else '--task ' + args.task}")
    args.task = "omniglot"
    for key, value in protocol.task_spec(args.ways, args.shots).items():
        if key != "name" and getattr(args, key) is None:
            setattr(args, key, value)
    for name, value in protocol.run.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for warning in protocols.check_setting(protocol, args.algorithm, args.ways, args.shots):
        print(f"learnedopt train: note: {warning}", file=sys.stderr)
    return protocol.algorithm_options(args.algorithm)


def _train_config(args: argparse.Namespace):
    from learnedopt.train import TrainConfig
    protocol_options = _apply_protocol(args)
    options = dict(args.opt)
    task_keys = {"within_alphabet": "--within-alphabet", "rotations": "--rotations/--no-rotations",
                 "val_alphabets": "--val-alphabets", "split": "--split", "ways": "--ways",
                 "shots": "--shots", "queries": "--queries", "image_size": "--image-size"}
    misplaced = [f"--opt {k}=... (use {task_keys[k]})" for k in options if k in task_keys]
    if misplaced:
        raise ValueError(f"{', '.join(misplaced)}: these describe the tasks, not the algorithm")
    for attr, key in OPTION_FLAGS.items():
        value = getattr(args, attr)
        if value is not None:
            if key in options and options[key] != value:
                raise ValueError(f"--{attr.replace('_', '-')} {value} and --opt {key}="
                                 f"{options[key]} disagree")
            options[key] = value
    options = {**protocol_options, **options}
    return TrainConfig(algorithm=args.algorithm, task=_task_spec(args), out=str(args.out),
                       options=options, learner=_learner_spec(args),
                       iterations=args.iterations, val_every=args.val_every,
                       val_tasks=args.val_tasks, eval_batch=args.val_batch, log_every=args.log_every,
                       checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device,
                       backend=args.backend, progress=False if args.no_progress else None,
                       protocol=args.protocol)


def _learner_spec(args: argparse.Namespace) -> dict[str, Any] | None:
    """A module learner's spec from --model and its flags; None: the paper's learner."""
    flags = [f for f, v in (("--model-opt", args.model_opt), ("--loss", args.loss),
                            ("--head", args.head), ("--task-family", args.task_family))
             if v] + (["--batching"] if args.batching != "auto" else [])
    if args.model_factory is None:
        if flags:
            raise ValueError(f"{', '.join(flags)} describe your own model: give it with --model "
                             f"MODULE:ATTR")
        return None
    return {"name": "module", "factory": args.model_factory, "kwargs": dict(args.model_opt),
            "loss": args.loss or "auto", "head": args.head, "task_family": args.task_family,
            "batching": args.batching}


# train flags a --resume RUN_DIR may add (the rest would change the recorded run), and the
# TrainConfig field each run flag sets (refused by learnedopt.train.resume_config, naming it).
RESUME_FLAGS = ("resume", "out", "iterations", "no_progress", "backend", "time_limit")
RUN_FLAG_FIELDS = {"val_every": "val_every", "val_tasks": "val_tasks", "log_every": "log_every",
                   "checkpoint_every": "checkpoint_every", "seed": "seed", "device": "device"}


def _given_train_flags(argv: Sequence[str]) -> set[str]:
    """The destinations of the train flags present on the command line (not defaulted)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train_parser = sub.choices["train"]
    for action in train_parser._actions:
        action.default = argparse.SUPPRESS
    rest = list(argv)[list(argv).index("train") + 1:]
    return set(vars(train_parser.parse_args(rest)))


def _resume_config(args: argparse.Namespace):
    """--resume RUN_DIR: the recorded config, with the resumable flags given."""
    from learnedopt.train import resume_config
    run_dir = args.resume
    given = _given_train_flags(args.argv)
    if args.out is not None and Path(args.out) != Path(run_dir):
        raise ValueError(f"--resume {run_dir} and --out {args.out} name different run "
                         f"directories (give one)")
    flags = sorted(f for f in given if f not in RESUME_FLAGS and f not in RUN_FLAG_FIELDS)
    if flags:
        names = ", ".join("--" + f.replace("_", "-") for f in flags)
        raise ValueError(f"--resume {run_dir} continues the run recorded in its config.json; "
                         f"{names} would change it (a resumed run may add only --iterations, "
                         f"--no-progress, --backend and --time-limit): drop {names}")
    changes = {RUN_FLAG_FIELDS[f]: getattr(args, f) for f in given if f in RUN_FLAG_FIELDS}
    for flag, field in (("iterations", "iterations"), ("backend", "backend")):
        if flag in given:
            changes[field] = getattr(args, flag)
    if "no_progress" in given:
        changes["progress"] = False
    return resume_config(run_dir, **changes)


def cmd_train(args: argparse.Namespace) -> int:
    from learnedopt.checkpoint import load_checkpoint
    from learnedopt.evaluate import format_value
    from learnedopt.train import train
    if isinstance(args.resume, str):
        config = _resume_config(args)
    else:
        missing = [f for f, v in (("--algorithm", args.algorithm), ("--out", args.out)) if v is None]
        if missing:
            raise ValueError(f"train needs {' and '.join(missing)} (or --resume RUN_DIR to "
                             f"continue a recorded run)")
        config = _train_config(args)
    run_dir = train(config, resume=bool(args.resume), time_limit=args.time_limit)
    if not distributed.current().is_writer:
        return 0
    best = load_checkpoint(run_dir / "best.pt")["best"]
    chosen = ("" if best["iteration"] is None else
              f", validation {best['metric']} {format_value(best['metric'], best['value'])} at "
              f"iteration {best['iteration']}")
    print(f"run written to {run_dir}; best model: {run_dir / 'best.pt'}{chosen}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from learnedopt.evaluate import evaluate_checkpoint, format_result, write_result
    result = evaluate_checkpoint(args.checkpoint, num_tasks=args.tasks,
                                 test_steps=args.test_inner_steps, split=args.split, seed=args.seed,
                                 batch_size=args.batch, device=args.device, backend=args.backend,
                                 data_root=args.data_root, command=args.command_line)
    if not distributed.current().is_writer:
        return 0
    print(format_result(result))
    if args.out:
        write_result(args.out, result)
        print(f"result written to {args.out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from learnedopt import plots
    if args.figure == "curves":
        out = plots.plot_curves(args.runs, args.out)
    elif args.figure == "gates":
        out = plots.plot_gates(args.checkpoint, args.out, seed=args.seed, data_root=args.data_root)
    elif args.figure == "sine-fit":
        out = plots.plot_sine_fit(args.checkpoint, args.out, tasks=args.tasks, steps=args.steps,
                                  seed=args.seed)
    elif args.figure in ("returns", "trajectories"):
        from learnedopt.rl import plots as rl_plots
        out = (rl_plots.plot_returns(args.results, args.out) if args.figure == "returns" else
               rl_plots.plot_trajectories(args.checkpoint, args.out, goals=args.goals,
                                          steps=args.steps, seed=args.seed))
    else:
        out = plots.plot_ways(args.results, args.out)
    print(f"figure written to {out}")
    return 0


def cmd_protocol(args: argparse.Namespace) -> int:
    from learnedopt import protocols
    if args.action == "list":
        width = max(map(len, protocols.PROTOCOLS))
        for protocol in protocols.PROTOCOLS.values():
            print(f"{protocol.name:<{width}}  {protocol.summary}")
    else:
        print(protocols.describe(protocols.get_protocol(args.name)))
    return 0


def cmd_export_rule(args: argparse.Namespace) -> int:
    from learnedopt.optim.pretrained import describe_rule, export_rule
    print(f"wrote {args.out}: {describe_rule(export_rule(args.checkpoint, args.out))}")
    return 0


def info_text() -> str:
    import learnedopt
    from learnedopt import ops
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})"
                    for i in range(torch.cuda.device_count())]
    return "\n".join([
        f"learnedopt {learnedopt.__version__} ({Path(learnedopt.__file__).parent})",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), "
        f"python {platform.python_version()}, {platform.platform()}",
        f"ops: {ops.describe()}",
        f"devices: {', '.join(devices)}",
    ])


def cmd_info(args: argparse.Namespace) -> int:
    print(info_text())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from learnedopt import plots
    from learnedopt.evaluate import evaluate_checkpoint, format_result, write_result
    from learnedopt.train import TrainConfig, train
    out = Path(args.out)
    config = TrainConfig(algorithm=args.algorithm, task={"name": "sine", "shots": 10, "queries": 10},
                         out=str(out / "run"), options={"meta_batch_size": args.meta_batch},
                         iterations=args.iterations,
                         val_every=max(1, args.iterations // 10), val_tasks=100, seed=args.seed,
                         device=args.device, backend=args.backend,
                         progress=False if args.no_progress else None)
    print(f"1/3 meta-training {args.algorithm} on 10-shot sine for {args.iterations} iterations")
    run_dir = train(config, resume=(out / "run" / "last.pt").exists())
    print(f"2/3 meta-testing {run_dir / 'best.pt'} on {args.tasks} tasks")
    result = evaluate_checkpoint(run_dir / "best.pt", num_tasks=args.tasks, device=args.device,
                                 backend=args.backend, command=args.command_line)
    if not distributed.current().is_writer:
        return 0
    write_result(out / "result.json", result)
    print("    " + format_result(result))
    print("3/3 plotting")
    try:
        figures = [plots.plot_curves([run_dir], out / "curves.png"),
                   plots.plot_sine_fit(run_dir / "best.pt", out / "sine_fit.png")]
    except RuntimeError as exc:  # matplotlib missing: the numbers above still stand
        print(f"    skipped: {exc}")
        figures = []
    print(f"done: {out / 'result.json'}" + "".join(f", {f}" for f in figures))
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "plot": cmd_plot, "info": cmd_info,
            "demo": cmd_demo, "export-rule": cmd_export_rule, "protocol": cmd_protocol}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["learnedopt", *argv])  # recorded in result files
    args.argv = argv
    if args.command is None:
        print(info_text())
        print("\nrun 'learnedopt --help' for the commands")
        return 0
    from learnedopt.interrupts import RunInterrupted, TimeLimitReached
    try:
        if hasattr(args, "dist_timeout"):  # under torchrun: join the job before anything else
            distributed.init_from_env(args.device, args.dist_timeout)
        return COMMANDS[args.command](args)
    except (RunInterrupted, TimeLimitReached) as stop:  # a checkpoint was written (or kept)
        print(stop, file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # outside a training loop: nothing to save
        print(f"learnedopt {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError, RuntimeError, FloatingPointError) as exc:
        if os.environ.get("LEARNEDOPT_TRACEBACK"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"learnedopt {args.command}: error: {message}", file=sys.stderr)
        print("(set LEARNEDOPT_TRACEBACK=1 to see the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
