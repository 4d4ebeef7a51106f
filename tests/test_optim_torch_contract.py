"""The drop-in optimizers on a user's CNN: the parts of the torch.optim contract that the flat
buffers make special — 0-dim parameters, ``opt.state[p]``, named parameters, and schedulers
that cycle momentum (OneCycleLR, CyclicLR). (Named parameters: tests/test_rule_from_user_model.py.)"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from learnedopt import reference
from learnedopt.optim import LSTMOptimizer, MetaSGD, TurtleOptimizer
from learnedopt.rules import TurtleRule

OPTIMIZERS = (LSTMOptimizer, TurtleOptimizer, MetaSGD)


class UserCNN(nn.Module):
    """Conv + batch norm + linear head with a learnable 0-dim temperature (``scalar=True``) or
    the same temperature as a 1-element vector (``scalar=False``)."""

    def __init__(self, scalar: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 3)
        self.temperature = nn.Parameter(torch.tensor(2.0) if scalar else torch.tensor([2.0]))

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(8, 1, 7, 7, generator=g), torch.randint(0, 3, (8,), generator=g)


def make(cls, params, **kwargs):
    torch.manual_seed(123)  # the untrained rules are random: same seed -> same rule
    return cls(params, **kwargs)


def train_steps(model, opt, steps, seed=1):
    x, y = batch(seed)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()


def values(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def index_of(model, param):
    """The index of ``param`` in state_dict()["state"] (model.parameters() order)."""
    return next(k for k, p in enumerate(model.parameters()) if p is param)


# -- 0-dim parameters ----------------------------------------------------------------------------

@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_a_0_dim_parameter_trains_like_a_1_element_one(cls):
    scalar, vector = UserCNN(scalar=True), UserCNN(scalar=False)
    opt_s = make(cls, scalar.parameters(), lr=0.1)
    opt_v = make(cls, vector.parameters(), lr=0.1)
    train_steps(scalar, opt_s, 3)
    train_steps(vector, opt_v, 3)
    assert scalar.temperature.shape == () and scalar.temperature.grad.shape == ()
    assert scalar.temperature.item() != 2.0  # it moved
    assert torch.equal(values(scalar), values(vector))
    # Its per-parameter state is 0-dim too (the LSTM's h, c: (hidden,)), and round-trips.
    for name, state in opt_s.state[scalar.temperature].items():
        trailing = (opt_s.rule.hidden_size,) if name in ("h", "c") else ()
        assert state.shape == trailing, name
    saved = io.BytesIO()
    torch.save(opt_s.state_dict(), saved)
    saved.seek(0)
    fresh_model = UserCNN(scalar=True)
    fresh_model.load_state_dict(scalar.state_dict())
    fresh = make(cls, fresh_model.parameters(), lr=0.1)
    fresh.load_state_dict(torch.load(saved, weights_only=True))
    train_steps(scalar, opt_s, 2, seed=2)
    train_steps(fresh_model, fresh, 2, seed=2)
    assert torch.equal(values(scalar), values(fresh_model))


# -- opt.state[p] ---------------------------------------------------------------------------------

EXPECTED_STATE = {LSTMOptimizer: {"h", "c", "f", "i", "step"},
                  TurtleOptimizer: {"m", "alpha", "step"}, MetaSGD: {"alpha", "step"}}


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_state_holds_every_parameter_and_matches_the_state_dict(cls):
    model = UserCNN()
    opt = make(cls, model.parameters(), lr=0.1)
    params = list(model.parameters())
    assert list(opt.state) == params and len(opt.state) == len(params)
    assert all(p in opt.state for p in params)
    assert nn.Parameter(torch.zeros(1)) not in opt.state
    train_steps(model, opt, 3)
    saved = opt.state_dict()["state"]
    for k, p in enumerate(params):
        state = opt.state[p]
        assert set(state) == EXPECTED_STATE[cls]
        for name, value in state.items():
            assert torch.equal(value, saved[k][name]), (k, name)
        for name in EXPECTED_STATE[cls] - {"step"}:
            assert state[name].shape[:p.dim()] == p.shape
        assert int(state["step"]) == 3
    # Read after each step, the entries are the state after that step.
    turtle_like = "m" if cls is TurtleOptimizer else ("h" if cls is LSTMOptimizer else "alpha")
    held = opt.state[params[0]]
    before = held[turtle_like].clone()
    train_steps(model, opt, 1)
    assert torch.equal(held[turtle_like], opt.state_dict()["state"][0][turtle_like])
    if cls is not MetaSGD:  # Meta-SGD's alpha is constant
        assert not torch.equal(held[turtle_like], before)


def test_edits_of_the_state_act_on_the_next_step():
    # Meta-SGD: theta <- theta - lr * alpha * g, so a per-coordinate alpha set through the
    # state shows in the step exactly.
    model = UserCNN()
    opt = MetaSGD(model.parameters(), lr=1.0, alpha=0.01)
    weight, bias = model.head.weight, model.head.bias
    alpha_w = torch.rand(weight.shape)
    opt.state[weight]["alpha"] = alpha_w           # assignment: copied into the flat buffer
    opt.state[bias]["alpha"].mul_(0.0).add_(0.5)   # in place on the view
    x, y = batch()
    nn.functional.cross_entropy(model(x), y).backward()
    expected_w = weight.detach() - alpha_w * weight.grad
    expected_b = bias.detach() - 0.5 * bias.grad
    opt.step()
    torch.testing.assert_close(weight.detach(), expected_w, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(bias.detach(), expected_b, rtol=1e-6, atol=1e-8)
    assert torch.equal(opt.state_dict()["state"][index_of(model, weight)]["alpha"], alpha_w)

    # TURTLE: zeroing m of one parameter in place equals assigning zeros, and differs from not.
    runs = []
    for edit in ("none", "in place", "assign", "whole entry"):
        model = UserCNN()
        opt = make(TurtleOptimizer, model.parameters(), lr=0.1)
        train_steps(model, opt, 2)
        w = model.head.weight
        if edit == "in place":
            opt.state[w]["m"].zero_()
        elif edit == "assign":
            opt.state[w]["m"] = torch.zeros_like(w)
        elif edit == "whole entry":
            opt.state[w] = {**opt.state[w], "m": torch.zeros_like(w)}
        train_steps(model, opt, 1)
        runs.append(values(model))
    assert not torch.equal(runs[0], runs[1])
    assert torch.equal(runs[1], runs[2]) and torch.equal(runs[1], runs[3])


def test_state_refuses_what_it_cannot_do_clearly():
    model = UserCNN()
    opt = make(TurtleOptimizer, model.parameters())
    w = model.head.weight
    with pytest.raises(KeyError, match="no state 'exp_avg'.*'m', 'alpha', 'step'"):
        opt.state[w]["exp_avg"]
    with pytest.raises(KeyError, match="no state 'exp_avg'"):
        opt.state[w]["exp_avg"] = torch.zeros_like(w)
    with pytest.raises(ValueError, match=r"'m' must be a tensor of shape \(3, 4\), got \(4, 3\)"):
        opt.state[w]["m"] = torch.zeros(4, 3)
    with pytest.raises(TypeError, match="'step' is the step count of the whole param group"):
        opt.state[w]["step"] = torch.tensor(5.0)
    for state in opt.state.values():  # the idiom that moves optimizer state to a device
        for name, value in state.items():
            state[name] = value.to("cpu")  # "step" included: its own value is accepted
    with pytest.raises(TypeError, match="cannot be removed"):
        del opt.state[w]["m"]
    with pytest.raises(TypeError, match="cannot be removed"):
        del opt.state[w]
    with pytest.raises(KeyError, match=r"shape \(2,\) is not a parameter of this optimizer"):
        opt.state[nn.Parameter(torch.zeros(2))]
    assert torch.equal(opt.state[w]["m"], torch.zeros_like(w))  # nothing changed


def test_state_follows_load_state_dict_and_added_groups():
    model = UserCNN()
    opt = make(TurtleOptimizer, model.parameters(), lr=0.1)
    train_steps(model, opt, 2)
    saved = opt.state_dict()
    train_steps(model, opt, 2)
    opt.load_state_dict(saved)
    assert torch.equal(opt.state[model.head.bias]["m"],
                       saved["state"][index_of(model, model.head.bias)]["m"])
    assert int(opt.state[model.head.bias]["step"]) == 2
    extra = nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": [extra], "alpha": 0.25})
    assert extra in opt.state and torch.equal(opt.state[extra]["alpha"], torch.full((3,), 0.25))


# -- schedulers that cycle momentum ----------------------------------------------------------------

def test_one_cycle_lr_with_its_defaults_cycles_turtles_beta_and_the_others_refuse_it():
    torch.manual_seed(0)
    rule = TurtleRule(hidden_size=6, num_hidden_layers=2)
    model = UserCNN()
    opt = TurtleOptimizer(model.parameters(), rule=rule, lr=1.0, alpha=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=6)
    x, y = batch()
    theta = values(model)
    m = None
    betas = []
    for t in range(6):
        group = opt.param_groups[0]
        lr, beta = group["lr"], group["momentum"]
        betas.append(beta)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        proposed, m = reference.turtle_step(theta, grad, grad if m is None else m, t,
                                            torch.full_like(theta, 0.01), list(rule.weights),
                                            list(rule.biases), beta, math.inf)
        theta = (theta + lr * (proposed - theta)).detach()
        m = m.detach()
        opt.step()
        opt.zero_grad()
        scheduler.step()
        torch.testing.assert_close(values(model), theta, rtol=1e-6, atol=1e-7)
    # OneCycleLR's default range 0.95 -> 0.85 -> 0.95 reached the step as TURTLE's beta.
    assert betas[0] == pytest.approx(0.95) and min(betas) < 0.9 < max(betas)

    # The LSTM and Meta-SGD have no momentum: cycling it is refused when the scheduler is made
    # (not at some later step), and cycle_momentum=False schedules the lr alone.
    for cls in (LSTMOptimizer, MetaSGD):
        model = UserCNN()
        opt = make(cls, model.parameters())
        assert "momentum" not in opt.defaults and "betas" not in opt.defaults
        with pytest.raises(ValueError, match="momentum"):
            torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=4)
        with pytest.raises(ValueError, match="momentum"):
            torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.1, max_lr=0.5)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=10,
                                                        cycle_momentum=False)
        lrs = []
        for _ in range(10):
            lrs.append(opt.param_groups[0]["lr"])
            train_steps(model, opt, 1)
            scheduler.step()
        assert lrs[0] < 0.1 and max(lrs) == pytest.approx(0.5, rel=0.01) and lrs[-1] < 0.01
        assert torch.isfinite(values(model)).all()


def test_turtle_momentum_defaults_to_the_rules_beta_and_is_checked():
    rule = TurtleRule(beta=0.7)
    a, b = UserCNN(), UserCNN()
    opt_a = TurtleOptimizer(a.parameters(), rule=rule, lr=0.1)           # momentum None: 0.7
    opt_b = TurtleOptimizer(b.parameters(), rule=rule, lr=0.1, momentum=0.7)
    train_steps(a, opt_a, 3)
    train_steps(b, opt_b, 3)
    assert opt_a.param_groups[0]["momentum"] is None
    assert torch.equal(values(a), values(b))
    with pytest.raises(ValueError, match=r"momentum \(TURTLE's beta\) must lie in \[0, 1\]"):
        TurtleOptimizer(UserCNN().parameters(), momentum=1.5)
    opt_a.param_groups[0]["momentum"] = float("nan")  # as a misconfigured scheduler would
    with pytest.raises(ValueError, match="momentum"):
        train_steps(a, opt_a, 1)
