"""2D navigation: the vectorised environment and rollout against plain step-by-step loops, the goal
sampler, and the gymnasium wrapper."""

from __future__ import annotations

import math

import pytest
import torch

from learnedopt.rl.env import Navigation2D
from learnedopt.rl.gym_env import gymnasium_available, make_gym_env
from learnedopt.rl.policy import GaussianMLPPolicy, PolicyLearner
from learnedopt.rl.rollout import rollout, rollout_noise
from learnedopt.rl.tasks import NavigationTasks


def loop_step(state, action, goal, reward="distance", bound=0.1, tolerance=0.01):
    """One environment step written with Python floats, the way the public code does it."""
    moved = [s + min(max(a, -bound), bound) for s, a in zip(state, action)]
    dx, dy = moved[0] - goal[0], moved[1] - goal[1]
    r = -math.sqrt(dx * dx + dy * dy) if reward == "distance" else -(dx * dx + dy * dy)
    return moved, r, abs(dx) < tolerance and abs(dy) < tolerance


@pytest.mark.parametrize("reward", ["distance", "squared"])
def test_step_matches_a_scalar_loop_with_clipping_reward_and_termination(reward):
    env = Navigation2D(reward=reward)
    g = torch.Generator().manual_seed(0)
    state = torch.rand(6, 5, 2, generator=g, dtype=torch.float64) - 0.5
    action = 0.3 * torch.randn(6, 5, 2, generator=g, dtype=torch.float64)  # many beyond ±0.1
    goal = torch.rand(6, 1, 2, generator=g, dtype=torch.float64) - 0.5
    # Two agents one step from the goal: landing inside the tolerance, and just outside it.
    state[0, :2] = goal[0, 0] - 0.05
    action[0, 0] = torch.tensor([0.045, 0.052], dtype=torch.float64)   # lands 0.005 / 0.002 off
    action[0, 1] = torch.tensor([0.045, 0.035], dtype=torch.float64)   # 0.005 / 0.015 off
    new_state, new_reward, reached = env.step(state, action, goal)
    assert (action.abs() > 0.1).any()
    for b in range(6):
        for n in range(5):
            s, r, done = loop_step(state[b, n].tolist(), action[b, n].tolist(), goal[b, 0].tolist(),
                                   reward)
            assert new_state[b, n].tolist() == pytest.approx(s, abs=1e-12)
            assert float(new_reward[b, n]) == pytest.approx(r, abs=1e-12)
            assert bool(reached[b, n]) == done
    assert bool(reached[0, 0]) and not bool(reached[0, 1])


def test_env_refuses_bad_constants_and_shapes():
    with pytest.raises(ValueError, match="reward must be one of"):
        Navigation2D(reward="l1")
    with pytest.raises(ValueError, match="max_steps"):
        Navigation2D(max_steps=0)
    with pytest.raises(ValueError, match="action_bound"):
        Navigation2D(action_bound=float("nan"))
    with pytest.raises(ValueError, match="goal range"):
        Navigation2D(goal_low=1.0, goal_high=0.0)
    with pytest.raises(ValueError, match="2 coordinates"):
        Navigation2D().step(torch.zeros(3), torch.zeros(3), torch.zeros(3))


def small_policy(dtype=torch.float32) -> PolicyLearner:
    torch.manual_seed(0)
    return PolicyLearner(GaussianMLPPolicy(hidden_sizes=(8, 8), init_log_std=-1.0).to(dtype))


def test_rollout_equals_a_loop_over_tasks_trajectories_and_steps():
    env = Navigation2D(max_steps=30, goal_tolerance=0.05)
    learner = small_policy(torch.float64)
    tasks = 3
    theta = learner.init_parameters().expand(tasks, -1) + 0.3 * torch.randn(
        tasks, learner.num_params, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    goals = torch.tensor([[0.2, -0.1], [-0.45, 0.3], [0.0, 0.05]], dtype=torch.float64)
    noise = rollout_noise(torch.tensor([5, 6, 7]), 0, 4, env.max_steps, dtype=torch.float64)
    traj = rollout(learner, theta, goals, noise, env)
    ended_early = 0
    for b in range(tasks):
        for n in range(4):
            state, alive = [0.0, 0.0], True
            for t in range(env.max_steps):
                obs = torch.tensor(state, dtype=torch.float64)
                mean, log_std = learner(theta[b], obs.unsqueeze(0))
                action = (mean[0] + torch.exp(log_std[0]) * noise[b, n, t]).tolist()
                if alive:
                    assert traj.observations[b, n, t].tolist() == pytest.approx(state, abs=1e-12)
                    assert traj.actions[b, n, t].tolist() == pytest.approx(action, abs=1e-12)
                    state, r, done = loop_step(state, action, goals[b].tolist(), "distance", 0.1, 0.05)
                    assert float(traj.rewards[b, n, t]) == pytest.approx(r, abs=1e-12)
                    assert float(traj.mask[b, n, t]) == 1.0
                    alive = not done
                else:
                    assert float(traj.mask[b, n, t]) == 0.0 and float(traj.rewards[b, n, t]) == 0.0
            ended_early += not alive
    assert ended_early > 0  # the termination path was exercised
    assert traj.task_returns().shape == (tasks,)


def test_rollout_noise_is_per_task_and_phase():
    a = rollout_noise(torch.tensor([3, 4]), 0, 2, 5)
    b = rollout_noise(torch.tensor([9, 4]), 0, 2, 5)
    assert torch.equal(a[1], b[1]) and not torch.equal(a[0], b[0])
    assert not torch.equal(a, rollout_noise(torch.tensor([3, 4]), 1, 2, 5))
    with pytest.raises(ValueError, match="phase"):
        rollout_noise(torch.tensor([3]), -1, 2, 5)


def test_fixed_goals_do_not_depend_on_the_batch_size():
    sampler = NavigationTasks()
    one = torch.cat([b.goals for b in sampler.fixed_tasks("test", 130, 130, 0)])
    many = list(sampler.fixed_tasks("test", 130, 25, 0))
    assert torch.equal(one, torch.cat([b.goals for b in many]))
    assert torch.equal(torch.cat([b.seeds for b in sampler.fixed_tasks("test", 130, 130, 0)]),
                       torch.cat([b.seeds for b in many]))
    assert all(b.env is sampler.env for b in many)
    assert one.min() >= -0.5 and one.max() <= 0.5
    val = torch.cat([b.goals for b in sampler.fixed_tasks("val", 130, 130, 0)])
    assert not torch.equal(one, val)


def test_gym_wrapper_follows_the_torch_environment():
    if not gymnasium_available():
        with pytest.raises(ImportError, match="pip install gymnasium"):
            make_gym_env()
        return
    env = make_gym_env(goal=(0.05, 0.0))
    obs, info = env.reset(seed=0)
    assert obs.tolist() == [0.0, 0.0] and info["goal"].tolist() == pytest.approx([0.05, 0.0])
    obs, reward, terminated, truncated, _ = env.step([0.3, 0.0])  # clipped to 0.1
    assert obs.tolist() == pytest.approx([0.1, 0.0]) and reward == pytest.approx(-0.05)
    assert not terminated and not truncated
    obs, reward, terminated, truncated, _ = env.step([-0.05, 0.0])
    assert terminated and reward == pytest.approx(0.0, abs=1e-6)
    env = make_gym_env(env=Navigation2D(max_steps=3))
    env.reset(seed=1)
    flags = [env.step([0.0, 0.0])[3] for _ in range(3)]
    assert flags == [False, False, True]
