"""Meta-test evaluation: adapt to many fixed tasks, report mean ± 95% confidence interval, and record
the full protocol next to the number (SPEC §7: split, image size, ways, shots, query size, inner
steps at train and test, FO/SO, batch-norm mode, iterations, seed)."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

import learnedopt
from learnedopt import distributed, experiment, ops
from learnedopt.checkpoint import atomic_write_bytes, load_checkpoint, require_keys

RESULT_FORMAT = "learnedopt-result/1"
Z_95 = 1.96


def default_num_tasks(task_name: str) -> int:
    """2,000 sine tasks (MAML / Meta-SGD protocol), 600 for the image benchmarks (SPEC §7)."""
    return 2000 if task_name == "sine" else 600


def summarize(values: torch.Tensor) -> dict[str, float | int | None]:
    """Mean and 95% CI half-width 1.96 · s / sqrt(n), with s the sample standard deviation
    (n − 1 in the denominator; at the ≥ 600 tasks reported the choice changes nothing visible)."""
    values = values.detach().to(torch.float64).flatten().cpu()
    n = values.numel()
    if n == 0:
        raise ValueError("summarize: no values (evaluated zero tasks)")
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise ValueError(f"summarize: {bad} of {n} per-task values are NaN or infinite")
    mean = values.mean().item()
    if n < 2:
        return {"mean": mean, "std": None, "ci95": None, "tasks": n}
    std = values.std(unbiased=True).item()
    return {"mean": mean, "std": std, "ci95": Z_95 * std / math.sqrt(n), "tasks": n}


def evaluate_tasks(algorithm, sampler, split: str, num_tasks: int, batch_size: int, seed: int,
                   steps: int | None = None) -> dict[str, torch.Tensor]:
    """Per-task query metrics over the sampler's fixed ``split`` tasks: {"loss": (num_tasks,), ...}.
    The algorithm is put in eval mode (batch-norm running statistics where it keeps them) and
    restored afterwards. Under torch.distributed the batches are dealt out to the ranks and the
    values gathered: every rank returns the same tensors a single process would."""
    if num_tasks < 1:
        raise ValueError(f"number of evaluation tasks must be >= 1, got {num_tasks}")
    if batch_size < 1:
        raise ValueError(f"evaluation batch size must be >= 1, got {batch_size}")
    was_training = algorithm.training
    algorithm.eval()
    context = distributed.current()
    mine: dict[int, dict[str, torch.Tensor]] = {}  # batch index -> per-task values
    try:
        batches = sampler.fixed_tasks(split, num_tasks, batch_size, seed)
        for index, batch in context.my_batches(batches):
            mine[index] = {name: value.detach().reshape(-1).cpu()
                           for name, value in algorithm.adapt_and_evaluate(batch, steps).items()}
    finally:
        algorithm.train(was_training)
    return context.gather_per_task(mine)


def protocol(checkpoint: dict[str, Any], split: str, num_tasks: int, test_steps: int | None,
             seed: int, batch_size: int) -> dict[str, Any]:
    options = checkpoint["options"]
    task = checkpoint.get("task", {})
    sampler_config = checkpoint.get("protocol", {})
    first_order = options.get("first_order")
    return {
        "task": task.get("name"),
        "split": split,
        "class_split": task.get("split", sampler_config.get("split")),
        "image_size": task.get("image_size", sampler_config.get("image_size")),
        "ways": task.get("ways", sampler_config.get("ways")),
        "shots": task.get("shots", sampler_config.get("k_shot", sampler_config.get("shots"))),
        "queries": task.get("queries", sampler_config.get("k_query", sampler_config.get("queries"))),
        "inner_steps_train": options.get("inner_steps"),
        "inner_steps_test": test_steps if test_steps is not None else options.get(
            "test_inner_steps"),
        "meta_gradient": None if first_order is None else ("first-order" if first_order
                                                             else "second-order"),
        "batch_norm": options.get("bn_mode"),
        "meta_batch": options.get("meta_batch_size"),
        "iterations": int(checkpoint["iteration"]),  # of the evaluated (e.g. best) model
        "run_iterations": checkpoint.get("config", {}).get("iterations"),
        "train_seed": checkpoint.get("config", {}).get("seed"),
        "test_seed": seed,
        "tasks": num_tasks,
        # Tasks adapted at once; the fixed tasks themselves do not depend on it
        # (learnedopt.tasks.base.fixed_task_batches).
        "task_batch": batch_size,
        "sampler": sampler_config,
    }


def rebuild_algorithm(checkpoint: dict[str, Any], device: str | torch.device = "cpu", *,
                      model=None, loss=None, metrics=None):
    """The algorithm exactly as checkpointed (learner, options, every meta-parameter). A user
    model (and loss / metrics) that the checkpoint could not record as import paths must be
    handed in again."""
    if "learner" not in checkpoint:
        raise ValueError("the checkpoint records no learner spec ('learner'); it cannot be rebuilt")
    learner = experiment.build_learner(
        checkpoint["learner"], model=model,
        **{k: v for k, v in (("loss", loss), ("metrics", metrics)) if v is not None})
    algorithm = experiment.build_algorithm(checkpoint["algorithm"], learner, checkpoint["options"])
    try:
        algorithm.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint does not fit algorithm {checkpoint['algorithm']!r} built from "
                         f"its own options: {exc}") from exc
    return algorithm.to(device)


def evaluate_checkpoint(path: str | os.PathLike, num_tasks: int | None = None,
                        test_steps: int | None = None, split: str = "test", seed: int = 0,
                        batch_size: int = 25, device: str = "cpu", backend: str = "auto",
                        data_root: str | None = None, command: str | None = None, *,
                        model=None, tasks=None, loss=None, metrics=None) -> dict[str, Any]:
    """Meta-test the model in a checkpoint; returns the result record (see :func:`write_result`).
    ``data_root`` replaces the recorded one (a run moved to another machine); ``model``,
    ``tasks``, ``loss``, ``metrics``: user objects the checkpoint could not record as import
    paths (see :func:`learnedopt.train.meta_train`)."""
    checkpoint = load_checkpoint(path)
    require_keys(checkpoint, ("learner", "task"), str(path), "rebuild the model and its tasks")
    task_spec = dict(checkpoint.get("task") or {})
    if not task_spec:
        raise ValueError(f"{str(path)!r} records no task spec; cannot rebuild its tasks")
    if data_root is not None:
        task_spec["data_root"] = str(data_root)
    num_tasks = default_num_tasks(task_spec["name"]) if num_tasks is None else num_tasks
    context = distributed.init_from_env(device)  # under torchrun: the ranks share the tasks
    device = context.device(device)
    with ops.use_backend(backend):
        sampler = experiment.build_sampler(task_spec, device, tasks)
        algorithm = rebuild_algorithm(checkpoint, device, model=model, loss=loss, metrics=metrics)
        per_task = evaluate_tasks(algorithm, sampler, split, num_tasks, batch_size, seed, test_steps)
        backend_line = ops.describe()
    metric, higher = algorithm.learner.primary_metric
    metrics = {name: summarize(values) for name, values in per_task.items()}
    return {
        "format": RESULT_FORMAT,
        "checkpoint": str(path),
        "algorithm": checkpoint["algorithm"],
        "metric": metric,
        "higher_is_better": higher,
        "mean": metrics[metric]["mean"],
        "ci95": metrics[metric]["ci95"],
        "metrics": metrics,
        "protocol": protocol(checkpoint, split, num_tasks, test_steps, seed, batch_size),
        "options": checkpoint["options"],
        "learner": checkpoint.get("learner"),
        "backend": backend_line,
        "device": str(device),
        "distributed": context.record(),
        "torch": str(torch.__version__),
        "learnedopt": learnedopt.__version__,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version(),
                    "cuda_device": torch.cuda.get_device_name(torch.device(device))
                    if torch.device(device).type == "cuda" else None},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else shlex.join(sys.argv),
    }


def format_value(metric: str, mean: float, ci: float | None = None) -> str:
    """A metric as every command prints it. Accuracy: percent with one decimal, '81.3% ± 0.7%'.
    Other metrics: the CI to two significant digits and the mean to the same decimal place,
    '0.612 ± 0.034', '1.48 ± 0.30' (never '1.48 ± 0.3'); without a CI, four significant digits."""
    if metric == "accuracy":
        text = f"{mean * 100:.1f}%"
        return text if ci is None else f"{text} ± {ci * 100:.1f}%"
    if ci is None or ci <= 0 or not math.isfinite(ci):
        return f"{mean:.4g}" if ci is None else f"{mean:.4g} ± {ci:.2g}"
    decimals = max(0, 1 - math.floor(math.log10(ci)))
    return f"{mean:.{decimals}f} ± {ci:.{decimals}f}"


def format_result(result: dict[str, Any]) -> str:
    """One human line: 'maml on sine (test, 2000 tasks): loss 0.612 ± 0.034 (95% CI)'."""
    p = result["protocol"]
    ci = result["ci95"]
    what = p["task"] if p.get("ways") is None else f"{p['task']} {p['ways']}-way {p['shots']}-shot"
    return (f"{result['algorithm']} on {what} ({p['split']}, {p['tasks']} tasks, "
            f"{p['inner_steps_test']} inner steps): {result['metric']} "
            f"{format_value(result['metric'], result['mean'], ci)}"
            + (" (95% CI)" if ci is not None else ""))


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(result, indent=2, allow_nan=False) + "\n").encode())


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    try:
        result = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"result file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"result file {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(result, dict) or result.get("format") != RESULT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a learnedopt result file (format "
                         f"{result.get('format') if isinstance(result, dict) else None!r}, "
                         f"expected {RESULT_FORMAT!r})")
    return result
