"""Reduced-precision optimizer state (``state_dtype=torch.bfloat16``) of the drop-in learned
optimizers: each step must be exactly the full-precision step on the widened state, rounded back,
whatever the block boundaries of the LSTM's widened step and whichever parameters are skipped."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from learnedopt import ops
from learnedopt.optim import LSTMOptimizer, TurtleOptimizer

CASES = [(LSTMOptimizer, "meta_lstm_step", ("h", "c")), (TurtleOptimizer, "turtle_step", ("m",))]


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    # 2,593 coordinates: several widening blocks of the size the tests set, and a ragged last one.
    return nn.Sequential(nn.Linear(7, 48), nn.Tanh(), nn.Linear(48, 46), nn.Tanh(), nn.Linear(46, 1))


def build(cls, params, **kwargs):
    torch.manual_seed(123)  # the untrained rules are random: same seed -> same rule
    return cls(params, **kwargs)


def backend_or_skip(backend: str, op: str):
    if backend == "fused" and not ops.available("cpu", op):
        pytest.skip(f"no fused CPU kernel of {op} in this build")
    return ops.use_backend(backend)


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("skip_one", [False, True], ids=["all-step", "one-skipped"])
@pytest.mark.parametrize("cls,op,reduced", CASES, ids=["lstm", "turtle"])
def test_bfloat16_state_is_the_full_step_on_the_widened_state(cls, op, reduced, skip_one, backend,
                                                                monkeypatch):
    monkeypatch.setattr(LSTMOptimizer, "STAGE_COORDS", {"cpu": 1000, "other": 1000})
    low, shadow = model(), model()
    opt = build(cls, low.parameters(), state_dtype=torch.bfloat16)
    full = build(cls, shadow.parameters())
    x = torch.randn(32, 7, generator=torch.Generator().manual_seed(5))
    y = torch.randn(32, 1, generator=torch.Generator().manual_seed(6))
    with backend_or_skip(backend, op):
        for step in range(4):
            losses = []
            for net in (low, shadow):
                loss = ((net(x) - y) ** 2).mean()
                loss.backward()
                if skip_one:  # the middle layer's weight has no gradient: its state must stay
                    net[2].weight.grad = None
                losses.append(loss.detach())
            # The shadow starts the step from the widened reduced state (and the same rest).
            for name, buffer in opt._flat[0].state.items():
                full._flat[0].state[name].copy_(buffer)
            kept = {name: opt._flat[0].state[name].clone() for name in reduced}
            for o, loss in zip((opt, full), losses):
                o.step(loss=loss)
                o.zero_grad()
            for name in reduced:
                got = opt._flat[0].state[name]
                assert got.dtype == torch.bfloat16
                assert torch.equal(got, full._flat[0].state[name].to(torch.bfloat16)), (step, name)
                if skip_one:
                    lo, hi = opt._flat[0].bounds[2], opt._flat[0].bounds[3]
                    assert torch.equal(got[lo:hi], kept[name][lo:hi])
            for name in opt._flat[0].state.keys() - set(reduced):
                assert torch.equal(opt._flat[0].state[name], full._flat[0].state[name]), (step, name)
            for p, q in zip(low.parameters(), shadow.parameters()):
                assert torch.equal(p, q), step


@pytest.mark.parametrize("cls,op,reduced", CASES, ids=["lstm", "turtle"])
def test_bfloat16_state_memory_state_dict_and_resume(cls, op, reduced):
    net = model()
    opt = build(cls, net.parameters(), state_dtype=torch.bfloat16)
    full = build(cls, model().parameters())
    bytes_low = sum(b.numel() * b.element_size() for b in opt._flat[0].state.values())
    bytes_full = sum(b.numel() * b.element_size() for b in full._flat[0].state.values())
    per_coord_full = sum(b[0].numel() for b in full._flat[0].state.values()) * 4
    per_coord_low = per_coord_full - sum(full._flat[0].state[r][0].numel() for r in reduced) * 2
    assert bytes_low * per_coord_full == bytes_full * per_coord_low
    x = torch.randn(16, 7)
    for _ in range(2):
        loss = net(x).square().mean()
        loss.backward()
        opt.step(loss=loss)
    saved = opt.state_dict()
    for name in reduced:
        assert saved["state"][0][name].dtype == torch.bfloat16
    before = {k: v.clone() for k, v in saved["state"][0].items()}
    loss = net(x).square().mean()
    loss.backward()
    opt.step(loss=loss)  # a state_dict is a snapshot: later steps (in place for the LSTM) leave it
    for k, v in before.items():
        assert torch.equal(saved["state"][0][k], v), k
    # Into a bfloat16 optimizer: bitwise; into a float32 one: widened exactly.
    again = build(cls, model().parameters(), state_dtype=torch.bfloat16)
    again.load_state_dict(saved)
    wide = build(cls, model().parameters())
    wide.load_state_dict(saved)
    for name in reduced:
        assert again._flat[0].state[name].dtype == torch.bfloat16
        assert torch.equal(again.state_dict()["state"][0][name], saved["state"][0][name])
        assert wide._flat[0].state[name].dtype == torch.float32
        assert torch.equal(wide.state_dict()["state"][0][name], saved["state"][0][name].float())
    # A float32 state_dict into a bfloat16 optimizer is rounded to nearest.
    low = build(cls, model().parameters(), state_dtype=torch.bfloat16)
    low.load_state_dict(wide.state_dict())
    for name in reduced:
        assert torch.equal(low._flat[0].state[name], wide._flat[0].state[name].to(torch.bfloat16))


@pytest.mark.parametrize("cls", [LSTMOptimizer, TurtleOptimizer])
@pytest.mark.parametrize("bad", [torch.float16, torch.float64, "bfloat16", 16])
def test_other_state_dtypes_are_refused_by_name(cls, bad):
    with pytest.raises(ValueError, match="state_dtype must be None .* or torch.bfloat16"):
        cls(model().parameters(), state_dtype=bad)


def test_bfloat16_state_from_pretrained():
    net = model()
    opt = TurtleOptimizer.from_pretrained("turtle-sine", net.parameters(), state_dtype=torch.bfloat16)
    assert opt._flat[0].state["m"].dtype == torch.bfloat16
    lstm = LSTMOptimizer.from_pretrained("metalstm-sine", net.parameters(),
                                         state_dtype=torch.bfloat16)
    assert lstm.state[net[0].weight]["h"].dtype == torch.bfloat16
