"""The policy-gradient estimator, the linear baseline and TRPO's pieces against known answers."""

from __future__ import annotations

import pytest
import torch

from learnedopt.rl import baseline, estimator
from learnedopt.rl.env import Navigation2D
from learnedopt.rl.policy import GaussianMLPPolicy, PolicyLearner, gaussian_kl, gaussian_log_prob
from learnedopt.rl.rollout import rollout, rollout_noise
from learnedopt.rl.trpo import conjugate_gradient, trpo_step


def test_discounted_sums_and_gae_against_a_backward_loop():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    values = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 3, 7, dtype=torch.float64)
    mask[0, 1, 4:] = 0  # an episode that ended after 4 steps
    gamma, lam = 0.9, 0.7
    returns = estimator.discounted_returns(rewards, mask, gamma)
    gae = estimator.advantages(rewards, mask, values, gamma, lam, normalize=False)
    for b in range(2):
        for n in range(3):
            ret, adv = 0.0, 0.0
            for t in reversed(range(7)):
                m = float(mask[b, n, t])
                next_value = float(values[b, n, t + 1] * mask[b, n, t + 1]) if t < 6 else 0.0
                ret = (float(rewards[b, n, t]) + gamma * ret) * m
                delta = (float(rewards[b, n, t]) + gamma * next_value - float(values[b, n, t])) * m
                adv = (delta + gamma * lam * adv) * m
                assert float(returns[b, n, t]) == pytest.approx(ret, abs=1e-12)
                assert float(gae[b, n, t]) == pytest.approx(adv, abs=1e-12)
    # λ = 1: reward-to-go minus the baseline.
    gae1 = estimator.advantages(rewards, mask, values, gamma, 1.0, normalize=False)
    assert torch.allclose(gae1, returns - values * mask, atol=1e-12)
    normalized = estimator.advantages(rewards, mask, values, gamma, lam, normalize=True)
    for b in range(2):
        valid = normalized[b][mask[b] > 0]
        assert float(valid.mean()) == pytest.approx(0.0, abs=1e-9)
        assert float(valid.std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)


def test_reinforce_gradient_on_a_one_step_bandit_matches_its_expectation():
    # A Gaussian policy over a 2-D action with reward r(a) = -|a - c|^2 has
    # dE[r]/dmu = -2 (mu - c) and dE[r]/dlog_std = -2 sigma^2 per coordinate.
    mu = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    log_std = torch.tensor([-0.5, 0.2], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([-0.1, 0.4], dtype=torch.float64)
    samples = 200_000
    g = torch.Generator().manual_seed(0)
    actions = (mu + log_std.exp() * torch.randn(samples, 2, generator=g, dtype=torch.float64)).detach()
    rewards = -(actions - c).pow(2).sum(-1).view(1, samples, 1)
    mask = torch.ones_like(rewards)
    adv = estimator.advantages(rewards, mask, None, gamma=0.99, normalize=False)
    log_probs = gaussian_log_prob(mu.expand(samples, 2), log_std.expand(samples, 2),
                                  actions).view(1, samples, 1)
    loss = estimator.reinforce_loss(log_probs, adv, mask).sum()
    grad_mu, grad_log_std = torch.autograd.grad(-loss, (mu, log_std), retain_graph=True)
    expected_mu = -2 * (mu - c).detach()
    expected_log_std = -2 * (2 * log_std).exp().detach()
    # Standard errors of the per-sample terms.
    z = (actions - mu.detach()) / log_std.exp().detach()
    per_mu = (z / log_std.exp().detach()) * rewards.view(-1, 1)
    per_ls = (z.pow(2) - 1) * rewards.view(-1, 1)
    se_mu, se_ls = per_mu.std(0) / samples ** 0.5, per_ls.std(0) / samples ** 0.5
    assert ((grad_mu - expected_mu).abs() < 4 * se_mu).all(), (grad_mu, expected_mu, se_mu)
    assert ((grad_log_std - expected_log_std).abs() < 4 * se_ls).all()
    # The TRPO surrogate has the same gradient at the sampling policy.
    surrogate = estimator.surrogate_loss(log_probs, log_probs.detach(), adv, mask).sum()
    assert torch.allclose(torch.autograd.grad(-surrogate, mu)[0], grad_mu)


def navigation_batch(trajectories: int, seed: int):
    """Trajectories of a small random policy on one goal, and the policy."""
    torch.manual_seed(seed)
    learner = PolicyLearner(GaussianMLPPolicy(hidden_sizes=(16, 16), init_log_std=-1.5))
    theta = learner.init_parameters().unsqueeze(0)
    noise = rollout_noise(torch.tensor([seed]), 0, trajectories, 100)
    traj = rollout(learner, theta, torch.tensor([[0.3, -0.4]]), noise, Navigation2D())
    return learner, theta, traj


def test_the_linear_baseline_lowers_the_policy_gradient_variance():
    learner, theta, _ = navigation_batch(1, 0)
    estimates = {"linear": [], "none": []}
    for repeat in range(12):
        noise = rollout_noise(torch.tensor([100 + repeat]), 0, 8, 50)
        traj = rollout(learner, theta, torch.tensor([[0.3, -0.4]]), noise, Navigation2D(max_steps=50))
        returns = estimator.discounted_returns(traj.rewards, traj.mask, 0.99)
        values = baseline.fit_predict(traj.observations, returns, traj.mask)
        for name, v in (("linear", values), ("none", None)):
            adv = estimator.advantages(traj.rewards, traj.mask, v, 0.99, normalize=False)
            th = theta.clone().requires_grad_()
            mean, log_std = learner(th, traj.flat_observations())
            log_probs = gaussian_log_prob(mean, log_std, traj.flat_actions()).view_as(traj.rewards)
            (grad,) = torch.autograd.grad(estimator.reinforce_loss(log_probs, adv, traj.mask).sum(), th)
            estimates[name].append(grad.flatten())
    variance = {k: torch.stack(v).var(0).sum() for k, v in estimates.items()}
    assert variance["linear"] < 0.5 * variance["none"], variance


def test_baseline_fits_a_linear_target_exactly():
    _, _, traj = navigation_batch(6, 1)
    f = baseline.features(traj.observations, traj.mask)
    weights = torch.randn(f.shape[-1], generator=torch.Generator().manual_seed(2))
    target = (f @ weights) * traj.mask
    fitted = baseline.fit_predict(traj.observations, target, traj.mask, reg=1e-10)
    assert torch.allclose(fitted, target, atol=1e-3)
    with pytest.raises(ValueError, match="reg"):
        baseline.fit_predict(traj.observations, target, traj.mask, reg=0.0)


def test_conjugate_gradient_solves_a_positive_definite_system():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 12, generator=g, dtype=torch.float64)
    a = a @ a.T + 0.5 * torch.eye(12, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iterations=40, tolerance=1e-30)
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-8)


def test_trpo_step_lowers_the_loss_within_the_kl_bound():
    _, _, traj = navigation_batch(8, 3)
    torch.manual_seed(4)
    policy = GaussianMLPPolicy(hidden_sizes=(16, 16), init_log_std=-1.5)
    obs, actions = traj.flat_observations()[0], traj.flat_actions()[0]
    adv = estimator.advantages(traj.rewards, traj.mask, None, 0.99).view(-1)
    with torch.no_grad():
        old_mean, old_log_std = (t.clone() for t in policy(obs))  # not views of the parameters
        old_log_probs = gaussian_log_prob(old_mean, old_log_std, actions)
    mask = traj.mask.view(-1)

    def objective(differentiable):
        with torch.enable_grad() if differentiable else torch.no_grad():
            mean, log_std = policy(obs)
            ratio = torch.exp(gaussian_log_prob(mean, log_std, actions) - old_log_probs)
            loss = -(ratio * adv * mask).sum() / mask.sum()
            kl = (gaussian_kl(old_mean, old_log_std, mean, log_std) * mask).sum() / mask.sum()
        return loss, kl

    for max_kl in (0.01, 0.5):  # 0.5: far outside the quadratic model, so the line search acts
        before = [p.detach().clone() for p in policy.parameters()]
        loss_before, _ = objective(False)
        info = trpo_step(list(policy.parameters()), objective, max_kl=max_kl)
        loss_after, kl_after = objective(False)
        assert float(kl_after) <= max_kl and info["kl"] == pytest.approx(float(kl_after), rel=1e-5)
        assert float(loss_after) < float(loss_before) and info["step_fraction"] > 0
        assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
        with torch.no_grad():  # reset for the next bound
            for p, b in zip(policy.parameters(), before):
                p.copy_(b)
    with pytest.raises(ValueError, match="max_kl"):
        trpo_step(list(policy.parameters()), objective, max_kl=0.0)
