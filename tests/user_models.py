"""Ordinary user-written nn.Modules (and a loss) for the bring-your-own-model tests, importable as
``tests.user_models:NAME`` so that the CLI and checkpoints can rebuild them by import path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sine_mlp() -> nn.Sequential:
    """The built-in 1-40-40-1 ReLU MLP written as a user would; the head is "4"."""
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))


def conv4(ways: int = 5, channels: int = 1, filters: int = 8, image: int = 28) -> nn.Sequential:
    """The built-in Conv4 (padding 1) written as a user would; the head is "17"."""
    layers: list[nn.Module] = []
    for k in range(4):
        layers += [nn.Conv2d(channels if k == 0 else filters, filters, 3, padding=1),
                   nn.BatchNorm2d(filters), nn.ReLU(), nn.MaxPool2d(2)]
    side = image
    for _ in range(4):
        side //= 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(filters * side * side, ways))


class RichNet(nn.Module):
    """Everything a real network has that the built-in learners do not: batch norm, LayerNorm,
    dropout, a frozen parameter, weights tied between two layers and a constant buffer."""

    def __init__(self, features: int = 6, width: int = 16, classes: int = 3, dropout: float = 0.2):
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.bn = nn.BatchNorm1d(width)
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)
        self.offset = nn.Parameter(torch.linspace(-0.1, 0.1, width), requires_grad=False)
        self.register_buffer("scale", torch.full((width,), 0.5))
        self.mid = nn.Linear(width, width)
        self.mid2 = nn.Linear(width, width)
        self.mid2.weight = self.mid.weight  # tied: one set of coordinates, used twice
        self.out = nn.Linear(width, classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.embed(x)))
        h = self.norm(h) * self.scale + self.offset
        h = self.drop(torch.relu(self.mid(h)))
        return self.out(torch.relu(self.mid2(h)))


def smooth_l1(outputs, targets):
    """A user loss for regression (one task's outputs and targets -> a scalar)."""
    return F.smooth_l1_loss(outputs, targets)


class LinearTasks:
    """A task sampler written by hand against learnedopt's protocol: y = a·x + b per task, with
    a, b ~ U[-2, 2], x ~ U[-1, 1]; ``shots`` support and ``queries`` query points."""

    kind = "regression"
    num_classes = 0

    def __init__(self, shots: int = 5, queries: int = 5, device: str = "cpu"):
        self.shots, self.queries, self.device = shots, queries, torch.device(device)

    def config(self) -> dict:
        return {"name": "linear", "shots": self.shots, "queries": self.queries}

    def sample(self, batch_size: int, generator: torch.Generator):
        from learnedopt.tasks.base import TaskBatch
        slope, offset = (torch.rand(2, batch_size, 1, 1, generator=generator) * 4 - 2)
        x = torch.rand(batch_size, self.shots + self.queries, 1, generator=generator) * 2 - 1
        y = slope * x + offset
        s = self.shots
        return TaskBatch(x[:, :s], y[:, :s], x[:, s:], y[:, s:]).to(self.device)

    def fixed_tasks(self, split: str, num_tasks: int, batch_size: int, seed: int):
        from learnedopt.tasks.base import fixed_task_batches
        return fixed_task_batches(self.sample, split, num_tasks, batch_size, seed)


def linear_tasks(shots: int = 5, queries: int = 5) -> LinearTasks:
    return LinearTasks(shots, queries)
