"""The drop-in learned optimizers (learnedopt.optim): torch.optim conformance, the flat-buffer
machinery, rule files and from_pretrained, backends and the O(1)-launch claim."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from learnedopt import ops, reference
from learnedopt.optim import (LSTMOptimizer, MetaSGD, PretrainedError, TurtleOptimizer,
                              export_rule, load_rule, save_rule)
from learnedopt.rules import MetaLSTMRule, TurtleRule
from tests import cuda_emulation

OPTIMIZERS = (LSTMOptimizer, TurtleOptimizer, MetaSGD)


# -- helpers ---------------------------------------------------------------------------------------

def mlp(seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)


def regression_data(seed: int = 1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, generator=g, dtype=dtype)
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=dtype)).sin()
    return x, y


def mse(model, x, y):
    return ((model(x) - y) ** 2).mean()


def make_optimizer(cls, params, **kwargs):
    torch.manual_seed(123)  # the untrained rules are random: same seed -> same rule
    return cls(params, **kwargs)


def train(model, opt, steps, x, y, style="step-loss"):
    losses = []
    for _ in range(steps):
        if style == "closure":
            def closure():
                opt.zero_grad()
                loss = mse(model, x, y)
                loss.backward()
                return loss
            losses.append(opt.step(closure).detach())
        else:
            loss = mse(model, x, y)
            loss.backward()
            opt.step(loss=loss)
            opt.zero_grad(set_to_none=(style == "set-to-none"))
            losses.append(loss.detach())
    return torch.stack(losses)


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def sgd_turtle_rule() -> TurtleRule:
    """A hand-set TURTLE rule whose g_phi(g, m, t) = -m (momentum SGD): a rule that descends,
    standing in for a meta-trained one."""
    rule = TurtleRule(hidden_size=2, num_hidden_layers=1, use_t=True)
    with torch.no_grad():
        rule.weights[0].copy_(torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]))
        rule.weights[1].copy_(torch.tensor([[-1.0, 1.0]]))
        rule.biases[0].zero_()
        rule.biases[1].zero_()
    return rule


def sgd_lstm_rule(rate: float = 0.1) -> MetaLSTMRule:
    """A hand-set meta-LSTM: forget gate ~1, input gate sigmoid(b_i) = rate: plain SGD."""
    rule = MetaLSTMRule()
    with torch.no_grad():
        rule.w_f.zero_()
        rule.w_i.zero_()
        rule.b_f.fill_(30.0)
        rule.b_i.fill_(math.log(rate / (1 - rate)))
    return rule


def fake_checkpoint(algorithm: str, rule: nn.Module | None, alpha: torch.Tensor | None,
                    options: dict | None = None) -> dict:
    """A meta-training checkpoint in the documented "learnedopt-checkpoint/1" layout."""
    state = {} if rule is None else {f"rule.{k}": v.detach().clone() for k, v in rule.state_dict().items()}
    if alpha is not None:
        state["alpha"] = alpha
    state["theta0"] = torch.randn(7)
    return {"format": "learnedopt-checkpoint/1", "algorithm": algorithm, "options": options or {},
            "state_dict": state, "iteration": 100}


# -- the flat buffers compute exactly the rule on the concatenated parameters ----------------------

def test_lstm_step_is_the_rule_on_the_flat_vector():
    model = mlp()
    x, y = regression_data()
    rule = MetaLSTMRule()
    opt = LSTMOptimizer(model.parameters(), rule=rule, lr=0.5)
    theta = flat_params(model)
    state = rule.init_state(theta)
    with torch.no_grad():
        for _ in range(3):
            with torch.enable_grad():
                loss = mse(model, x, y)
                grads = torch.autograd.grad(loss, list(model.parameters()))
            grad = torch.cat([g.reshape(-1) for g in grads])
            proposed, state = rule(theta, grad, loss.detach(), state)
            theta = theta + 0.5 * (proposed - theta)
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            opt.step(loss=loss)
            torch.testing.assert_close(flat_params(model), theta)
    saved = opt.state_dict()["state"]
    torch.testing.assert_close(torch.cat([saved[k]["h"].reshape(-1, 20) for k in range(4)]), state.h)


def test_turtle_and_metasgd_steps_are_the_rule_on_the_flat_vector():
    model = mlp()
    x, y = regression_data()
    for rule in (TurtleRule(), sgd_turtle_rule()):  # random; and u = -m, which exposes m
        model = mlp()
        turtle = TurtleOptimizer(model.parameters(), rule=rule, alpha=0.3, max_t=2)
        theta, m = flat_params(model), None
        alpha = torch.full_like(theta, 0.3)
        for t in range(4):
            loss = mse(model, x, y)
            loss.backward()
            grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            theta, m = reference.turtle_step(theta, grad, m if m is not None else grad, min(t, 2),
                                             alpha, list(rule.weights), list(rule.biases), 0.9,
                                             math.inf)
            turtle.step()
            turtle.zero_grad()
            torch.testing.assert_close(flat_params(model), theta.detach(), rtol=1e-6, atol=1e-7)

    model = mlp()
    sgd = MetaSGD(model.parameters(), lr=0.5, alpha=0.2)
    before = flat_params(model)
    mse(model, x, y).backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    sgd.step()
    torch.testing.assert_close(flat_params(model), before - 0.5 * 0.2 * grad)


def test_parameters_become_views_of_one_buffer_and_model_state_loads_stay_visible():
    model = mlp()
    opt = TurtleOptimizer(model.parameters())
    flat = opt._flat[0]
    start = flat.param.data_ptr()
    size = flat.param.element_size()
    for p, a in zip(model.parameters(), flat.bounds):
        assert p.data_ptr() == start + a * size
    # load_state_dict of the model copies in place: the optimizer must see the new values.
    other = mlp(seed=5)
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(flat.param, flat_params(other))


# -- torch.optim API --------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_state_dict_round_trip_continues_the_same_trajectory(cls):
    x, y = regression_data()
    model = mlp()
    opt = make_optimizer(cls, model.parameters())
    train(model, opt, 3, x, y)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    fresh_model = mlp(seed=99)
    fresh = make_optimizer(cls, fresh_model.parameters())
    fresh_model.load_state_dict(saved["model"])
    fresh.load_state_dict(saved["opt"])
    expected = train(model, opt, 5, x, y)
    got = train(fresh_model, fresh, 5, x, y)
    assert torch.equal(expected, got)
    assert torch.equal(flat_params(model), flat_params(fresh_model))
    # Every piece of per-coordinate state and the step count survived.
    for name, value in opt.state_dict()["state"][1].items():
        assert torch.equal(value, fresh.state_dict()["state"][1][name]), name


def test_state_dict_is_a_snapshot_and_names_every_state():
    x, y = regression_data()
    model = mlp()
    opt = make_optimizer(LSTMOptimizer, model.parameters())
    train(model, opt, 2, x, y)
    snapshot = opt.state_dict()
    h_before = snapshot["state"][0]["h"].clone()
    train(model, opt, 2, x, y)
    assert torch.equal(snapshot["state"][0]["h"], h_before)
    assert set(snapshot["state"][0]) == {"h", "c", "f", "i", "step"}
    assert snapshot["state"][0]["h"].shape == (8, 3, 20)
    assert int(snapshot["state"][0]["step"]) == 2
    assert int(opt.state_dict()["state"][0]["step"]) == 4


def test_load_state_dict_rejects_mismatches_and_leaves_the_optimizer_untouched():
    model = mlp()
    turtle = make_optimizer(TurtleOptimizer, model.parameters())
    before = turtle.state_dict()
    with pytest.raises(ValueError, match="lacks state 'm'"):
        turtle.load_state_dict(make_optimizer(MetaSGD, mlp().parameters()).state_dict())
    bigger = nn.Sequential(nn.Linear(3, 9), nn.Tanh(), nn.Linear(9, 1))
    with pytest.raises(ValueError, match="has shape"):
        turtle.load_state_dict(make_optimizer(TurtleOptimizer, bigger.parameters()).state_dict())
    with pytest.raises(ValueError, match="param groups"):
        turtle.load_state_dict({"state": {}, "param_groups": []})
    for k, entry in turtle.state_dict()["state"].items():
        for name, value in entry.items():
            assert torch.equal(value, before["state"][k][name])


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_closure_matches_explicit_loss(cls):
    x, y = regression_data()
    a, b = mlp(), mlp()
    opt_a, opt_b = make_optimizer(cls, a.parameters()), make_optimizer(cls, b.parameters())
    losses_a = train(a, opt_a, 4, x, y, style="closure")
    losses_b = train(b, opt_b, 4, x, y)
    assert torch.equal(losses_a, losses_b)
    assert torch.equal(flat_params(a), flat_params(b))


def test_lstm_needs_the_loss_unless_its_rule_reads_the_raw_gradient():
    x, y = regression_data()
    model = mlp()
    opt = LSTMOptimizer(model.parameters())
    mse(model, x, y).backward()
    with pytest.raises(ValueError, match="reads the loss"):
        opt.step()
    with pytest.raises(ValueError, match="scalar"):
        opt.step(loss=torch.ones(2))
    # A number is as good as a tensor.
    twin = mlp()
    twin_opt = LSTMOptimizer(twin.parameters(), rule=opt.rule)
    mse(twin, x, y).backward()
    opt.step(loss=torch.tensor(1.5))
    twin_opt.step(loss=1.5)
    assert torch.equal(flat_params(model), flat_params(twin))
    enhanced = LSTMOptimizer(model.parameters(), rule=MetaLSTMRule(input_size=1))
    before = flat_params(model)
    enhanced.step()
    assert not torch.equal(before, flat_params(model))


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_lr_scheduler_scales_the_effective_step(cls):
    x, y = regression_data()
    plain_model, sched_model = mlp(), mlp()
    plain = make_optimizer(cls, plain_model.parameters())
    sched = make_optimizer(cls, sched_model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(sched, step_size=2, gamma=0.1)
    for k in range(3):
        updates = []
        for model, opt in ((plain_model, plain), (sched_model, sched)):
            before = flat_params(model)
            loss = mse(model, x, y)
            loss.backward()
            opt.step(loss=loss)
            opt.zero_grad()
            updates.append(flat_params(model) - before)
        scheduler.step()
        factor = 1.0 if k < 2 else 0.1
        torch.testing.assert_close(updates[1], factor * updates[0], rtol=1e-4, atol=1e-7)
    assert sched.param_groups[0]["lr"] == pytest.approx(0.1)


def test_param_groups_take_their_own_options():
    # Two identical parameters with identical gradients, in groups with different options.
    torch.manual_seed(0)
    value = torch.randn(5)
    a, b, c = (nn.Parameter(value.clone()) for _ in range(3))
    opt = make_optimizer(TurtleOptimizer, [{"params": [a], "alpha": 0.1},
                                           {"params": [b], "alpha": 0.3},
                                           {"params": [c], "alpha": 0.1, "lr": 0.0}])
    loss = sum(((p - 1.0) ** 2).sum() for p in (a, b, c))
    loss.backward()
    opt.step()
    torch.testing.assert_close(b.detach() - value, 3.0 * (a.detach() - value))
    assert torch.equal(c.detach(), value)  # lr 0: no change, though its state advanced
    assert int(opt.state_dict()["state"][2]["step"]) == 1
    with pytest.raises(ValueError, match="max_t"):
        TurtleOptimizer([{"params": [nn.Parameter(torch.zeros(2))], "max_t": 0}])


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_parameters_without_gradients_are_skipped(cls):
    x, y = regression_data()
    model = mlp()
    unused = nn.Parameter(torch.randn(4))
    frozen = nn.Parameter(torch.randn(3), requires_grad=False)
    unused_value, frozen_value = unused.detach().clone(), frozen.detach().clone()
    opt = make_optimizer(cls, [*model.parameters(), unused, frozen])
    reference_model = mlp()
    reference_opt = make_optimizer(cls, reference_model.parameters())
    train(model, opt, 4, x, y)
    train(reference_model, reference_opt, 4, x, y)
    assert torch.equal(unused.detach(), unused_value) and unused.grad is None
    assert torch.equal(frozen.detach(), frozen_value)
    # The parameters that had gradients moved as without the idle ones (up to the rounding of a
    # matrix product over a different number of rows).
    torch.testing.assert_close(flat_params(model), flat_params(reference_model),
                               rtol=1e-5, atol=1e-6)

    # A parameter that loses its gradient for one step keeps its value and its state.
    first = next(model.parameters())
    loss = mse(model, x, y)
    loss.backward()
    first.grad = None
    value, state = first.detach().clone(), opt.state_dict()["state"][0]
    opt.step(loss=loss)
    assert torch.equal(first.detach(), value)
    for name, saved in opt.state_dict()["state"][0].items():
        if name != "step":
            assert torch.equal(saved, state[name]), name


def test_sparse_gradients_are_refused_clearly():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = TurtleOptimizer(emb.parameters())
    opt.zero_grad(set_to_none=True)
    emb(torch.tensor([1, 2])).sum().backward()
    assert emb.weight.grad.is_sparse
    with pytest.raises(TypeError, match="sparse.*dense gradients"):
        opt.step()


def test_bad_parameters_are_refused_clearly():
    with pytest.raises(TypeError, match="float16.*float32 or float64"):
        TurtleOptimizer([nn.Parameter(torch.zeros(3, dtype=torch.float16))])
    with pytest.raises(ValueError, match="own group"):
        MetaSGD([nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3, dtype=torch.float64))])
    p = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="twice"):
        MetaSGD([{"params": [p, p]}])
    with pytest.raises(TypeError, match="MetaLSTMRule"):
        LSTMOptimizer([p], rule=TurtleRule())
    with pytest.raises(ValueError, match="lr"):
        MetaSGD([p], lr=-1.0)
    model = mlp()
    opt = MetaSGD(model.parameters())
    model.double()  # replaces .data: the optimizer must notice rather than update a stale buffer
    with pytest.raises(RuntimeError, match="no longer lives in the optimizer's flat buffer"):
        opt.step()


def test_zero_grad_semantics():
    x, y = regression_data()
    model = mlp()
    opt = make_optimizer(TurtleOptimizer, model.parameters())
    flat = opt._flat[0]
    params = list(model.parameters())
    assert all(p.grad is None for p in params)  # no gradient before the first backward
    mse(model, x, y).backward()
    opt.step()
    views = [p.grad for p in params]
    assert all(g is v for g, v in zip(views, flat.grad_views))  # adopted into the flat buffer
    opt.zero_grad()
    assert all(p.grad is v for p, v in zip(params, views)) and not flat.grad.any()
    mse(model, x, y).backward()  # backward accumulates into the views in place
    assert all(p.grad is v for p, v in zip(params, views)) and flat.grad.any()
    # A gradient the user replaces is used by the step, and re-attached.
    params[0].grad = torch.ones_like(params[0])
    opt.step()
    assert params[0].grad is views[0] and bool((views[0] == 1).all())
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("style", ["set-to-none", "closure"])
def test_gradient_styles_give_the_same_trajectory(style):
    x, y = regression_data()
    a, b = mlp(), mlp()
    opt_a = make_optimizer(LSTMOptimizer, a.parameters())
    opt_b = make_optimizer(LSTMOptimizer, b.parameters())
    assert torch.equal(train(a, opt_a, 4, x, y), train(b, opt_b, 4, x, y, style=style))
    opt_a.zero_grad()
    opt_b.zero_grad()  # a closure zeroes before its backward: the last gradients are still there
    # model.zero_grad() (which sets .grad to None) instead of opt.zero_grad() is handled too.
    for _ in range(2):
        for model, opt in ((a, opt_a), (b, opt_b)):
            loss = mse(model, x, y)
            loss.backward()
            opt.step(loss=loss)
        a.zero_grad()
        opt_b.zero_grad()
    assert torch.equal(flat_params(a), flat_params(b))


def test_float64_parameters_run_in_float64():
    x, y = regression_data(dtype=torch.float64)
    model = mlp(dtype=torch.float64)
    opt = make_optimizer(LSTMOptimizer, model.parameters())
    losses = train(model, opt, 3, x, y)
    assert losses.dtype == torch.float64
    assert opt.state_dict()["state"][0]["h"].dtype == torch.float64


# -- backends -----------------------------------------------------------------------------------------

def _trajectory(cls, device, backend, dtype, steps=50, forbid_sync=False):
    x, y = regression_data(dtype=dtype)
    x, y = x.to(device), y.to(device)
    model = mlp(dtype=dtype).to(device)
    opt = make_optimizer(cls, model.parameters())
    if isinstance(getattr(opt, "rule", None), nn.Module):
        opt.rule.to(device=device, dtype=dtype)
    if forbid_sync:  # any host synchronisation in the training loop (the steps included) raises
        torch.cuda.set_sync_debug_mode("error")
    try:
        with ops.use_backend(backend):
            train(model, opt, steps, x, y)
    finally:
        if forbid_sync:
            torch.cuda.set_sync_debug_mode("default")
    return flat_params(model).cpu()


FUSED_CASES = [(LSTMOptimizer, "meta_lstm_step"), (TurtleOptimizer, "turtle_step")]


@pytest.mark.parametrize("cls,op", FUSED_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_and_reference_give_the_same_trajectory_on_cpu(cls, op, dtype):
    if not ops.available("cpu", op):
        pytest.skip(f"no fused CPU kernel of {op} in this build (build it in place: "
                    f"python3 setup.py build_ext --inplace)")
    fused = _trajectory(cls, "cpu", "fused", dtype)
    ref = _trajectory(cls, "cpu", "reference", dtype)
    tol = {"rtol": 1e-9, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-3, "atol": 1e-4}
    torch.testing.assert_close(fused, ref, **tol)


@pytest.mark.parametrize("cls,op", FUSED_CASES)
def test_fused_cuda_matches_the_cpu_reference_without_host_sync(cls, op, cuda_device):
    """On a GPU, no step synchronises with the host either."""
    ref = _trajectory(cls, "cpu", "reference", torch.float64)
    fused = _trajectory(cls, cuda_device, "fused", torch.float64, forbid_sync=not cuda_device.emulated)
    torch.testing.assert_close(fused, ref, rtol=1e-9, atol=1e-10)


# -- O(1) launches ----------------------------------------------------------------------------------

def _ops_per_step(cls, num_tensors, device="cpu"):
    """Profiler events (ATen ops and fused ops, and on CUDA the kernels) of one optimizer step
    and zero_grad; with the CUDA kernels emulated, the emulated launches stand for the kernels."""
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(7, device=device)) for _ in range(num_tensors)]
    opt = make_optimizer(cls, params)
    if isinstance(getattr(opt, "rule", None), nn.Module):
        opt.rule.to(device)

    def backward():
        loss = sum((p ** 2).sum() for p in params)
        loss.backward()
        return loss.detach()

    loss = backward()
    opt.step(loss=loss)  # warm-up: adopts the gradients, converts the rule weights once
    opt.zero_grad()
    loss = backward()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    emulated = getattr(device, "emulated", False)
    launched = cuda_emulation.launches()[0] if emulated else 0
    with torch.profiler.profile(activities=activities) as prof:
        opt.step(loss=loss)
        opt.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    cpu_ops = [e.name for e in events if e.name.startswith(("aten::", "learnedopt::"))]
    kernels = [e.name for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    if emulated:
        kernels = ["emulated launch"] * (cuda_emulation.launches()[0] - launched)
    return cpu_ops, kernels


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_ops_per_step_do_not_grow_with_the_number_of_tensors(cls):
    small, _ = _ops_per_step(cls, 10)
    large, _ = _ops_per_step(cls, 100)
    assert len(small) > 0
    assert sorted(small) == sorted(large), (len(small), len(large))


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_cuda_kernels_per_step_do_not_grow_with_the_number_of_tensors(cls, cuda_device):
    _, small = _ops_per_step(cls, 10, cuda_device)
    _, large = _ops_per_step(cls, 100, cuda_device)
    assert len(small) == len(large)
    # Emulated, only learnedopt's own kernels count (MetaSGD has none); on a GPU, torch's too.
    assert len(small) > 0 or (cuda_device.emulated and cls is MetaSGD)


# -- rule files, checkpoints, from_pretrained ------------------------------------------------------

def test_turtle_from_pretrained_trains_a_new_model(tmp_path):
    alpha = 0.2 + 0.2 * torch.rand(500)
    path = tmp_path / "turtle.pt"
    torch.save(fake_checkpoint("turtle", sgd_turtle_rule(), alpha, {"inner_steps": 5}), path)
    x, y = regression_data()
    model = mlp()
    opt = TurtleOptimizer.from_pretrained(path, model.parameters())
    assert opt.param_groups[0]["alpha"] == pytest.approx(alpha.double().median().item())
    assert opt.param_groups[0]["max_t"] == 4
    assert opt.rule.grad_clamp == 10.0  # SPEC §3: the authors clamp at 10 when T > 1
    losses = []
    for _ in range(60):
        loss = mse(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_lstm_and_metasgd_from_pretrained_train_a_new_model(tmp_path):
    x, y = regression_data()
    save_rule(tmp_path / "lstm.pt", sgd_lstm_rule(0.2))
    save_rule(tmp_path / "sgd.pt", None, alpha=torch.full((10,), 0.2))
    for cls, name in ((LSTMOptimizer, "lstm.pt"), (MetaSGD, "sgd.pt")):
        model = mlp()
        opt = cls.from_pretrained(tmp_path / name, model.parameters())
        losses = train(model, opt, 60, x, y, style="closure")
        assert losses[-1] < 0.5 * losses[0], cls.__name__


def test_export_rule_keeps_what_transfers(tmp_path):
    rule = TurtleRule(hidden_size=6, num_hidden_layers=2, use_t=False)
    alpha = torch.linspace(0.0, 1.0, 11)
    ckpt = tmp_path / "ckpt.pt"
    torch.save(fake_checkpoint("turtle", rule, alpha, {"inner_steps": 1}), ckpt)
    written = export_rule(ckpt, tmp_path / "rules" / "turtle.pt")
    loaded = torch.load(tmp_path / "rules" / "turtle.pt", weights_only=True)
    assert loaded["format"] == "learnedopt-rule/1" and loaded["kind"] == "turtle"
    assert loaded["config"] == rule.config() | {"grad_clamp": math.inf}
    assert "theta0" not in str(loaded["state_dict"].keys())
    assert loaded["alpha"]["median"] == pytest.approx(0.5)
    assert loaded["max_t"] is None and written["kind"] == "turtle"
    for name, value in rule.state_dict().items():
        assert torch.equal(loaded["state_dict"][name], value)
    # The exported file and the checkpoint give the same optimizer.
    p1, p2 = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    a = TurtleOptimizer.from_pretrained(ckpt, [p1], alpha="mean")
    b = TurtleOptimizer.from_pretrained(tmp_path / "rules" / "turtle.pt", [p2], lr=0.5, alpha=0.25)
    assert a.param_groups[0]["alpha"] == pytest.approx(0.5) and b.param_groups[0]["alpha"] == 0.25
    assert b.param_groups[0]["lr"] == 0.5
    for wa, wb in zip(a.rule.parameters(), b.rule.parameters()):
        assert torch.equal(wa, wb)
    # An enhanced-LSTM checkpoint gives a raw-gradient LSTM rule.
    enhanced = MetaLSTMRule(input_size=1, hidden_size=8)
    torch.save(fake_checkpoint("enhanced-lstm", enhanced, None), ckpt)
    opt = LSTMOptimizer.from_pretrained(ckpt, [nn.Parameter(torch.ones(2))])
    assert opt.rule.input_size == 1 and opt.rule.hidden_size == 8


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_bad_files_are_rejected_clearly(tmp_path):
    p = [nn.Parameter(torch.zeros(2))]
    good_turtle = fake_checkpoint("turtle", TurtleRule(), torch.rand(5))
    with pytest.raises(PretrainedError, match="neither a file nor the name"):
        TurtleOptimizer.from_pretrained(tmp_path / "missing.pt", p)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(PretrainedError, match="not a readable learnedopt file"):
        TurtleOptimizer.from_pretrained(garbage, p)
    with pytest.raises(PretrainedError, match="it asks to import.*refused for safety"):
        TurtleOptimizer.from_pretrained(_save(tmp_path / "code.pt", {"x": io.BytesIO()}), p)
    with pytest.raises(PretrainedError, match="format"):
        TurtleOptimizer.from_pretrained(_save(tmp_path / "plain.pt", {"a": torch.ones(1)}), p)
    with pytest.raises(PretrainedError, match="load it with TurtleOptimizer"):
        LSTMOptimizer.from_pretrained(_save(tmp_path / "t.pt", good_turtle), p)
    with pytest.raises(PretrainedError, match="learns no update rule"):
        MetaSGD.from_pretrained(_save(tmp_path / "maml.pt", fake_checkpoint("maml", None, None)), p)
    no_alpha = fake_checkpoint("turtle", TurtleRule(), None)
    with pytest.raises(PretrainedError, match="lacks 'alpha'"):
        TurtleOptimizer.from_pretrained(_save(tmp_path / "na.pt", no_alpha), p)
    no_rule = fake_checkpoint("metalstm", None, None)
    with pytest.raises(PretrainedError, match=r"lacks \['rule.w_ih'"):
        LSTMOptimizer.from_pretrained(_save(tmp_path / "nr.pt", no_rule), p)
    rule_file = {"format": "learnedopt-rule/1", "kind": "metalstm", "config": MetaLSTMRule().config(),
                 "state_dict": MetaLSTMRule().state_dict()}
    rule_file["state_dict"]["w_f"] = torch.zeros(5)
    with pytest.raises(PretrainedError, match="do not match its config.*w_f"):
        LSTMOptimizer.from_pretrained(_save(tmp_path / "shape.pt", rule_file), p)
    del rule_file["state_dict"]
    with pytest.raises(PretrainedError, match=r"lacks the keys \['state_dict'\]"):
        LSTMOptimizer.from_pretrained(_save(tmp_path / "keys.pt", rule_file), p)
    with pytest.raises(PretrainedError, match="unknown rule kind"):
        load_rule(_save(tmp_path / "kind.pt", {"format": "learnedopt-rule/1", "kind": "adam",
                                                "config": {}, "state_dict": {}}))


def test_export_rule_command_and_shipped_names(tmp_path, monkeypatch, capsys):
    from learnedopt.optim import __main__ as command
    from learnedopt.optim import pretrained
    ckpt = _save(tmp_path / "ckpt.pt", fake_checkpoint("metasgd", None, torch.full((4,), 0.3)))
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "shipped")
    assert command.main(["export-rule", str(ckpt), str(tmp_path / "shipped" / "sgd-test.pt")]) == 0
    assert "kind=metasgd" in capsys.readouterr().out
    assert pretrained.shipped_rules() == ["sgd-test"]
    opt = MetaSGD.from_pretrained("sgd-test", [nn.Parameter(torch.ones(2))])
    assert opt.param_groups[0]["alpha"] == pytest.approx(0.3)
    assert command.main(["show", str(tmp_path / "nothing.pt")]) == 2
    assert "neither a file nor the name" in capsys.readouterr().err


@pytest.mark.parametrize("algorithm,cls", [("turtle", TurtleOptimizer), ("metasgd", MetaSGD),
                                           ("metalstm", LSTMOptimizer),
                                           ("enhanced-lstm", LSTMOptimizer)])
def test_checkpoints_of_the_real_algorithms_load(algorithm, cls, tmp_path):
    """Guards the layout contract with learnedopt.algorithms ("rule.*", "alpha", options names)."""
    algorithms = pytest.importorskip("learnedopt.algorithms")
    learners = pytest.importorskip("learnedopt.learners")
    if not hasattr(algorithms, "build_algorithm") or not hasattr(learners, "MLP"):
        pytest.skip("learnedopt.algorithms / learners are not in this tree yet")
    torch.manual_seed(0)
    algo = algorithms.build_algorithm(algorithm, learners.MLP())
    checkpoint = {"format": "learnedopt-checkpoint/1", "algorithm": algorithm,
                  "options": algo.options(), "state_dict": algo.state_dict(), "iteration": 0}
    model = mlp()
    opt = cls.from_pretrained(_save(tmp_path / "ckpt.pt", checkpoint), model.parameters())
    if hasattr(algo, "rule"):
        for name, value in algo.rule.state_dict().items():
            assert torch.equal(opt.rule.state_dict()[name], value), name
        assert opt.rule.config() == algo.rule.config() | (
            {"grad_clamp": 10.0} if algorithm == "turtle" else {})
    if hasattr(algo, "alpha"):
        assert opt.param_groups[0]["alpha"] == pytest.approx(algo.alpha.detach().median().item())
    x, y = regression_data()
    train(model, opt, 2, x, y, style="closure")
    assert torch.isfinite(flat_params(model)).all()
