"""Sampling trajectories of a policy in an environment, for a whole meta-batch at once.

Every tensor is laid out (tasks B, trajectories N, time T, ...): the policy runs once per time
step on all B × N agents (each task with its own parameters θ_b), the environment steps them all
in one call, and the loop is over the T time steps only.

Exploration noise is drawn up front, per task, from a generator seeded by the task's own seed and
the rollout's *phase* (which inner step, or the evaluation after adaptation), so a task's
trajectories do not depend on which other tasks share its batch, and every algorithm evaluated on
the same fixed tasks sees the same noise (common random numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from learnedopt.rl.env import Navigation2D

# A task's seed s and a phase p < NOISE_PHASES seed the generator s * NOISE_PHASES + p; task seeds
# are drawn below MAX_TASK_SEED so that this stays within a generator seed's 64 bits.
NOISE_PHASES = 1024
MAX_TASK_SEED = 2 ** 53


@dataclass
class Trajectories:
    """N trajectories of T steps for each of B tasks.

    observations: (B, N, T, obs) the state each action was taken in; actions: (B, N, T, act) the
    sampled actions (before the environment's clipping: their log-probabilities are the policy's);
    rewards: (B, N, T), 0 after the episode ended; mask: (B, N, T) 1.0 for the steps taken.
    """
    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor

    @property
    def num_tasks(self) -> int:
        return self.rewards.shape[0]

    def episode_returns(self) -> Tensor:
        """The undiscounted return of each trajectory (B, N)."""
        return self.rewards.sum(dim=-1)

    def task_returns(self) -> Tensor:
        """Each task's average return over its trajectories (B,): the reported metric."""
        return self.episode_returns().mean(dim=-1)

    def flat_observations(self) -> Tensor:
        """(B, N*T, obs): every visited state of a task, for one policy forward."""
        b, n, t = self.rewards.shape
        return self.observations.reshape(b, n * t, -1)

    def flat_actions(self) -> Tensor:
        b, n, t = self.rewards.shape
        return self.actions.reshape(b, n * t, -1)


def rollout_noise(seeds: Tensor, phase: int, trajectories: int, steps: int, action_size: int = 2,
                  device=None, dtype=torch.float32) -> Tensor:
    """Standard normal noise (B, N, T, act) for the B tasks of ``seeds`` (B,) in ``phase``."""
    if not (isinstance(phase, int) and 0 <= phase < NOISE_PHASES):
        raise ValueError(f"rollout phase must be an int in [0, {NOISE_PHASES}), got {phase!r}")
    draws = []
    for seed in seeds.tolist():
        if not 0 <= seed < MAX_TASK_SEED:
            raise ValueError(f"task seeds must lie in [0, 2**53), got {seed}")
        generator = torch.Generator().manual_seed(int(seed) * NOISE_PHASES + phase)
        draws.append(torch.randn(trajectories, steps, action_size, generator=generator))
    return torch.stack(draws).to(device=device, dtype=dtype)


@torch.no_grad()
def rollout(policy: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], theta: Tensor,
            goals: Tensor, noise: Tensor, env: Navigation2D) -> Trajectories:
    """Run B × N episodes: task b's policy is ``policy(theta[b], ·)`` (``theta`` (B, n), the
    learner's meta-batch call), its goal ``goals[b]`` (B, 2); ``noise`` (B, N, T, act) from
    :func:`rollout_noise`, T the episode length. The action is mean + exp(log_std) · noise."""
    tasks, num, steps, action_size = noise.shape
    if goals.shape != (tasks, 2) or theta.dim() != 2 or theta.shape[0] != tasks:
        raise ValueError(f"rollout: expected theta (B, n) and goals (B, 2) for the noise's B = "
                         f"{tasks} tasks, got {tuple(theta.shape)} and {tuple(goals.shape)}")
    if steps > env.max_steps:
        raise ValueError(f"rollout: {steps} steps of noise for episodes of at most {env.max_steps}")
    state = env.initial_state((tasks, num), device=noise.device, dtype=noise.dtype)
    observations = noise.new_zeros(tasks, num, steps, state.shape[-1])
    actions = noise.new_zeros(tasks, num, steps, action_size)
    rewards = noise.new_zeros(tasks, num, steps)
    mask = noise.new_zeros(tasks, num, steps)
    alive = torch.ones(tasks, num, dtype=torch.bool, device=noise.device)
    target = goals.to(noise.dtype).unsqueeze(1)
    for t in range(steps):
        mean, log_std = policy(theta, state)
        action = mean + torch.exp(log_std) * noise[:, :, t]
        observations[:, :, t] = state
        actions[:, :, t] = action
        state, reward, reached = env.step(state, action, target)
        rewards[:, :, t] = torch.where(alive, reward, torch.zeros_like(reward))
        mask[:, :, t] = alive.to(noise.dtype)
        alive = alive & ~reached
        if not bool(alive.any()):
            break  # every episode has ended: the remaining steps stay masked out
    return Trajectories(observations, actions, rewards, mask)
