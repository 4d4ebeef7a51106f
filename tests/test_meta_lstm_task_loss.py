"""meta_lstm_step with a per-task loss (B,): a meta-batch of B tasks in one op call.

Task b owns the coordinates [b*n/B, (b+1)*n/B). Checked against the reference and against B
separate calls on the segments, on every kernel device (CPU, GPU, emulated GPU); B = 1 must be
bitwise the 0-d call; the algorithms' batched call must give the old per-task loop's
meta-gradients.
"""

from __future__ import annotations

import math
import types

import pytest
import torch

from learnedopt import ops
from learnedopt.algorithms import build_algorithm
from learnedopt.learners import MLP
from learnedopt.ops import _backend, _vmap
from learnedopt.ops.meta_lstm import INPUT_NAMES
from learnedopt.tasks.base import TaskBatch
from learnedopt.tasks.sine import SineTasks
from tests.test_meta_lstm_op import assert_close, make_inputs, output_grads, run

pytestmark = pytest.mark.skipif(not _backend.available("cpu", "meta_lstm_step"),
                                reason="learnedopt._C is not built")

PER_COORD = (0, 1, 5, 6)  # theta, grad, f_prev, i_prev: (n,)
STATES = (3, 4)           # h, c: (n, H)
OUTPUT_NAMES = ("theta_new", "h_new", "c_new", "f", "i")


def task_inputs(tasks, per_task, hidden=20, input_size=4, dtype=torch.float64, seed=0, device="cpu"):
    """make_inputs for n = tasks * per_task coordinates, with a distinct loss per task."""
    inputs = make_inputs(tasks * per_task, hidden, input_size, dtype, seed, device)
    gen = torch.Generator().manual_seed(seed + 100)
    inputs[2] = (torch.rand(tasks, generator=gen, dtype=torch.float64) * 3 + 0.05).to(inputs[0])
    return inputs


def segment(inputs, b, tasks):
    """The inputs of task b alone, with its 0-d loss."""
    n = inputs[0].shape[0]
    m = n // tasks
    out = list(inputs)
    for k in PER_COORD + STATES:
        out[k] = inputs[k][b * m:(b + 1) * m]
    out[2] = inputs[2][b]
    return out


def grads_for_segment(g_out, b, tasks):
    m = g_out[0].shape[0] // tasks
    return [g[b * m:(b + 1) * m] for g in g_out]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("input_size", [4, 1])
@pytest.mark.parametrize("hidden", [20, 7])
@pytest.mark.parametrize("tasks,per_task", [(1, 9), (2, 1), (3, 7), (4, 600)])
def test_matches_reference(tasks, per_task, hidden, input_size, dtype, device):
    inputs = task_inputs(tasks, per_task, hidden, input_size, dtype, seed=tasks, device=device)
    ref_out, _ = run("reference", inputs)
    g = output_grads(ref_out)
    ref_out, ref_grads = run("reference", inputs, g)
    out, grads = run("fused", inputs, g)
    for name, a, e in zip(OUTPUT_NAMES, out, ref_out):
        assert_close(a, e, name, dtype)
    assert grads[2].shape == (tasks,)
    for name, a, e in zip(INPUT_NAMES, grads, ref_grads):
        assert a.shape == e.shape, name
        assert_close(a, e, f"d {name}", dtype)
    if input_size == 4:
        # Each task's loss reaches its own coordinates only: its gradient is a real, distinct value.
        assert (grads[2] != 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("input_size", [4, 1])
def test_equals_one_call_per_task(input_size, dtype, device):
    """Outputs, per-coordinate and loss gradients are bitwise those of B calls on the segments;
    the weight gradients are their sum."""
    tasks, m = 3, 257
    inputs = task_inputs(tasks, m, 20, input_size, dtype, seed=5, device=device)
    out, grads = run("fused", inputs, output_grads(run("fused", inputs)[0]))
    g_out = output_grads(out)
    out, grads = run("fused", inputs, g_out)
    weight_sums = [torch.zeros_like(t, dtype=torch.float64) for t in inputs[7:]]
    for b in range(tasks):
        seg_out, seg_grads = run("fused", segment(inputs, b, tasks), grads_for_segment(g_out, b, tasks))
        for k, (a, e) in enumerate(zip(out, seg_out)):
            assert torch.equal(a[b * m:(b + 1) * m], e), (b, OUTPUT_NAMES[k])
        for k in PER_COORD + STATES:
            assert torch.equal(grads[k][b * m:(b + 1) * m], seg_grads[k]), (b, INPUT_NAMES[k])
        assert torch.equal(grads[2][b], seg_grads[2]), b
        for acc, g in zip(weight_sums, seg_grads[7:]):
            acc += g.double()
    for name, a, e in zip(INPUT_NAMES[7:], grads[7:], weight_sums):
        assert_close(a, e.to(dtype), f"d {name}", dtype)


@pytest.mark.parametrize("input_size", [4, 1])
def test_one_task_is_bitwise_the_0d_call(input_size, device):
    for dtype in (torch.float32, torch.float64):
        inputs = make_inputs(301, 20, input_size, dtype, seed=11, device=device)
        batched = list(inputs)
        batched[2] = inputs[2].reshape(1)
        out, _ = run("fused", inputs)
        g = output_grads(out)
        out, grads = run("fused", inputs, g)
        out1, grads1 = run("fused", batched, g)
        for a, e in zip(out1, out):
            assert torch.equal(a, e)
        assert grads1[2].shape == (1,) and grads[2].shape == ()
        for k, (a, e) in enumerate(zip(grads1, grads)):
            assert torch.equal(a.reshape(e.shape), e), INPUT_NAMES[k]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_edge_losses_and_nan_stay_in_their_task(dtype, device):
    """Losses at 0, the preprocessing threshold, huge, tiny and NaN in one call: the NaN task's
    coordinates are NaN, every other task matches the reference."""
    thr = math.exp(-10.0)
    losses = [0.0, thr, 1e30, 1e-20, float("nan"), 2.5]
    tasks, m = len(losses), 5
    inputs = task_inputs(tasks, m, 20, 4, dtype, seed=3, device=device)
    inputs[2] = torch.tensor(losses, dtype=dtype, device=inputs[0].device)
    ref_out, _ = run("reference", inputs)
    g = output_grads(ref_out)
    ref_out, ref_grads = run("reference", inputs, g)
    out, grads = run("fused", inputs, g)
    nan_task = 4
    for name, a, e in zip(OUTPUT_NAMES, out, ref_out):
        assert torch.isnan(a[nan_task * m:(nan_task + 1) * m]).all(), name
        keep = torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
        keep[nan_task * m:(nan_task + 1) * m] = False
        assert torch.isfinite(a[keep]).all(), name
        assert_close(a[keep], e[keep], name, dtype)
    assert torch.isnan(grads[2][nan_task])
    finite = [b for b in range(tasks) if b != nan_task]
    assert_close(grads[2][finite], ref_grads[2][finite], "d loss", dtype)


def test_gradcheck_float64(device):
    for input_size in (4, 1):
        inputs = task_inputs(3, 2, 3, input_size, torch.float64, seed=7, device=device)
        leaves = [t.requires_grad_(True) for t in inputs]
        with ops.use_backend("fused"):
            assert torch.autograd.gradcheck(lambda *a: ops.meta_lstm_step(*a), leaves)


def test_opcheck(device):
    for input_size in (4, 1):
        inputs = task_inputs(3, 3, 5, input_size, torch.float64, seed=8, device=device)
        args = (*inputs, 10.0, 0.0, False)
        torch.library.opcheck(torch.ops.learnedopt.meta_lstm_step.default, args)
        leaves = (*[t.clone().requires_grad_(True) for t in inputs], 10.0, 0.0, False)
        torch.library.opcheck(torch.ops.learnedopt.meta_lstm_step.default, leaves)
        outs = torch.ops.learnedopt.meta_lstm_step(*args)
        torch.library.opcheck(torch.ops.learnedopt.meta_lstm_step_backward.default,
                              (*output_grads(outs), *inputs, 10.0, 0.0, False))


@pytest.mark.parametrize("loss_shape,word", [((2, 3), "0-d .* or of shape \\(B,\\)"),
                                             ((4,), "do not split into 4 equal segments"),
                                             ((0,), "at least one task")])
def test_wrong_loss_shape_is_refused(loss_shape, word, device):
    inputs = make_inputs(6, 4, 4, torch.float32, seed=13, device=device)
    inputs[2] = torch.ones(loss_shape, dtype=torch.float32, device=inputs[0].device)
    for backend in ("fused", "reference"):
        with ops.use_backend(backend), pytest.raises(ValueError, match=f"loss.*{word}"):
            ops.meta_lstm_step(*inputs)
    # The C++ glue refuses it when the wrapper is bypassed, forward and backward.
    with pytest.raises(RuntimeError, match=f"loss.*{word}"):
        torch.ops.learnedopt.meta_lstm_step(*inputs, 10.0, 0.0, False)
    outs = [torch.zeros_like(inputs[k]) for k in (0, 3, 4, 0, 0)]
    with pytest.raises(RuntimeError, match=f"loss.*{word}"):
        torch.ops.learnedopt.meta_lstm_step_backward(*outs, *inputs, 10.0, 0.0, False)


@pytest.mark.parametrize("per_element_loss", [(), (2,)])
def test_vmap_over_losses_is_one_fused_call(per_element_loss, monkeypatch):
    """vmap over a batch of losses (and states) folds into one op call with a per-task loss."""
    inputs = task_inputs(2, 8, 6, 4, torch.float64, seed=21)
    batch = 3
    gen = torch.Generator().manual_seed(4)
    losses = torch.rand(batch, *per_element_loss, generator=gen, dtype=torch.float64) + 0.1
    thetas = torch.randn(batch, inputs[0].shape[0], generator=gen, dtype=torch.float64)

    def step(theta, loss):
        args = list(inputs)
        args[0], args[2] = theta, loss
        return ops.meta_lstm_step(*args)

    calls = []
    real = _vmap._fold

    def counting_fold(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(_vmap, "_fold", counting_fold)
    monkeypatch.setattr(_vmap, "_per_element", None)  # must not be reached
    with ops.use_backend("fused"):
        expected = [step(thetas[k], losses[k]) for k in range(batch)]
        got = torch.vmap(step)(thetas, losses)
    assert calls == [1]
    for k in range(batch):
        for name, a, e in zip(OUTPUT_NAMES, got, expected[k]):
            torch.testing.assert_close(a[k], e, rtol=1e-12, atol=1e-12, msg=name)


# ------------------------------------------------------------------ the algorithms' batched call

def _old_init_state(self, theta):
    return [self.rule.init_state(row) for row in theta]


def _old_step(self, theta, grad, loss, state, t, steps):
    """The per-task loop the algorithms ran before the op took a per-task loss."""
    rows, states = [], []
    for b in range(theta.shape[0]):
        row, task_state = self.rule(theta[b], grad[b], loss[b], state[b])
        rows.append(row)
        states.append(task_state)
    return torch.stack(rows), states


def _meta_gradients(algorithm, batch):
    algorithm.zero_grad(set_to_none=True)
    loss, _ = algorithm.meta_loss(batch)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in algorithm.named_parameters()
                           if p.grad is not None}


@pytest.mark.parametrize("name", ["metalstm", "metalstm++", "enhanced-lstm"])
def test_batched_call_gives_the_per_task_loops_meta_gradients(name, monkeypatch):
    torch.manual_seed(0)
    algorithm = build_algorithm(name, MLP((1, 20, 20, 1)), meta_batch_size=4, inner_steps=3)
    algorithm.double()
    b = SineTasks(k_shot=5, k_query=5).sample(4, torch.Generator().manual_seed(1))
    batch = TaskBatch(*(t.double() for t in (b.x_support, b.y_support, b.x_query, b.y_query)))
    calls = []
    real = ops.meta_lstm_step

    def counting(*args, **kwargs):
        calls.append(args[2].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "meta_lstm_step", counting)
    with ops.use_backend("fused"):
        loss, new = _meta_gradients(algorithm, batch)
        assert calls == [(4,)] * 3  # one call per inner step, with the four tasks' losses
        calls.clear()
        algorithm._init_state = types.MethodType(_old_init_state, algorithm)
        algorithm._step = types.MethodType(_old_step, algorithm)
        old_loss, old = _meta_gradients(algorithm, batch)
        assert calls == [()] * 12
    torch.testing.assert_close(loss, old_loss, rtol=1e-10, atol=1e-12)
    assert new.keys() == old.keys() and "rule.w_ih" in new
    for key in new:
        scale = old[key].abs().max().item()
        torch.testing.assert_close(new[key], old[key], rtol=1e-10, atol=1e-10 * max(scale, 1e-30),
                                   msg=key)
