"""What every task sampler returns, and what the algorithms and the training loop rely on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

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
