"""2D navigation (Finn et al. 2017 §5.3), vectorised in torch over any leading dimensions.

A point agent starts at (0, 0); an action is a velocity, clipped to [-0.1, 0.1]² per step; the
state moves by the clipped action; the reward is minus the distance from the *new* state to the
goal; an episode ends after ``max_steps`` steps or as soon as the agent is within
``goal_tolerance`` of the goal in both coordinates (that step's reward still counts). A task is a
goal drawn from U[-0.5, 0.5]².

Reward: the public implementations (cbfinn/maml_rl's point_env_randgoal, pytorch-maml-rl) use
-‖s - g‖₂, the default here ("distance"); the MAML paper's text says the negative *squared*
distance ("squared").

The environment holds no state: :meth:`Navigation2D.step` maps (state, action, goal) tensors of
shape (..., 2) to the next state, reward and termination, so a whole meta-batch of tasks ×
trajectories steps in one call (learnedopt.rl.rollout loops over time only).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

REWARDS = ("distance", "squared")


@dataclass(frozen=True)
class Navigation2D:
    """The environment's constants (every field checked; see the module docstring)."""

    max_steps: int = 100
    action_bound: float = 0.1
    goal_tolerance: float = 0.01
    reward: str = "distance"
    goal_low: float = -0.5
    goal_high: float = 0.5

    def __post_init__(self):
        if not isinstance(self.max_steps, int) or isinstance(self.max_steps, bool) or self.max_steps < 1:
            raise ValueError(f"Navigation2D: max_steps must be an int >= 1, got {self.max_steps!r}")
        for name in ("action_bound", "goal_tolerance"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"Navigation2D: {name} must be a finite number > 0, got {value!r}")
        if self.reward not in REWARDS:
            raise ValueError(f"Navigation2D: reward must be one of {REWARDS}, got {self.reward!r}")
        if not (math.isfinite(self.goal_low) and math.isfinite(self.goal_high)
                and self.goal_low <= self.goal_high):
            raise ValueError(f"Navigation2D: the goal range needs finite goal_low <= goal_high, got "
                             f"({self.goal_low}, {self.goal_high})")

    def config(self) -> dict:
        return {"env": "navigation2d", **asdict(self)}

    def initial_state(self, shape: tuple[int, ...], device=None, dtype=torch.float32) -> Tensor:
        """The start position (0, 0) for every environment of ``shape``: (*shape, 2)."""
        return torch.zeros(*shape, 2, device=device, dtype=dtype)

    def sample_goals(self, count: int, generator: torch.Generator) -> Tensor:
        """``count`` goals (count, 2) from U[goal_low, goal_high]², drawn with ``generator``."""
        u = torch.rand(count, 2, generator=generator, device=generator.device)
        return self.goal_low + (self.goal_high - self.goal_low) * u

    def step(self, state: Tensor, action: Tensor, goal: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One step of every environment: ``state`` and ``action`` (..., 2), ``goal`` broadcastable
        to them. Returns the next state (..., 2), the reward (...) and whether the goal was reached
        (...) (bool), which ends the episode after this step."""
        if state.shape[-1] != 2 or action.shape[-1] != 2 or goal.shape[-1] != 2:
            raise ValueError(f"Navigation2D.step: state, action and goal must end in 2 coordinates, "
                             f"got {tuple(state.shape)}, {tuple(action.shape)}, {tuple(goal.shape)}")
        next_state = state + action.clamp(-self.action_bound, self.action_bound)
        offset = next_state - goal
        if self.reward == "distance":
            reward = -torch.linalg.vector_norm(offset, dim=-1)
        else:
            reward = -offset.pow(2).sum(dim=-1)
        reached = (offset.abs() < self.goal_tolerance).all(dim=-1)
        return next_state, reward, reached
