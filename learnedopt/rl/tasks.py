"""The task sampler of 2D navigation: batches of goals, each with the seed of its rollout noise.

A meta-RL task is a goal; its data are the trajectories the policy samples there, which depend on
the policy being adapted, so a batch carries no data, only each task's goal and a seed from which
its exploration noise is drawn (learnedopt.rl.rollout). Both come from the training generator
(or, for the fixed validation and test goals, from generators that depend on (seed, split) alone,
as for every sampler: learnedopt.tasks.base.fixed_task_batches), so a batch fixes its
trajectories for given policy parameters, and a resumed run replays the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from learnedopt.rl.env import Navigation2D
from learnedopt.rl.rollout import MAX_TASK_SEED
from learnedopt.tasks.base import fixed_task_batches


@dataclass
class GoalBatch:
    """B navigation tasks: goals (B, 2) on the sampler's device, seeds (B,) int64 on the CPU, and
    the environment they are posed in (its constants: episode length, reward, ...)."""
    goals: Tensor
    seeds: Tensor
    env: Navigation2D

    @property
    def num_tasks(self) -> int:
        return self.goals.shape[0]

    def task(self, b: int) -> "GoalBatch":
        return GoalBatch(self.goals[b:b + 1], self.seeds[b:b + 1], self.env)

    def to(self, device) -> "GoalBatch":
        return GoalBatch(self.goals.to(device), self.seeds, self.env)


class NavigationTasks:
    """Goals from U[-0.5, 0.5]² (``env.goal_low``, ``env.goal_high``) for ``env``."""

    kind = "rl"
    num_classes = 0

    def __init__(self, env: Navigation2D | None = None, device: str | torch.device = "cpu"):
        self.env = env or Navigation2D()
        self.device = torch.device(device)

    def config(self) -> dict:
        return {"task": "navigation2d", **self.env.config()}

    def sample(self, batch_size: int, generator: torch.Generator) -> GoalBatch:
        if batch_size < 1:
            raise ValueError(f"NavigationTasks: batch_size must be >= 1, got {batch_size}")
        goals = self.env.sample_goals(batch_size, generator).to(self.device)
        seeds = torch.randint(0, MAX_TASK_SEED, (batch_size,), generator=generator,
                              device=generator.device).cpu()
        return GoalBatch(goals, seeds, self.env)

    def fixed_tasks(self, split: str, num_tasks: int, batch_size: int, seed: int
                    ) -> Iterator[GoalBatch]:
        return fixed_task_batches(self.sample, split, num_tasks, batch_size, seed)
