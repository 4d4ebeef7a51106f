"""Meta-reinforcement learning on 2D navigation (Finn et al. 2017 §5.3; Li et al. 2017 §4.3).

One purpose per file:

- ``env``        the environment (torch, vectorised over any leading dimensions)
- ``gym_env``    a ``gymnasium.Env`` wrapper of it, when gymnasium is installed
- ``policy``     the Gaussian MLP policy and :class:`~learnedopt.rl.policy.PolicyLearner`
- ``rollout``    trajectories of B tasks × N episodes × T steps, seeded per task
- ``baseline``   the per-task linear feature baseline
- ``estimator``  returns, advantages, the REINFORCE and TRPO surrogates
- ``trpo``       conjugate gradient, Fisher-vector products, the TRPO step
- ``tasks``      the goal sampler (training, validation and test goals)
- ``meta_rl``    any episodic algorithm's rule adapting a policy, with TRPO or Adam outside
- ``plots``      returns against inner steps, trajectories before and after adaptation

From the command line: ``learnedopt train --task navigation2d --algorithm maml`` (or metasgd,
turtle, enhanced-lstm, ...) and ``learnedopt eval``; from Python, the same training loop:

    from learnedopt.train import TrainConfig, train
    run = train(TrainConfig(algorithm="metasgd", task={"name": "navigation2d"}, out="runs/nav"))
"""

from __future__ import annotations

from typing import Any

import torch

from learnedopt.rl.env import REWARDS, Navigation2D
from learnedopt.rl.tasks import GoalBatch, NavigationTasks

TASK_KEYS = ("name", "reward", "max_steps")


def navigation_tasks(spec: dict[str, Any], device: str | torch.device = "cpu") -> NavigationTasks:
    """The sampler of a task spec {"name": "navigation2d", "reward": "distance" | "squared",
    "max_steps": 100}."""
    unknown = sorted(set(spec) - set(TASK_KEYS))
    if unknown:
        raise ValueError(f"navigation2d: unknown task settings {unknown}; valid: {list(TASK_KEYS)}")
    env = Navigation2D(reward=spec.get("reward", "distance"), max_steps=spec.get("max_steps", 100))
    return NavigationTasks(env, device=device)


__all__ = ["Navigation2D", "REWARDS", "NavigationTasks", "GoalBatch", "navigation_tasks"]
