"""What every task sampler returns, and what the algorithms and the training loop rely on."""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor


@dataclass
class TaskBatch:
    """A batch of B tasks, all tensors on the sampler's device.

    Regression (sine): x_* (B, K, 1) float, y_* (B, K, 1) float.
    Classification (N-way K-shot): x_* (B, N*K, C, H, W) float, y_* (B, N*K) int64 with labels
    0..N-1 assigned per task (so a label means nothing across tasks).
    """
    x_support: Tensor
    y_support: Tensor
    x_query: Tensor
    y_query: Tensor

    @property
    def num_tasks(self) -> int:
        return self.x_support.shape[0]

    def task(self, b: int) -> "TaskBatch":
        """Task b alone, as a batch of one."""
        sl = slice(b, b + 1)
        return TaskBatch(self.x_support[sl], self.y_support[sl], self.x_query[sl], self.y_query[sl])

    def to(self, device: torch.device | str) -> "TaskBatch":
        return TaskBatch(*(t.to(device) for t in (self.x_support, self.y_support, self.x_query,
                                                   self.y_query)))


class TaskSampler(Protocol):
    """``kind`` is "regression" or "classification"; ``num_classes`` is N (0 for regression)."""
    kind: str
    num_classes: int
    device: torch.device

    def sample(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        """Fresh training tasks drawn with ``generator`` (same generator state, same tasks)."""
        ...

    def fixed_tasks(self, split: str, num_tasks: int, batch_size: int, seed: int
                    ) -> Iterator[TaskBatch]:
        """The seeded, fixed validation ("val") or test ("test") tasks, in batches."""
        ...

    def sample_flat(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, int]:
        """Non-episodic training data for the transfer baselines: (x, y, num_labels), with y the
        global class index among the training classes (classification) or targets (regression)."""
        ...


# Fixed (validation/test) tasks are drawn in chunks of this many, each chunk from a generator of
# its own, so the same seed gives the same tasks whatever batch size they are evaluated in.
FIXED_TASK_CHUNK = 100


def fixed_task_batches(sample: Callable[[int, torch.Generator], TaskBatch], split: str,
                       num_tasks: int, batch_size: int, seed: int) -> Iterator[TaskBatch]:
    """The seeded fixed tasks of ``split``, ``batch_size`` at a time.

    ``sample(count, generator)`` draws ``count`` tasks: a TaskBatch, or any dataclass of per-task
    tensors (B, ...) (and constants shared by the batch) that has ``num_tasks``. The generators are CPU
    generators derived from (seed, split, chunk), so the tasks are the same on every device, never
    overlap between splits, and do not depend on how much training consumed from the training
    generator.
    """
    if num_tasks < 1 or batch_size < 1:
        raise ValueError(f"fixed tasks: num_tasks and batch_size must be >= 1, got {num_tasks}, {batch_size}")
    base = (seed * 1_000_003 + zlib.crc32(split.encode())) * 1_000_003
    pending: list[TaskBatch] = []
    have = 0
    for start in range(0, num_tasks, FIXED_TASK_CHUNK):
        generator = torch.Generator().manual_seed(base + start // FIXED_TASK_CHUNK)
        pending.append(sample(min(FIXED_TASK_CHUNK, num_tasks - start), generator))
        have += pending[-1].num_tasks
        while have >= batch_size or (start + FIXED_TASK_CHUNK >= num_tasks and have > 0):
            merged = _concat(pending)
            take = min(batch_size, have)
            yield _slice(merged, 0, take)
            rest = _slice(merged, take, have)
            have -= take
            pending = [rest] if have else []


def _concat(batches: list):
    # Any dataclass of per-task tensors (B, ...) merges field by field: TaskBatch, and the goal
    # batches of meta-RL (learnedopt.rl.tasks), whose non-tensor fields are constants of the
    # sampler that every batch shares.
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    return type(first)(*(torch.cat([getattr(b, f.name) for b in batches])
                         if isinstance(getattr(first, f.name), Tensor) else getattr(first, f.name)
                         for f in dataclasses.fields(first)))


def _slice(batch, start: int, stop: int):
    return type(batch)(*(value[start:stop] if isinstance(value, Tensor) else value
                         for value in (getattr(batch, f.name) for f in dataclasses.fields(batch))))
