"""Sine-wave regression tasks (MAML; SPEC §7): y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi],
x ~ U[-5, 5]. A whole batch of tasks is drawn with a few tensor ops on the target device."""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

from learnedopt.tasks.base import TaskBatch, fixed_task_batches


class SineTasks:
    kind = "regression"
    num_classes = 0

    def __init__(self, k_shot: int = 10, k_query: int = 10,
                 amplitude: tuple[float, float] = (0.1, 5.0), phase: tuple[float, float] = (0.0, math.pi),
                 x_range: tuple[float, float] = (-5.0, 5.0), device: str | torch.device = "cpu"):
        if k_shot < 1 or k_query < 1:
            raise ValueError(f"SineTasks: k_shot and k_query must be >= 1, got {k_shot}, {k_query}")
        for name, (lo, hi) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not lo <= hi:
                raise ValueError(f"SineTasks: {name} range must have low <= high, got {(lo, hi)}")
        self.k_shot, self.k_query = k_shot, k_query
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self.device = torch.device(device)

    def config(self) -> dict:
        return {"task": "sine", "k_shot": self.k_shot, "k_query": self.k_query,
                "amplitude": list(self.amplitude), "phase": list(self.phase),
                "x_range": list(self.x_range)}

    def _uniform(self, shape, bounds, generator) -> Tensor:
        lo, hi = bounds
        u = torch.rand(shape, generator=generator, device=generator.device)
        return (lo + (hi - lo) * u).to(self.device)

    def _tasks(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        amp = self._uniform((batch_size, 1, 1), self.amplitude, generator)
        phase = self._uniform((batch_size, 1, 1), self.phase, generator)
        x = self._uniform((batch_size, self.k_shot + self.k_query, 1), self.x_range, generator)
        return amp, phase, x

    def sample(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        amp, phase, x = self._tasks(batch_size, generator)
        y = amp * torch.sin(x - phase)
        k = self.k_shot
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])

    def fixed_tasks(self, split: str, num_tasks: int, batch_size: int, seed: int
                    ) -> Iterator[TaskBatch]:
        return fixed_task_batches(self.sample, split, num_tasks, batch_size, seed)

    def sample_flat(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, int]:
        """Points of independently drawn tasks, for the transfer baselines' pre-training."""
        amp, phase, x = self._tasks(batch_size, generator)
        x, amp, phase = x[:, :1].reshape(-1, 1), amp.reshape(-1, 1), phase.reshape(-1, 1)
        return x, amp * torch.sin(x - phase), 0
