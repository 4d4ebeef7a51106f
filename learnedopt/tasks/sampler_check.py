"""Check any object against the task-sampler protocol the training loop relies on.

``check_sampler(obj)`` draws a few batches from ``obj`` and raises a :class:`SamplerError` that
names the first thing wrong: a missing attribute or method, a batch whose support and query do
not fit together, labels out of range, tensors on the wrong device, NaNs, a generator that is
ignored (tasks not reproducible), fixed tasks that depend on the batch size they are drawn in, a
``config()`` that is not JSON. :func:`check_task_batch` is the per-batch part, which
:class:`learnedopt.tasks.custom.CustomTasks` also applies to every batch it builds.

The protocol (see :class:`learnedopt.tasks.base.TaskSampler`):

- ``kind``: "regression" or "classification"; ``num_classes``: N of the N-way tasks
  (classification, >= 1) or 0 (regression); ``device``: where the batches' tensors live.
- ``sample(batch_size, generator) -> TaskBatch``: x_* (B, K, ...) and y_* (B, K, ...), any shape
  per example, the same per-example shape and dtype in support and query; classification labels
  are int64 (B, K) in 0..N-1, assigned per task. The tasks depend only on the generator's state
  (same state, same tasks) and advance it (two calls, different tasks).
- ``fixed_tasks(split, num_tasks, batch_size, seed)``: an iterable of TaskBatches for "val" and
  "test", num_tasks in all, at most batch_size each, the same tasks for the same (split, seed)
  whatever the batch size.
- ``config() -> dict``: JSON-able, recorded in checkpoints and results.
- optional ``sample_flat(batch_size, generator) -> (x, y, num_labels)`` for the transfer
  baselines: x (M, ...) with the tasks' per-example shape; classification y int64 (M,) in
  0..num_labels-1, regression y (M, ...) float with the tasks' per-example target shape.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import Tensor

from learnedopt.tasks.base import TaskBatch

KINDS = ("regression", "classification")
FIELDS = ("x_support", "y_support", "x_query", "y_query")


class SamplerError(ValueError):
    """A task sampler does not follow the protocol; the message says what is wrong."""


@dataclass(frozen=True)
class SamplerSummary:
    """What :func:`check_sampler` found: enough to size a learner for the tasks."""
    kind: str
    num_classes: int
    device: torch.device
    support_size: int                 # examples per task in the support set (N*K)
    query_size: int
    x_shape: tuple[int, ...]          # one example's input shape
    y_shape: tuple[int, ...]          # one example's target shape (() for class labels)
    x_dtype: torch.dtype
    y_dtype: torch.dtype
    has_sample_flat: bool


def normalize_device(device: torch.device | str) -> torch.device:
    """The device with its index filled in, so "cuda" and "cuda:0" compare equal."""
    device = torch.device(device)
    if device.index is None and device.type == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if device.index is None and device.type not in ("cpu", "meta"):
        return torch.device(device.type, 0)
    return device


def check_identity(kind: Any, num_classes: Any, who: str) -> None:
    """Raise a SamplerError unless ``kind`` / ``num_classes`` are a valid pair."""
    if kind not in KINDS:
        raise SamplerError(f"{who}: kind must be one of {KINDS}, got {kind!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise SamplerError(f"{who}: num_classes must be an int, got {type(num_classes).__name__} "
                           f"{num_classes!r}")
    if kind == "classification" and num_classes < 1:
        raise SamplerError(f"{who}: a classification sampler needs num_classes >= 1 (the N of "
                           f"N-way tasks), got {num_classes}")
    if kind == "regression" and num_classes != 0:
        raise SamplerError(f"{who}: a regression sampler has num_classes = 0, got {num_classes}")


def check_task_batch(batch: Any, kind: str, num_classes: int, device: torch.device | str,
                     num_tasks: int | None = None, where: str = "batch") -> None:
    """Raise a SamplerError naming the problem unless ``batch`` is a valid TaskBatch of
    ``num_tasks`` tasks (any number when None) of this kind on ``device``."""
    if not isinstance(batch, TaskBatch):
        raise SamplerError(f"{where}: expected a learnedopt.tasks.TaskBatch, got "
                           f"{type(batch).__name__}")
    device = normalize_device(device)
    tensors = {}
    for name in FIELDS:
        t = getattr(batch, name)
        if not isinstance(t, Tensor):
            raise SamplerError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if normalize_device(t.device) != device:
            raise SamplerError(f"{where}: {name} is on {t.device} but the sampler's device is "
                               f"{device}; move the tensors there (tensor.to(device))")
        tensors[name] = t
    for name, t in tensors.items():
        if t.dim() < 2:
            raise SamplerError(f"{where}: {name} must have shape (tasks, examples, ...), got "
                               f"{tuple(t.shape)}")
    if kind == "classification":
        for name in ("y_support", "y_query"):
            if tensors[name].dim() != 2:
                raise SamplerError(f"{where}: classification {name} must be one label per example, "
                                   f"shape (tasks, examples), got {tuple(tensors[name].shape)}")
    tasks = {name: t.shape[0] for name, t in tensors.items()}
    if len(set(tasks.values())) != 1:
        raise SamplerError(f"{where}: the four tensors must hold the same number of tasks (dim 0), "
                           f"got {tasks}")
    if tasks["x_support"] < 1:
        raise SamplerError(f"{where}: a batch must hold at least one task")
    if num_tasks is not None and tasks["x_support"] != num_tasks:
        raise SamplerError(f"{where}: asked for {num_tasks} tasks, got {tasks['x_support']}")
    for part in ("support", "query"):
        x, y = tensors[f"x_{part}"], tensors[f"y_{part}"]
        if x.shape[1] != y.shape[1]:
            raise SamplerError(f"{where}: x_{part} has {x.shape[1]} examples per task but y_{part} "
                               f"has {y.shape[1]} (shapes {tuple(x.shape)} and {tuple(y.shape)})")
        if x.shape[1] < 1:
            raise SamplerError(f"{where}: the {part} set of a task must hold at least one example")
    for prefix in ("x", "y"):
        s, q = tensors[f"{prefix}_support"], tensors[f"{prefix}_query"]
        if s.shape[2:] != q.shape[2:]:
            raise SamplerError(f"{where}: {prefix}_support and {prefix}_query must have the same "
                               f"shape per example, got {tuple(s.shape[2:])} and "
                               f"{tuple(q.shape[2:])}")
        if s.dtype != q.dtype:
            raise SamplerError(f"{where}: {prefix}_support is {s.dtype} but {prefix}_query is "
                               f"{q.dtype}")
    x_dtype, y_dtype = tensors["x_support"].dtype, tensors["y_support"].dtype
    if x_dtype == torch.bool or x_dtype.is_complex:
        raise SamplerError(f"{where}: x must be a real floating-point (or integer, e.g. token id) "
                           f"tensor, got {x_dtype}")
    if kind == "classification":
        if y_dtype != torch.int64:
            raise SamplerError(f"{where}: classification labels must be int64 (y.long()), got "
                               f"{y_dtype}")
        for name in ("y_support", "y_query"):
            y = tensors[name]
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= num_classes:
                bad = y[(y < 0) | (y >= num_classes)][0].item()
                raise SamplerError(f"{where}: {name} holds the label {bad}, outside 0..{num_classes - 1} "
                                   f"(num_classes = {num_classes}); relabel each task's classes "
                                   f"0..N-1")
    elif not y_dtype.is_floating_point:
        raise SamplerError(f"{where}: regression targets must be floating point, got {y_dtype}")
    for name, t in tensors.items():
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise SamplerError(f"{where}: {name} holds {bad} NaN or infinite values")


def check_sampler(sampler: Any, batch_size: int = 3, seed: int = 0,
                  splits: Iterable[str] = ("val", "test"), num_fixed: int = 4) -> SamplerSummary:
    """Validate ``sampler`` against the protocol on a few sampled batches.

    Raises a :class:`SamplerError` naming the first problem; returns a :class:`SamplerSummary` of
    the tasks' shapes when all is well. Draws ``batch_size`` tasks several times with generators
    seeded from ``seed`` on the sampler's device, and ``num_fixed`` fixed tasks of each of
    ``splits``; the training generator and the global RNG are left as they were. Warns (does not
    fail) when "val" and "test" give the same tasks.
    """
    who = type(sampler).__name__
    if batch_size < 1 or num_fixed < 1:
        raise ValueError(f"check_sampler: batch_size and num_fixed must be >= 1, got "
                         f"{batch_size}, {num_fixed}")
    for attribute in ("kind", "num_classes", "device"):
        if not hasattr(sampler, attribute):
            raise SamplerError(f"{who}: missing attribute {attribute!r} "
                               f"(kind: 'regression' | 'classification', num_classes: int, "
                               f"device: torch.device)")
    check_identity(sampler.kind, sampler.num_classes, who)
    kind, num_classes = sampler.kind, sampler.num_classes
    try:
        device = normalize_device(sampler.device)
    except (RuntimeError, TypeError) as exc:
        raise SamplerError(f"{who}: device {sampler.device!r} is not a torch device: {exc}") from None
    signatures = {"sample": "sample(batch_size, generator) -> TaskBatch",
                  "fixed_tasks": "fixed_tasks(split, num_tasks, batch_size, seed) -> iterable of "
                                 "TaskBatch",
                  "config": "config() -> dict"}
    for method, signature in signatures.items():
        if not callable(getattr(sampler, method, None)):
            raise SamplerError(f"{who}: missing method {signature}")
    has_flat = hasattr(sampler, "sample_flat")
    if has_flat and not callable(sampler.sample_flat):
        raise SamplerError(f"{who}: sample_flat must be a method sample_flat(batch_size, "
                           f"generator) -> (x, y, num_labels)")

    config = _call(who, "config()", sampler.config)
    if not isinstance(config, dict):
        raise SamplerError(f"{who}: config() must return a dict, got {type(config).__name__}")
    problem = json_problem(config, "config()")
    if problem:
        raise SamplerError(f"{who}: {problem}; config() is recorded in checkpoints and results as "
                           f"JSON")

    def generator(s: int) -> torch.Generator:
        try:
            return torch.Generator(device=device).manual_seed(s)
        except RuntimeError as exc:
            raise SamplerError(f"{who}: cannot make a torch.Generator on the sampler's device "
                               f"{device} ({exc}); the training loop draws tasks with "
                               f"torch.Generator(device=sampler.device)") from None

    def draw(s: int, calls: int = 1) -> list[TaskBatch]:
        g = generator(s)
        batches = []
        for call in range(calls):
            what = f"sample({batch_size}, generator)"
            batch = _untouched_global_rng(who, what, device,
                                          lambda: _call(who, what, sampler.sample, batch_size, g))
            check_task_batch(batch, kind, num_classes, device, batch_size,
                             f"{who}.{what}" + (f" (call {call + 1})" if call else ""))
            batches.append(batch)
        return batches

    first, second, third = draw(seed, calls=3)
    if not _same(first, draw(seed)[0]):
        raise SamplerError(f"{who}: sample() is not reproducible: the same generator state gave "
                           f"different tasks; draw every random number from the generator passed "
                           f"in (torch.rand(..., generator=generator)), not from numpy / random / "
                           f"an unseeded source")
    if all(_same(first, draw(seed + k)[0]) for k in (1, 2, 3)):
        raise SamplerError(f"{who}: sample() ignores its generator: generators seeded "
                           f"{seed}..{seed + 3} all gave the same tasks")
    if _same(first, second) and _same(first, third):
        raise SamplerError(f"{who}: sample() gave the same tasks on consecutive calls with one "
                           f"generator: it must draw from (and so advance) the generator it is "
                           f"given, or training sees one batch of tasks over and over")
    reference = _shapes(first)

    fixed = {}
    for split in splits:
        fixed[split] = tasks = _fixed(who, sampler, split, num_fixed, num_fixed, seed, device)
        for name, shape in _shapes(tasks).items():
            if name in ("x", "y", "x_dtype", "y_dtype") and shape != reference[name]:
                raise SamplerError(f"{who}: fixed_tasks({split!r}) has per-example {name} "
                                   f"{shape}, sample() has {reference[name]}")
        one_by_one = _fixed(who, sampler, split, num_fixed, 1, seed, device)
        if not _same(tasks, one_by_one):
            raise SamplerError(f"{who}: fixed_tasks({split!r}, ...) gave different tasks in batches "
                               f"of {num_fixed} and of 1: the fixed tasks must depend only on "
                               f"(split, seed), not on the batch size (reuse "
                               f"learnedopt.tasks.base.fixed_task_batches)")
        if not _same(tasks, _fixed(who, sampler, split, num_fixed, num_fixed, seed, device)):
            raise SamplerError(f"{who}: fixed_tasks({split!r}, seed={seed}) is not reproducible: "
                               f"two calls gave different tasks")
        if all(_same(tasks, _fixed(who, sampler, split, num_fixed, num_fixed, seed + k, device))
               for k in (1, 2)):
            raise SamplerError(f"{who}: fixed_tasks({split!r}, ...) ignores its seed: seeds "
                               f"{seed}..{seed + 2} gave the same tasks")
    if "val" in fixed and "test" in fixed and _same(fixed["val"], fixed["test"]):
        warnings.warn(f"{who}: fixed_tasks('val') and fixed_tasks('test') are the same tasks: "
                      f"model selection on validation then tells nothing about the test score",
                      stacklevel=2)

    if has_flat:
        _check_flat(who, sampler, kind, device, batch_size, seed, reference, generator)
    return SamplerSummary(kind=kind, num_classes=num_classes, device=device,
                          support_size=first.x_support.shape[1], query_size=first.x_query.shape[1],
                          x_shape=reference["x"], y_shape=reference["y"],
                          x_dtype=reference["x_dtype"], y_dtype=reference["y_dtype"],
                          has_sample_flat=has_flat)


def _call(who: str, what: str, fn, *args):
    try:
        return fn(*args)
    except SamplerError:
        raise
    except Exception as exc:
        raise SamplerError(f"{who}.{what} raised {type(exc).__name__}: {exc}") from exc


def _rng_states(device: torch.device) -> list[Tensor]:
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def _untouched_global_rng(who: str, what: str, device: torch.device, fn):
    before = _rng_states(device)
    result = fn()
    if not all(torch.equal(a, b) for a, b in zip(before, _rng_states(device))):
        raise SamplerError(f"{who}.{what} used torch's global random generator (torch.rand / "
                           f"randperm / manual_seed without generator=, or a random transform): "
                           f"draw from the generator passed in, so that the same generator state "
                           f"gives the same tasks")
    return result


def _fixed(who: str, sampler, split: str, num_tasks: int, batch_size: int, seed: int,
           device: torch.device) -> list[TaskBatch]:
    what = f"fixed_tasks({split!r}, {num_tasks}, {batch_size}, {seed})"

    def collect():
        iterable = sampler.fixed_tasks(split, num_tasks, batch_size, seed)
        try:
            iterator = iter(iterable)
        except TypeError:
            raise SamplerError(f"{who}.{what} must return an iterable of TaskBatch, got "
                               f"{type(iterable).__name__}") from None
        return list(iterator)

    batches = _untouched_global_rng(who, what, device, lambda: _call(who, what, collect))
    total = 0
    for i, batch in enumerate(batches):
        check_task_batch(batch, sampler.kind, sampler.num_classes, device, None,
                         f"{who}.{what}, batch {i}")
        if batch.num_tasks > batch_size:
            raise SamplerError(f"{who}.{what}: batch {i} holds {batch.num_tasks} tasks, more than "
                               f"the batch size {batch_size}")
        total += batch.num_tasks
    if total != num_tasks:
        raise SamplerError(f"{who}.{what} gave {total} tasks in all, not {num_tasks}")
    return batches


def _check_flat(who, sampler, kind, device, batch_size, seed, reference, generator) -> None:
    what = f"sample_flat({batch_size}, generator)"

    def draw():
        g = generator(seed)
        return _untouched_global_rng(who, what, device,
                                     lambda: _call(who, what, sampler.sample_flat, batch_size, g))

    out = draw()
    if not isinstance(out, tuple) or len(out) != 3:
        raise SamplerError(f"{who}.{what} must return a tuple (x, y, num_labels), got "
                           f"{type(out).__name__}")
    x, y, num_labels = out
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise SamplerError(f"{who}.{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if normalize_device(t.device) != device:
            raise SamplerError(f"{who}.{what}: {name} is on {t.device} but the sampler's device "
                               f"is {device}")
        if t.dim() < 1 or t.shape[0] != batch_size:
            raise SamplerError(f"{who}.{what}: {name} must hold {batch_size} examples (dim 0), got "
                               f"shape {tuple(t.shape)}")
    if tuple(x.shape[1:]) != reference["x"] or x.dtype != reference["x_dtype"]:
        raise SamplerError(f"{who}.{what}: x examples are {x.dtype} {tuple(x.shape[1:])}, the "
                           f"tasks' are {reference['x_dtype']} {reference['x']}")
    if isinstance(num_labels, bool) or not isinstance(num_labels, int):
        raise SamplerError(f"{who}.{what}: num_labels must be an int, got "
                           f"{type(num_labels).__name__}")
    if kind == "classification":
        if y.dtype != torch.int64 or y.dim() != 1:
            raise SamplerError(f"{who}.{what}: y must be int64 class indices of shape ({batch_size},), "
                               f"got {y.dtype} {tuple(y.shape)}")
        if num_labels < 1:
            raise SamplerError(f"{who}.{what}: num_labels (the number of training classes) must be "
                               f">= 1, got {num_labels}")
        if int(y.min()) < 0 or int(y.max()) >= num_labels:
            raise SamplerError(f"{who}.{what}: y holds labels outside 0..{num_labels - 1} "
                               f"(num_labels = {num_labels})")
    elif tuple(y.shape[1:]) != reference["y"] or y.dtype != reference["y_dtype"]:
        raise SamplerError(f"{who}.{what}: y targets are {y.dtype} {tuple(y.shape[1:])}, the tasks' "
                           f"are {reference['y_dtype']} {reference['y']}")
    again = draw()
    if not (torch.equal(x, again[0]) and torch.equal(y, again[1])):
        raise SamplerError(f"{who}.{what} is not reproducible: the same generator state gave "
                           f"different examples")


def _shapes(batches: TaskBatch | list[TaskBatch]) -> dict[str, Any]:
    batch = batches if isinstance(batches, TaskBatch) else batches[0]
    return {"x": tuple(batch.x_support.shape[2:]), "y": tuple(batch.y_support.shape[2:]),
            "x_dtype": batch.x_support.dtype, "y_dtype": batch.y_support.dtype}


def _same(a: TaskBatch | list[TaskBatch], b: TaskBatch | list[TaskBatch]) -> bool:
    a = a if isinstance(a, list) else [a]
    b = b if isinstance(b, list) else [b]
    try:
        merged = [[torch.cat([getattr(batch, name) for batch in side]) for name in FIELDS]
                  for side in (a, b)]
    except RuntimeError:  # batches of different shapes: certainly not the same tasks
        return False
    return all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(*merged))


def json_problem(value: Any, path: str) -> str | None:
    """Where ``value`` stops being JSON (None when it is JSON all through)."""
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value}, which JSON cannot hold"
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = json_problem(item, f"{path}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} has the non-string key {key!r}"
            problem = json_problem(item, f"{path}[{key!r}]")
            if problem:
                return problem
        return None
    return f"{path} is a {type(value).__name__}, not a JSON value"
