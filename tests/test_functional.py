"""learnedopt.functional: the rules as differentiable init/update pairs over a user's parameter dict.

The functional loop over an nn.Sequential must compute what the package's algorithms compute over
the built-in MLP (adapted parameters and meta-gradients, fused and reference, float64), first and
second order must differ exactly where the math says, the meta-gradient must pass gradcheck, each
step must be one op call over all the tensors, and bad input must be refused by name.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from learnedopt import functional as LF
from learnedopt import ops
from learnedopt.algorithms import build_algorithm
from learnedopt.checkpoint import save_checkpoint
from learnedopt.learners import MLP
from learnedopt.optim import pretrained
from learnedopt.rules import MetaLSTMRule, TurtleRule
from learnedopt.tasks.base import TaskBatch
from learnedopt.tasks.sine import SineTasks

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ["fused", "reference"]


@pytest.fixture(autouse=True)
def _single_thread():
    # Other work shares the machine's cores; one thread also makes the runs reproducible.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _backend(name):
    if name == "fused" and not ops.available("cpu"):
        pytest.skip("the fused CPU kernels are not built")
    return ops.use_backend(name)


def sine_batch(tasks=2, seed=0, dtype=torch.float64):
    batch = SineTasks(k_shot=5, k_query=5).sample(tasks, torch.Generator().manual_seed(seed))
    return TaskBatch(*(t.to(dtype) for t in (batch.x_support, batch.y_support, batch.x_query,
                                              batch.y_query)))


def sequential_like(learner: MLP, theta: torch.Tensor) -> nn.Sequential:
    """A user nn.Sequential with the built-in MLP's architecture and the weights ``theta``."""
    layers = []
    for k, (fan_in, fan_out) in enumerate(zip(learner.sizes[:-1], learner.sizes[1:])):
        layers += [nn.Linear(fan_in, fan_out)] + ([nn.ReLU()] if k < len(learner.sizes) - 2 else [])
    model = nn.Sequential(*layers).to(theta.dtype)
    with torch.no_grad():
        for p, value in zip(model.parameters(), learner.layout.unflatten(theta.detach()).values()):
            p.copy_(value)
    return model


def flat(params: dict) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params.values()])


def user_meta_loss(model, opt, batch, steps, first_order):
    """The README's loop: per task, ``steps`` updates on the support set, then the query loss;
    returns the mean query loss and each task's adapted parameters (flat)."""
    losses, adapted = [], []
    for b in range(batch.num_tasks):
        params = dict(model.named_parameters())
        state = opt.init(params)
        for _ in range(steps):
            loss = F.mse_loss(functional_call(model, params, (batch.x_support[b],)), batch.y_support[b])
            params, state = opt.step(loss, params, state, first_order=first_order)
        losses.append(F.mse_loss(functional_call(model, params, (batch.x_query[b],)), batch.y_query[b]))
        adapted.append(flat(params))
    return torch.stack(losses).mean(), torch.stack(adapted)


def rule_of(algorithm_name, options):
    return MetaLSTMRule(input_size=1 if algorithm_name == "enhanced-lstm" else 4)


# algorithm name, its options, and the functional optimizer that must compute the same.
CASES = {
    "maml": ("maml", {"inner_lr": 0.05, "inner_steps": 2}, lambda params: LF.SGD(0.05)),
    "fomaml": ("fomaml", {"inner_lr": 0.05, "inner_steps": 2}, lambda params: LF.SGD(0.05)),
    "metasgd": ("metasgd", {"inner_steps": 2}, lambda params: LF.MetaSGD(params)),
    "metalstm": ("metalstm", {"inner_steps": 3}, lambda params: LF.MetaLSTM(MetaLSTMRule(input_size=4))),
    "enhanced-lstm": ("enhanced-lstm", {"inner_steps": 3},
                      lambda params: LF.MetaLSTM(MetaLSTMRule(input_size=1))),
    "turtle": ("turtle", {"inner_steps": 3}, lambda params: LF.Turtle(params, grad_clamp=10.0)),
    "turtle-fo": ("turtle", {"inner_steps": 3, "first_order": True},
                  lambda params: LF.Turtle(params, grad_clamp=10.0)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_functional_loop_computes_what_the_algorithm_computes(case, backend):
    """An nn.Sequential with the built-in MLP's weights, adapted by a user loop over
    learnedopt.functional, gives the algorithm's adapted parameters and meta-gradients (theta_0,
    alpha and every rule weight), float64 to 1e-10. The optimizer takes its meta-parameters from
    the algorithm's state_dict (same names: alpha, rule.*)."""
    name, options, make = CASES[case]
    torch.manual_seed(0)
    learner = MLP()
    algorithm = build_algorithm(name, learner, **options).double()
    batch = sine_batch()
    model = sequential_like(learner, algorithm.theta0)
    opt = make(dict(model.named_parameters())).double()
    opt.load_state_dict({k: v for k, v in algorithm.state_dict().items() if k != "theta0"})
    steps = algorithm.options()["inner_steps"]
    with _backend(backend):
        expected_loss, _ = algorithm.meta_loss(batch)
        expected_adapted = algorithm.adapt(batch.x_support, batch.y_support, steps, meta_graph=True)
        meta = dict(algorithm.named_parameters())
        expected = dict(zip(meta, torch.autograd.grad(expected_loss, list(meta.values()))))
        loss, adapted = user_meta_loss(model, opt, batch, steps, algorithm.first_order)
        mine = [*model.parameters(), *opt.parameters()]
        grads = torch.autograd.grad(loss, mine)
    close = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, expected_loss, **close)
    torch.testing.assert_close(adapted, expected_adapted, **close)
    n_model = len(list(model.parameters()))
    torch.testing.assert_close(flat(dict(enumerate(grads[:n_model]))), expected["theta0"], **close)
    names = [k for k, _ in opt.named_parameters()]
    assert sorted(names) == sorted(k for k in expected if k != "theta0")
    for key, g in zip(names, grads[n_model:]):
        torch.testing.assert_close(g, expected[key], **close, msg=key)


def _meta_gradients(make, steps, first_order, seed=0):
    torch.manual_seed(seed)
    model = sequential_like(MLP(), MLP().init_parameters(dtype=torch.float64))
    opt = make(dict(model.named_parameters())).double()
    loss, _ = user_meta_loss(model, opt, sine_batch(), steps, first_order)
    names = ["theta0." + k for k, _ in model.named_parameters()] + [k for k, _ in opt.named_parameters()]
    values = [*model.parameters(), *opt.parameters()]
    return dict(zip(names, torch.autograd.grad(loss, values)))


@pytest.mark.parametrize("case", ["maml", "metasgd", "metalstm", "enhanced-lstm", "turtle"])
def test_first_and_second_order_differ_exactly_where_they_should(case):
    """With one inner step the update's meta-parameters (alpha, the rule) see the same gradient
    in FO and SO (g_0 does not depend on them), while theta_0's differ (SO adds the Hessian
    term). With two steps g_1 depends on every meta-parameter the first step used, so all those
    gradients differ; the LSTM's w_hh multiplies h_0 = 0 in the first step, so theta_1 and g_1
    do not depend on it and its gradient must still be the same."""
    make = CASES[case][2]
    so1, fo1 = _meta_gradients(make, 1, False), _meta_gradients(make, 1, True)
    so2, fo2 = _meta_gradients(make, 2, False), _meta_gradients(make, 2, True)
    for key in so1:
        gap1 = (so1[key] - fo1[key]).abs().max().item()
        if key.startswith("theta0."):
            assert gap1 > 1e-6, key
        else:
            assert gap1 <= 1e-13 * max(1.0, so1[key].abs().max().item()), (key, gap1)
    assert max((so2[k] - fo2[k]).abs().max().item() for k in so2 if k.startswith("theta0.")) > 1e-6
    for key in so2:
        if key.startswith("theta0."):
            continue
        gap2, scale = (so2[key] - fo2[key]).abs().max().item(), so2[key].abs().max().item()
        if key == "rule.w_hh":
            assert gap2 <= 1e-13 * max(1.0, scale), (key, gap2)
        else:
            assert scale > 0 and gap2 > 1e-9 * scale, (key, gap2, scale)


GRADCHECK_OPTIMIZERS = {
    "sgd": lambda params: LF.SGD(0.3),
    "metasgd": lambda params: LF.MetaSGD(params, alpha_low=0.1, alpha_high=0.5),
    "metalstm": lambda params: LF.MetaLSTM(MetaLSTMRule(input_size=4, hidden_size=2)),
    "enhanced-lstm": lambda params: LF.MetaLSTM(MetaLSTMRule(input_size=1, hidden_size=2)),
    "turtle": lambda params: LF.Turtle(params, TurtleRule(hidden_size=3, num_hidden_layers=1)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(GRADCHECK_OPTIMIZERS))
def test_gradcheck_of_the_meta_gradient_through_two_second_order_steps(kind, backend):
    """The meta-loss after 2 second-order steps as a function of theta_0 and of every
    meta-parameter (given through functional_call on the optimizer), float64 gradcheck."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    opt = GRADCHECK_OPTIMIZERS[kind](dict(model.named_parameters())).double()
    # Small rule weights would hide a wrong gradient behind tiny numbers: scale them up.
    with torch.no_grad():
        for p in opt.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, xq = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    y, yq = torch.sin(x.sum(1, keepdim=True)), torch.sin(xq.sum(1, keepdim=True))
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    meta_names = [k for k, _ in opt.named_parameters()]

    def meta_loss(theta0, *meta):
        params = dict(zip(names, [part.view(s) for part, s in
                                  zip(theta0.split([math.prod(s) for s in shapes]), shapes)]))
        meta_params = dict(zip(meta_names, meta))
        state = opt.init(params)
        for _ in range(2):
            loss = F.mse_loss(functional_call(model, params, (x,)), y)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            params, state = functional_call(opt, meta_params, (params, grads, state), {"loss": loss})
        return F.mse_loss(functional_call(model, params, (xq,)), yq)

    inputs = (flat(dict(model.named_parameters())).detach().requires_grad_(),
              *(p.detach().clone().requires_grad_() for p in opt.parameters()))
    with _backend(backend):
        assert torch.autograd.gradcheck(meta_loss, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


# -- one op call per step, and the parameters are not copied after the first step -------------------

class _OpRecorder:
    """Wraps ops.<op> to count calls and keep what theta was and what came out."""

    def __init__(self, monkeypatch, op):
        self.thetas, self.outputs = [], []
        inner = getattr(ops, op)

        def wrapper(theta, *args, **kwargs):
            out = inner(theta, *args, **kwargs)
            self.thetas.append(theta)
            self.outputs.append(out[0])
            return out

        monkeypatch.setattr(ops, op, wrapper)


@pytest.mark.parametrize("kind", ["metalstm", "turtle"])
def test_one_op_call_per_step_and_no_parameter_copy_after_the_first(monkeypatch, kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    params = dict(model.named_parameters())
    opt = LF.MetaLSTM() if kind == "metalstm" else LF.Turtle(params)
    recorder = _OpRecorder(monkeypatch, "meta_lstm_step" if kind == "metalstm" else "turtle_step")
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    states = [opt.init(params)]
    trajectory = [params]
    for _ in range(3):
        loss = F.mse_loss(functional_call(model, trajectory[-1], (x,)), y)
        params, state = opt.step(loss, trajectory[-1], states[-1])
        trajectory.append(params)
        states.append(state)
    assert len(recorder.thetas) == 3  # six tensors, one call per step
    n = sum(p.numel() for p in model.parameters())
    assert all(t.shape == (n,) for t in recorder.thetas)
    # Steps 2 and 3 ran on the previous step's output itself (no concatenation), and the returned
    # tensors are views of the op's output.
    assert recorder.thetas[1] is recorder.outputs[0] and recorder.thetas[2] is recorder.outputs[1]
    assert all(v._base is recorder.outputs[-1] for v in params.values())
    # Tensors the caller replaced (here by equal copies) are concatenated again: same step.
    copies = {k: v.detach().clone().requires_grad_() for k, v in trajectory[1].items()}
    loss = F.mse_loss(functional_call(model, copies, (x,)), y)
    again, _ = opt.step(loss, copies, states[1])
    assert recorder.thetas[-1] is not recorder.outputs[0]
    for k in again:
        torch.testing.assert_close(again[k], trajectory[2][k], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["sgd", "metasgd", "metalstm", "turtle"])
def test_update_is_a_pure_function(kind):
    """Nothing given to update is modified, and stepping twice from one state gives the same."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    params = dict(model.named_parameters())
    opt = GRADCHECK_OPTIMIZERS[kind](params)
    state = opt.init(params)
    loss = model(torch.randn(3, 2)).pow(2).mean()
    grads = torch.autograd.grad(loss, list(params.values()))
    before = ({k: v.detach().clone() for k, v in params.items()}, [g.clone() for g in grads],
              {k: v.clone() for k, v in state.buffers.items()})
    first, state1 = opt.update(params, grads, state, loss=loss.detach())
    # Dicts in another order mean the same: the state's layout fixes the order.
    second, state2 = opt.update(dict(reversed(params.items())), dict(reversed(list(zip(params, grads)))),
                                state, loss=loss.detach())
    for k in params:
        assert torch.equal(params[k], before[0][k])
        assert torch.equal(first[k], second[k])
    assert all(torch.equal(g, b) for g, b in zip(grads, before[1]))
    assert all(torch.equal(state.buffers[k], before[2][k]) for k in state.buffers)
    assert state.step == 0 and state1.step == state2.step == 1


@pytest.mark.parametrize("kind", ["sgd", "metasgd", "metalstm", "turtle"])
def test_the_state_fixes_the_order_whatever_the_dicts_order(kind):
    """Tensors of equal shapes under swapped names would pass any shape check: the names decide."""
    torch.manual_seed(0)
    params = {"a": torch.randn(4, requires_grad=True), "b": torch.randn(4, requires_grad=True)}
    grads = {"a": torch.randn(4), "b": torch.randn(4)}
    opt = GRADCHECK_OPTIMIZERS[kind](params)
    state = opt.init(params)
    with torch.no_grad():
        in_order, _ = opt.update(params, grads, state, loss=torch.tensor(0.5))
        swapped, _ = opt.update({"b": params["b"], "a": params["a"]}, {"b": grads["b"], "a": grads["a"]},
                                state, loss=torch.tensor(0.5))
    assert list(in_order) == ["a", "b"]
    for k in params:
        assert torch.equal(in_order[k], swapped[k]), k
    assert not torch.equal(in_order["a"], in_order["b"])


# -- meta-parameters from rule files and checkpoints ----------------------------------------------

@pytest.mark.parametrize("name,cls", [("turtle-sine", LF.Turtle), ("metalstm-sine", LF.MetaLSTM),
                                      ("metasgd-sine", LF.MetaSGD)])
def test_from_pretrained_starts_from_the_shipped_rule_and_trains_it(name, cls):
    model = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1)).double()
    params = dict(model.named_parameters())
    opt = LF.from_pretrained(name, params)
    assert type(opt) is cls
    rule_file = pretrained.load_rule(name)
    for key, value in rule_file["state_dict"].items():
        assert torch.equal(opt.state_dict()["rule." + key], value.double()), key
    if "alpha" in rule_file:
        assert torch.all(opt.alpha == rule_file["alpha"]["median"])
    if rule_file.get("max_t") is not None:
        assert opt.max_t == rule_file["max_t"]
    assert all(p.requires_grad and p.dtype == torch.float64 for p in opt.parameters())
    x = torch.linspace(-3, 3, 10, dtype=torch.float64).unsqueeze(1)
    state = opt.init(params)
    for _ in range(2):
        loss = F.mse_loss(functional_call(model, params, (x,)), torch.sin(x))
        params, state = opt.step(loss, params, state)
    F.mse_loss(functional_call(model, params, (x,)), torch.sin(x)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in opt.parameters())
    frozen = LF.from_pretrained(name, params, trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_from_pretrained_reads_a_meta_training_checkpoint(tmp_path):
    torch.manual_seed(0)
    algorithm = build_algorithm("turtle", MLP())
    with torch.no_grad():
        algorithm.rule.weights[0].mul_(2.0)  # anything but a fresh rule's weights
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"format": "learnedopt-checkpoint/1", "algorithm": "turtle",
                           "options": algorithm.options(), "state_dict": algorithm.state_dict(),
                           "iteration": 7, "learner": MLP().config()})
    model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 1))
    opt = LF.from_pretrained(path, dict(model.named_parameters()), alpha=0.25)
    for key, value in algorithm.rule.state_dict().items():
        assert torch.equal(opt.rule.state_dict()[key], value), key
    assert torch.all(opt.alpha == 0.25) and opt.max_t == 4 and opt.rule.grad_clamp == 10.0
    with pytest.raises(pretrained.PretrainedError, match="neither a file nor the name"):
        LF.from_pretrained(tmp_path / "missing.pt", dict(model.named_parameters()))


# -- bad input --------------------------------------------------------------------------------------

def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))


@pytest.mark.parametrize("kind", ["sgd", "metasgd", "metalstm", "turtle"])
def test_mismatched_dicts_are_refused_by_name(kind):
    model = _tiny()
    params = dict(model.named_parameters())
    opt = GRADCHECK_OPTIMIZERS[kind](params)
    state = opt.init(params)
    loss = model(torch.ones(1, 2)).sum()
    grads = torch.autograd.grad(loss, list(params.values()))
    loss = loss.detach()

    def update(p, g=grads, s=state):
        return opt.update(p, g, s, loss=loss)

    missing = {k: v for k, v in params.items() if k != "2.bias"}
    with pytest.raises(ValueError, match=r"missing \['2.bias'\]"):
        update(missing)
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        update({**params, "extra": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"changed shapes: 0.weight \(3, 3\) \(was \(3, 2\)\)"):
        update({**params, "0.weight": torch.zeros(3, 3)})
    with pytest.raises(TypeError, match=r"params\['0.bias'\] has dtype torch.int64"):
        update({**params, "0.bias": torch.zeros(3, dtype=torch.int64)})
    with pytest.raises(TypeError, match="must be a dict name -> tensor"):
        opt.init(list(model.parameters()))
    with pytest.raises(ValueError, match="params is empty"):
        opt.init({})
    with pytest.raises(ValueError, match="same tensor as"):
        opt.init({"a": params["0.weight"], "b": params["0.weight"]})
    with pytest.raises(ValueError, match=r"params\['2.weight'\] is torch.float64"):
        opt.init({**params, "2.weight": params["2.weight"].double()})
    with pytest.raises(ValueError, match="params are torch.float64 on cpu but the state was made "
                                         "for torch.float32"):
        update({k: v.double() for k, v in params.items()})
    # Gradients: missing, wrong count, wrong shape, None.
    with pytest.raises(ValueError, match=r"grads must have the names of params: missing \['2.bias'\]"):
        update(params, dict(zip(list(params)[:-1], grads)))
    with pytest.raises(ValueError, match="3 gradients for 4 parameters"):
        update(params, grads[:3])
    with pytest.raises(ValueError, match=r"the gradient of '0.bias' is torch.float32 \(2,\)"):
        update(params, [grads[0], torch.zeros(2), *grads[2:]])
    with pytest.raises(ValueError, match=r"the gradient of '2.bias' is None"):
        update(params, [*grads[:3], None])
    # A state made for another dict, or by another optimizer, or not a state.
    other = dict(nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 1)).named_parameters())
    other_state = GRADCHECK_OPTIMIZERS[kind](other).init(other)
    with pytest.raises(ValueError, match="do not match the dict the state was made for.*changed shapes"):
        update(params, s=other_state)
    foreign = LF.SGD(0.1).init(params) if kind != "sgd" else LF.MetaLSTM().init(params)
    with pytest.raises(ValueError, match="this state was made by learnedopt.functional"):
        update(params, s=foreign)
    with pytest.raises(TypeError, match="state must be what init/update returned"):
        update(params, s={"step": 0})
    if kind in ("metasgd", "turtle"):  # their alpha fixes the layout at construction
        with pytest.raises(ValueError, match="step sizes were made for other parameters.*changed shapes"):
            opt.init(other)


def test_other_bad_input_is_refused_clearly():
    model = _tiny()
    params = dict(model.named_parameters())
    loss = model(torch.ones(1, 2)).sum()
    grads = torch.autograd.grad(loss, list(params.values()), retain_graph=True)
    lstm = LF.MetaLSTM()
    with pytest.raises(ValueError, match="reads the loss: pass loss="):
        lstm.update(params, grads, lstm.init(params))
    with pytest.raises(ValueError, match="loss must be a scalar"):
        lstm.update(params, grads, lstm.init(params), loss=torch.ones(2))
    raw = LF.MetaLSTM(MetaLSTMRule(input_size=1))
    raw.update(params, grads, raw.init(params))  # the raw-gradient rule needs no loss
    with pytest.raises(ValueError, match=r"'rule.w_ih' is torch.float32 on cpu but the parameters are "
                                         r"torch.float64"):
        lstm.init({k: v.double() for k, v in params.items()})
    with pytest.raises(ValueError, match="made for a rule of hidden size 2, this optimizer's has 20"):
        lstm.update(params, grads, LF.MetaLSTM(MetaLSTMRule(hidden_size=2)).init(params), loss=1.0)
    with pytest.raises(TypeError, match="rule must be a learnedopt.rules.MetaLSTMRule"):
        LF.MetaLSTM(TurtleRule())
    with pytest.raises(TypeError, match="rule must be a learnedopt.rules.TurtleRule"):
        LF.Turtle(params, MetaLSTMRule())
    with pytest.raises(ValueError, match="lr must be finite and >= 0"):
        LF.SGD(-1.0)
    with pytest.raises(ValueError, match=r"a tensor alpha must be flat, shape \(13,\)"):
        LF.MetaSGD(params, alpha=torch.ones(3))
    with pytest.raises(ValueError, match=r"alpha must have the names and shapes of params: missing"):
        LF.Turtle(params, alpha={"0.weight": torch.ones(3, 2)})
    with pytest.raises(ValueError, match="grad_clamp must be > 0"):
        LF.Turtle(params, grad_clamp=0.0)
    # step: frozen tensors, a loss without graph, a non-scalar loss.
    sgd = LF.SGD(0.1)
    frozen = {**params, "0.bias": params["0.bias"].detach()}
    with pytest.raises(ValueError, match=r"\['0.bias'\] do not require grad"):
        sgd.step(loss, frozen, sgd.init(frozen))
    with pytest.raises(ValueError, match="the loss has no graph"):
        sgd.step(loss.detach(), params, sgd.init(params))
    with pytest.raises(ValueError, match="loss must be a floating-point scalar"):
        sgd.step(model(torch.ones(3, 2)), params, sgd.init(params))


def test_alpha_initialisation_and_per_parameter_views():
    model = _tiny()
    params = dict(model.named_parameters())
    torch.manual_seed(0)
    drawn = LF.MetaSGD(params).alpha
    assert drawn.shape == (13,) and drawn.min() >= 0.005 and drawn.max() <= 0.1
    given = {k: torch.full_like(v, i + 1.0) for i, (k, v) in enumerate(params.items())}
    turtle = LF.Turtle(params, alpha=given)
    views = turtle.alpha_per_parameter()
    assert list(views) == list(params)
    assert all(torch.equal(views[k], given[k]) for k in params)
    assert views["0.weight"]._base is turtle.alpha  # views, not copies
    assert not LF.Turtle(params, alpha=0.5, learn_alpha=False).alpha.requires_grad


# -- the README example ------------------------------------------------------------------------------

def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Differentiable optimizers on your own loop\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_and_meta_learns(capsys):
    """The README's code, as written: it meta-trains, and its validation meta-loss goes down."""
    namespace: dict = {}
    exec(compile(readme_example(), "README.md (functional example)", "exec"), namespace)
    assert len(namespace["history"]) == namespace["iterations"] == 100
    assert all(math.isfinite(v) for v in namespace["history"])
    before, after = namespace["before"], namespace["after"]
    assert after < 0.95 * before, (before, after)
    assert f"validation meta-loss {before:.3f} -> {after:.3f}" in capsys.readouterr().out
    # The outer loop reached the module (theta_0), the rule's weights and the step sizes.
    for p in [*namespace["model"].parameters(), *namespace["opt"].parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0
