"""A ``gymnasium.Env`` for one 2D-navigation task, for users who bring their own agents.

``make_gym_env(goal=None, env=Navigation2D())`` needs gymnasium (``pip install gymnasium``); the
dynamics, reward and termination are :meth:`learnedopt.rl.env.Navigation2D.step` itself, so the
wrapper and the vectorised environment cannot disagree. Observations are the position (float32,
2), actions the velocity (clipped to the action bound by the environment, as in the public
code); an episode *terminates* within the goal tolerance and is *truncated* after
``max_steps`` steps. ``reset(options={"goal": (x, y)})`` changes the goal; without one, reset
draws a goal from the task distribution with the seeded ``np_random``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import torch

from learnedopt.rl.env import Navigation2D


def gymnasium_available() -> bool:
    return importlib.util.find_spec("gymnasium") is not None


def make_gym_env(goal=None, env: Navigation2D | None = None):
    """A gymnasium environment for the task with ``goal`` (default: drawn at every reset)."""
    if not gymnasium_available():
        raise ImportError("the gymnasium wrapper of 2D navigation needs gymnasium, which is not "
                          "installed: pip install gymnasium (the torch environment "
                          "learnedopt.rl.env.Navigation2D needs nothing else)")
    return _gym_class()(goal=goal, env=env or Navigation2D())


_CLASS = None


def _gym_class():
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import gymnasium
    from gymnasium import spaces

    class Navigation2DEnv(gymnasium.Env):
        metadata = {"render_modes": []}

        def __init__(self, goal=None, env: Navigation2D = Navigation2D()):
            super().__init__()
            self.env = env
            bound = np.float32(env.action_bound)
            self.action_space = spaces.Box(-bound, bound, shape=(2,), dtype=np.float32)
            self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
            self._fixed_goal = None if goal is None else self._as_goal(goal)
            self._goal = self._fixed_goal
            self._state = np.zeros(2, dtype=np.float32)
            self._steps = 0

        @staticmethod
        def _as_goal(goal) -> np.ndarray:
            goal = np.asarray(goal, dtype=np.float32)
            if goal.shape != (2,) or not np.isfinite(goal).all():
                raise ValueError(f"Navigation2DEnv: a goal is two finite coordinates, got {goal!r}")
            return goal

        @property
        def goal(self) -> np.ndarray:
            return self._goal

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
            super().reset(seed=seed)
            if options and "goal" in options:
                self._fixed_goal = self._as_goal(options["goal"])
            self._goal = self._fixed_goal
            if self._goal is None:
                self._goal = self.np_random.uniform(self.env.goal_low, self.env.goal_high,
                                                    size=2).astype(np.float32)
            self._state = np.zeros(2, dtype=np.float32)
            self._steps = 0
            return self._state.copy(), {"goal": self._goal.copy()}

        def step(self, action):
            if self._goal is None:
                raise RuntimeError("Navigation2DEnv: call reset() before step()")
            action = np.asarray(action, dtype=np.float32)
            if action.shape != (2,):
                raise ValueError(f"Navigation2DEnv: an action is a 2-vector, got shape {action.shape}")
            state, reward, reached = self.env.step(torch.from_numpy(self._state),
                                                   torch.from_numpy(action),
                                                   torch.from_numpy(self._goal))
            self._state = state.numpy().astype(np.float32)
            self._steps += 1
            truncated = self._steps >= self.env.max_steps and not bool(reached)
            return (self._state.copy(), float(reward), bool(reached), truncated,
                    {"goal": self._goal.copy()})

    _CLASS = Navigation2DEnv
    return _CLASS
