"""A task sampler from one function: write how to draw ONE task, get the whole protocol.

    class LinearTasks(CustomTasks):
        kind = "regression"

        def __init__(self, shots=10, device="cpu"):
            self.shots, self.device = shots, torch.device(device)

        def draw_task(self, generator, split):
            w = torch.randn(3, 1, generator=generator)
            x = torch.randn(2 * self.shots, 3, generator=generator)
            return x[:self.shots], x[:self.shots] @ w, x[self.shots:], x[self.shots:] @ w

The base class stacks ``draw_task`` results into :class:`TaskBatch` es (``sample``), draws the
fixed validation/test tasks with :func:`learnedopt.tasks.base.fixed_task_batches` (the same tasks
for the same seed whatever the batch size), records a JSON ``config()``, and validates every batch
with :func:`learnedopt.tasks.sampler_check.check_task_batch`.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from learnedopt.tasks.base import TaskBatch, fixed_task_batches
from learnedopt.tasks.sampler_check import (FIELDS, SamplerError, check_identity,
                                            check_task_batch, json_problem)

SPLITS = ("train", "val", "test")


def cpu_generator(generator: torch.Generator) -> torch.Generator:
    """``generator`` itself when it is a CPU generator, else a CPU generator seeded by one draw
    from it (so a CUDA generator's state still decides the tasks, and advances)."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"tasks are drawn with a torch.Generator, got {type(generator).__name__}")
    if generator.device.type == "cpu":
        return generator
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
    return torch.Generator().manual_seed(int(seed))


class CustomTasks:
    """Base of a user task sampler: subclass, set ``kind`` (and ``num_classes`` for
    classification), and write :meth:`draw_task`.

    Guarantees: ``sample(B, generator)`` and ``fixed_tasks(...)`` return TaskBatches that pass
    :func:`~learnedopt.tasks.sampler_check.check_task_batch` on ``self.device``, else raise a
    SamplerError naming the task and tensor at fault; the tasks depend only on the generator's
    state (``draw_task`` always receives a CPU generator, so a run on any device draws the same
    tasks for a CPU generator's state), and fixed tasks only on (split, seed). Floating-point
    tensors are cast to ``dtype`` (float32; None keeps them); classification labels of any
    integer dtype become int64; integer inputs (e.g. token ids) stay as they are.
    """

    kind: str
    num_classes: int = 0
    device: torch.device | str = torch.device("cpu")
    dtype: torch.dtype | None = torch.float32

    def draw_task(self, generator: torch.Generator, split: str
                  ) -> tuple[Any, Any, Any, Any]:
        """One task of ``split`` ("train", "val" or "test"): ``(x_support, y_support, x_query,
        y_query)``, tensors (or arrays) with one example per row, any shape per example; for
        classification, y holds the labels 0..num_classes-1 of this task. Draw every random
        number from ``generator`` (a CPU ``torch.Generator``): ``torch.rand(...,
        generator=generator)``, or seed NumPy from it,
        ``np.random.default_rng(int(torch.randint(2**62, (), generator=generator)))``."""
        raise NotImplementedError(f"{type(self).__name__} must implement draw_task(generator, "
                                  f"split) -> (x_support, y_support, x_query, y_query)")

    # ---- the protocol ------------------------------------------------------------------------
    def sample(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        """``batch_size`` fresh training tasks drawn with ``generator``."""
        return self.draw_batch("train", batch_size, cpu_generator(generator))

    def fixed_tasks(self, split: str, num_tasks: int, batch_size: int, seed: int
                    ) -> Iterator[TaskBatch]:
        """The seeded, fixed tasks of ``split``, ``batch_size`` at a time."""
        self._check_split(split)
        return fixed_task_batches(lambda count, generator: self.draw_batch(split, count, generator),
                                  split, num_tasks, batch_size, seed)

    def config(self) -> dict:
        """{"task": "custom", "class": import path, "kind", "num_classes"} and every public
        attribute whose value is JSON (numbers, strings, lists, dicts of those; tuples become
        lists), at the top level so that the result files find ``shots``, ``ways``, ``queries``
        under their usual names. Attributes of other types (tensors, data sets) are left out:
        override to record them."""
        cls = type(self)
        config = {"task": "custom", "class": f"{cls.__module__}.{cls.__qualname__}",
                  "kind": self.kind, "num_classes": self.num_classes}
        for name, value in sorted(vars(self).items()):
            if name.startswith("_") or name in config or name in ("device", "dtype"):
                continue
            if json_problem(value, name) is None:
                config[name] = json.loads(json.dumps(value))  # tuples become lists
        return config

    # ---- batching ----------------------------------------------------------------------------
    def draw_batch(self, split: str, count: int, generator: torch.Generator) -> TaskBatch:
        """``count`` tasks of ``split`` drawn one by one with ``generator``, stacked and checked."""
        who = type(self).__name__
        check_identity(getattr(self, "kind", None), self.num_classes, who)
        self._check_split(split)
        if count < 1:
            raise ValueError(f"{who}: the number of tasks must be >= 1, got {count}")
        tasks = [self._task(split, generator, i) for i in range(count)]
        stacked = []
        for f, name in enumerate(FIELDS):
            shape = tasks[0][f].shape
            for i, task in enumerate(tasks):
                if task[f].shape != shape:
                    raise SamplerError(f"{who}.draw_task: task {i} of a batch has {name} of shape "
                                       f"{tuple(task[f].shape)} but task 0 has {tuple(shape)}; "
                                       f"every task of a batch needs the same shapes")
            stacked.append(torch.stack([task[f] for task in tasks]))
        batch = TaskBatch(*stacked)
        # Checked before the move, on the CPU, where the checks cost no device synchronisation.
        check_task_batch(batch, self.kind, self.num_classes, batch.x_support.device, count,
                         f"{who}.draw_task({split!r})")
        return batch.to(self.device)

    def _task(self, split: str, generator: torch.Generator, index: int) -> list[Tensor]:
        who = f"{type(self).__name__}.draw_task"
        task = self.draw_task(generator, split)
        if isinstance(task, (str, bytes)) or not isinstance(task, Sequence) or len(task) != 4:
            raise SamplerError(f"{who} must return (x_support, y_support, x_query, y_query), got "
                               f"{type(task).__name__}" +
                               (f" of length {len(task)}" if isinstance(task, Sequence) else ""))
        tensors = []
        for name, value in zip(FIELDS, task):
            try:
                t = torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise SamplerError(f"{who}: task {index}'s {name} is not a tensor or array: "
                                   f"{exc}") from None
            if t.dim() == 0:
                raise SamplerError(f"{who}: task {index}'s {name} must hold one row per example, "
                                   f"got a scalar")
            tensors.append(self._convert(t, name, index, who))
        return tensors

    def _convert(self, t: Tensor, name: str, index: int, who: str) -> Tensor:
        if name.startswith("y") and self.kind == "classification":
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise SamplerError(f"{who}: task {index}'s {name} must hold integer class labels "
                                   f"0..{self.num_classes - 1}, got {t.dtype}")
            return t.to(torch.int64)
        if name.startswith("y") and not t.is_floating_point():
            # Regression targets are numbers to fit: integers become the float dtype.
            return t.to(self.dtype or torch.get_default_dtype())
        if t.is_floating_point() and self.dtype is not None:
            return t.to(self.dtype)
        return t

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"{type(self).__name__}: split must be one of {SPLITS}, got {split!r}")
