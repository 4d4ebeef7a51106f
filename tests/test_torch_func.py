"""The fused ops under torch.func transforms (grad, vjp, jacrev, vmap) against the reference.

functorch refuses the ops' C++ autograd, so under a transform the wrappers route through
learnedopt/ops/_functorch.py; these tests fail if that route is missing, gives other numbers than
the reference, or lets a second differentiation silently return zeros.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.func import grad, jacrev, vjp, vmap
from torch.utils._pytree import tree_leaves

from learnedopt import ops, reference
from learnedopt.ops import _vmap, available
from tests.test_meta_lstm_op import make_inputs as lstm_inputs
from tests.test_turtle_op import make_net, make_state

pytestmark = pytest.mark.skipif(not available("cpu"), reason="learnedopt._C is not built")
DT = torch.float64
CLOSE = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(autouse=True)
def _fused():
    with ops.use_backend("fused"), warnings.catch_warnings():
        # The ops have vmap rules (learnedopt/ops/_vmap.py): functorch's slow fallback would warn.
        warnings.filterwarnings("error", message=".*batching rule.*")
        yield


def both(fn):
    """fn(op module) on the fused ops and on the reference."""
    fused = fn(ops)
    with ops.use_backend("reference"):
        expected = fn(reference)
    return fused, expected


def assert_same(got, want):
    """Every tensor of two results (nested tuples and lists) equal to float64 precision."""
    got, want = tree_leaves(got), tree_leaves(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **CLOSE)


def test_preprocess_grad_jacrev_and_vmap():
    x = torch.randn(9, dtype=DT, generator=torch.Generator().manual_seed(0)) * 3
    x[0] = 0.0
    loss = lambda m: lambda x: (m.preprocess(x) ** 2 * torch.arange(2, dtype=DT)).sum()  # noqa: E731
    got, want = both(lambda m: grad(loss(m))(x))
    torch.testing.assert_close(got, want, **CLOSE)
    got, want = both(lambda m: jacrev(m.preprocess)(x))
    torch.testing.assert_close(got, want, **CLOSE)
    got, want = both(lambda m: vmap(m.preprocess)(x.view(3, 3)))
    torch.testing.assert_close(got, want, **CLOSE)
    got, want = both(lambda m: vmap(grad(loss(m)))(x.view(3, 3)))
    torch.testing.assert_close(got, want, **CLOSE)


def test_meta_lstm_step_vjp_every_input():
    inputs = lstm_inputs(6, hidden=5, input_size=4, dtype=DT, seed=3)
    cotangents = [torch.randn_like(t) for t in reference.meta_lstm_step(*inputs)]

    def run(m):
        outs, pullback = vjp(lambda *a: m.meta_lstm_step(*a), *inputs)
        return list(outs) + list(pullback(tuple(cotangents)))
    got, want = both(run)
    assert len(got) == 5 + 15
    assert_same(got, want)


def test_turtle_step_grad_of_theta_and_weights():
    gen = torch.Generator().manual_seed(4)
    weights, biases = make_net("odd", DT, gen)
    theta, g, m, alpha = make_state(11, DT, gen)

    def loss(mod):
        def f(theta, weights, biases):
            theta_new, m_new = mod.turtle_step(theta, g, m, 2, alpha, weights, biases, 0.9, 10.0)
            return (theta_new ** 2).sum() + m_new.sum()
        return grad(f, argnums=(0, 1, 2))(theta, weights, biases)
    got, want = both(loss)
    assert_same(got, want)


def test_second_order_meta_gradient_through_the_gradient_input():
    """The meta-learning use: grad of a loss after a step whose gradient input is itself a
    torch.func.grad (the op differentiated once, the learner twice)."""
    gen = torch.Generator().manual_seed(5)
    weights, biases = make_net("paper", DT, gen)
    theta0, _, m, alpha = make_state(8, DT, gen)
    target = torch.randn(8, generator=gen, dtype=DT)

    def meta_loss(mod):
        def f(theta0):
            g = grad(lambda th: ((th - target) ** 3).sum())(theta0)
            theta1, _ = mod.turtle_step(theta0, g, m, 0, alpha, weights, biases, 0.9, 10.0)
            return ((theta1 - target) ** 2).sum()
        return grad(f)(theta0)
    got, want = both(meta_loss)
    torch.testing.assert_close(got, want, **CLOSE)


@pytest.mark.parametrize("op", ["preprocess", "meta_lstm_step", "turtle_step"])
def test_differentiating_the_backward_is_refused_not_zero(op):
    gen = torch.Generator().manual_seed(6)
    if op == "preprocess":
        x = torch.randn(5, dtype=DT, generator=gen)
        f = lambda x: (ops.preprocess(x) ** 2).sum()  # noqa: E731
    elif op == "meta_lstm_step":
        inputs = lstm_inputs(4, hidden=5, input_size=4, dtype=DT, seed=7)
        x = inputs[0]
        f = lambda x: ops.meta_lstm_step(x, *inputs[1:])[0].pow(2).sum()  # noqa: E731
    else:
        weights, biases = make_net("odd", DT, gen)
        x, g, m, alpha = make_state(5, DT, gen)
        f = lambda x: ops.turtle_step(x, g, m, 1, alpha, weights, biases)[0].pow(2).sum()  # noqa: E731
    with pytest.raises(RuntimeError, match="not differentiable"):
        grad(lambda x: grad(f)(x).sum())(x)


def test_turtle_step_vmap(monkeypatch):
    """Shared weights: the batch folds into one kernel call; batched weights: the op runs per
    batch element; vmap(grad): the backward runs per element, so that every task gets its own
    weight gradients."""
    per_element = []
    original = _vmap._per_element
    monkeypatch.setattr(_vmap, "_per_element",
                        lambda op, *a: per_element.append(op.__name__) or original(op, *a))
    gen = torch.Generator().manual_seed(9)
    weights, biases = make_net("odd", DT, gen)
    stacked = [torch.stack([w, 1.1 * w, 0.9 * w]) for w in weights]
    thetas = torch.randn(3, 6, generator=gen, dtype=DT)
    grads = torch.randn(3, 6, generator=gen, dtype=DT) * 5
    _, g, m, alpha = make_state(6, DT, gen)

    def shared_weights(mod):
        return vmap(lambda th, g: mod.turtle_step(th, g, m, 3, alpha, weights, biases, 0.9, 4.0))(
            thetas, grads)
    assert_same(*both(shared_weights))
    assert per_element == []

    def batched_weights(mod):
        return vmap(lambda th, ws: mod.turtle_step(th, g, m, 1, alpha, ws, biases, 0.9, 10.0))(
            thetas, stacked)
    assert_same(*both(batched_weights))
    assert per_element == ["turtle_step"]

    def per_task_weight_grads(mod):
        def loss(th, ws):
            return mod.turtle_step(th, g, m, 1, alpha, ws, biases, 0.9, 10.0)[0].pow(2).sum()
        return vmap(grad(loss, argnums=1), in_dims=(0, None))(thetas, weights)
    got, want = both(per_task_weight_grads)
    assert [g_.shape for g_ in got] == [(3, *w.shape) for w in weights]
    assert_same(got, want)


def test_meta_lstm_step_vmap_over_tasks_and_its_gradients():
    inputs = lstm_inputs(5, hidden=4, input_size=4, dtype=DT, seed=10)
    theta, grad_, loss, h, c, *rest = inputs  # rest: f_prev, i_prev, then the weights
    thetas = torch.stack([theta, theta * 2, -theta])
    hs = torch.stack([h, h * 0.5, h], dim=1)  # batched along dim 1

    def step(mod):
        def f(th, h, w_hh):
            return mod.meta_lstm_step(th, grad_, loss, h, c, *rest[:3], w_hh, *rest[4:])
        outs = vmap(f, in_dims=(0, 1, None))(thetas, hs, rest[3])
        w_hh_grads = vmap(grad(lambda th, h, w: f(th, h, w)[0].pow(2).sum(), argnums=2),
                          in_dims=(0, 1, None))(thetas, hs, rest[3])
        # A batch of losses folds into one call with a per-task loss (learnedopt/ops/_vmap.py).
        per_loss = vmap(lambda l: mod.meta_lstm_step(theta, grad_, l, h, c, *rest))(
            torch.stack([loss, loss * 3, loss / 7]))
        return (*outs, w_hh_grads, *per_loss)
    got, want = both(step)
    assert got[5].shape == (3, *rest[3].shape)  # per-task w_hh gradients
    assert_same(got, want)


def test_outside_torch_func_the_cpp_autograd_runs():
    x = torch.randn(4, dtype=DT, requires_grad=True)
    y = ops.preprocess(x)
    # A Python autograd.Function's node is a BackwardCFunction; the C++ kernel's is not.
    assert not isinstance(y.grad_fn, torch.autograd.function.BackwardCFunction)
