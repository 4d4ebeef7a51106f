"""Meta-RL: the meta-gradient through the inner policy-gradient step against finite differences,
TRPO's KL bound on the adapted policies, a short meta-training run, and the clear errors."""

from __future__ import annotations

import pytest
import torch

from learnedopt import ops
from learnedopt.rl.env import Navigation2D
from learnedopt.rl.meta_rl import build_meta_rl
from learnedopt.rl.policy import GaussianMLPPolicy, PolicyLearner
from learnedopt.rl.tasks import NavigationTasks


def small_algorithm(name, dtype=torch.float32, hidden=(8, 8), seed=0, **options):
    torch.manual_seed(seed)
    learner = PolicyLearner(GaussianMLPPolicy(hidden_sizes=hidden, init_log_std=-1.0).to(dtype),
                            factory=None)
    algorithm = build_meta_rl(name, learner, **options)
    return algorithm.to(dtype)


def fixed_batch(tasks=2, max_steps=10, seed=0):
    sampler = NavigationTasks(Navigation2D(max_steps=max_steps))
    return sampler.sample(tasks, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["maml", "metasgd", "turtle", "enhanced-lstm"])
def test_meta_gradient_through_the_inner_step_matches_finite_differences(name):
    algorithm = small_algorithm(name, torch.float64, trajectories=3)
    params = [p for p in algorithm.parameters() if p.requires_grad]
    with torch.no_grad():  # off the initial zero biases, whose ReLUs sit on their kink at (0, 0)
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()),
                                      dtype=p.dtype))
    batch = fixed_batch()
    data = algorithm.collect(batch)  # the fixed inner and post-adaptation trajectories
    with ops.use_backend("auto"):  # the learned rules' fused ops, where compiled
        loss, _ = algorithm.outer_objective(batch, data, differentiable=True)
        grads = torch.autograd.grad(loss, params)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        analytic = sum((gr * d).sum() for gr, d in zip(grads, direction))
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, d in zip(params, direction):
                    p.add_(sign * 1e-6 * d)
            values.append(float(algorithm.outer_objective(batch, data, differentiable=False)[0]))
            with torch.no_grad():
                for p, d in zip(params, direction):
                    p.sub_(sign * 1e-6 * d)
        numeric = (values[0] - values[1]) / 2e-6
        assert float(analytic) == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    # The second-order term is there: a first-order meta-gradient differs.
    algorithm._options["first_order"] = True
    fo_loss, _ = algorithm.outer_objective(batch, data, differentiable=True)
    fo_grads = torch.autograd.grad(fo_loss, params, allow_unused=True)
    assert not torch.allclose(grads[0], fo_grads[0])


@pytest.mark.parametrize("fisher", ["exact", "first_order"])
def test_trpo_meta_update_keeps_the_adapted_policies_within_the_kl_bound(fisher):
    algorithm = small_algorithm("metasgd", trajectories=5, fisher=fisher, max_kl=0.02)
    batch = fixed_batch(tasks=3, max_steps=20)
    data = algorithm.collect(batch)
    loss_before, kl_before = algorithm.outer_objective(batch, data, differentiable=False)
    before = [p.detach().clone() for p in algorithm.parameters()]
    _, logs = algorithm.outer_step(batch, None)
    loss_after, kl_after = algorithm.outer_objective(batch, data, differentiable=False)
    assert float(kl_before) == pytest.approx(0.0, abs=1e-9)
    assert 0.0 < float(kl_after) <= 0.02 and logs["kl"] == pytest.approx(float(kl_after), rel=1e-4)
    assert float(loss_after) < float(loss_before) and logs["step_fraction"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, algorithm.parameters()))


def evaluate(algorithm, sampler, tasks=20):
    batch = next(iter(sampler.fixed_tasks("val", tasks, tasks, 0)))
    return {k: float(v.mean()) for k, v in algorithm.adapt_and_evaluate(batch).items()}


@pytest.mark.parametrize("outer, iterations", [("trpo", 8), ("adam", 10)])
def test_short_meta_training_raises_the_post_adaptation_return(outer, iterations):
    algorithm = small_algorithm("maml", hidden=(16, 16), trajectories=8, meta_batch_size=6,
                                outer_optimizer=outer, fisher="first_order", report_steps=1)
    sampler = NavigationTasks(Navigation2D(max_steps=15))
    optimizer = torch.optim.Adam(algorithm.parameters(), lr=0.01)
    before = evaluate(algorithm, sampler)
    generator = torch.Generator().manual_seed(0)
    for _ in range(iterations):
        algorithm.outer_step(sampler.sample(6, generator), optimizer)
    after = evaluate(algorithm, sampler)
    assert set(after) == {"return", "return_after_0", "return_after_1"}
    assert after["return"] > before["return"] + 0.1 * abs(before["return"]), (before, after)


def test_outer_optimizer_none_leaves_the_policy_as_initialised():
    algorithm = small_algorithm("maml", outer_optimizer="none", trajectories=3)
    before = [p.detach().clone() for p in algorithm.parameters()]
    _, logs = algorithm.outer_step(fixed_batch(), None)
    assert set(logs) == {"return_before", "return"}
    assert all(torch.equal(a, b) for a, b in zip(before, algorithm.parameters()))


def test_options_follow_the_navigation_protocol_and_bad_ones_are_refused():
    options = small_algorithm("maml").options()
    assert (options["inner_lr"], options["inner_steps"], options["meta_batch_size"],
            options["trajectories"], options["max_kl"], options["outer_optimizer"]) == (
        0.1, 1, 20, 20, 0.01, "trpo")
    turtle = small_algorithm("turtle").options()
    assert (turtle["inner_steps"], turtle["meta_batch_size"], turtle["first_order"]) == (1, 20, False)
    with pytest.raises(ValueError, match="outer_optimizer must be one of"):
        small_algorithm("maml", outer_optimizer="sgd")
    with pytest.raises(ValueError, match="unknown option"):
        small_algorithm("maml", max_kll=0.1)
    with pytest.raises(ValueError, match="cannot adapt a policy"):
        small_algorithm("taml")
    with pytest.raises(TypeError, match="PolicyLearner"):
        build_meta_rl("maml", __import__("learnedopt.learners", fromlist=["MLP"]).MLP())
    with pytest.raises(TypeError, match="GoalBatch"):
        small_algorithm("maml").adapt_and_evaluate(object())
