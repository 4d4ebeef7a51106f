"""``meta_lstm_step``: one fused step of the coordinate-wise meta-learner LSTM (SPEC §2)."""

from __future__ import annotations

import torch
from torch import Tensor

from learnedopt import _extension, reference
from learnedopt.ops import _backend, _checks, _functorch

INPUT_NAMES = ("theta", "grad", "loss", "h", "c", "f_prev", "i_prev", "w_ih", "w_hh", "b_ih",
               "b_hh", "w_f", "b_f", "w_i", "b_i")
# Hidden sizes with a specialised (unrolled) kernel; others run a generic kernel up to MAX_HIDDEN.
FAST_HIDDEN_SIZES = (20,)
MAX_HIDDEN = 64


def _check(theta, grad, loss, h, c, f_prev, i_prev, w_ih, w_hh, b_ih, b_hh, w_f, b_f, w_i, b_i, p,
           log_eps, op="meta_lstm_step"):
    _checks.check_vector(op, "theta", theta)
    n = theta.shape[0]
    _checks.check_tensor(op, "h", h, theta)
    if h.dim() != 2 or h.shape[0] != n:
        raise ValueError(f"learnedopt.ops.{op}: h must have shape (n, hidden) with n = {n}, "
                         f"got {tuple(h.shape)}")
    hidden = h.shape[1]
    if not 1 <= hidden <= MAX_HIDDEN:
        raise ValueError(f"learnedopt.ops.{op}: hidden size {hidden} is not supported "
                         f"(1..{MAX_HIDDEN}; {FAST_HIDDEN_SIZES} have specialised kernels)")
    for name, t in (("grad", grad), ("f_prev", f_prev), ("i_prev", i_prev)):
        _checks.check_tensor(op, name, t, theta, shape=(n,))
    _checks.check_tensor(op, "loss", loss, theta)
    _checks.check_task_loss(op, loss, n)
    _checks.check_tensor(op, "c", c, theta, shape=(n, hidden))
    _checks.check_tensor(op, "w_ih", w_ih, theta)
    if w_ih.dim() != 2 or w_ih.shape[0] != 4 * hidden or w_ih.shape[1] not in (1, 4):
        raise ValueError(
            f"learnedopt.ops.{op}: w_ih must have shape (4*hidden, 4) for preprocessed "
            f"[loss, grad] input or (4*hidden, 1) for the raw gradient, with hidden = {hidden}; "
            f"got {tuple(w_ih.shape)}")
    _checks.check_tensor(op, "w_hh", w_hh, theta, shape=(4 * hidden, hidden))
    _checks.check_tensor(op, "b_ih", b_ih, theta, shape=(4 * hidden,))
    _checks.check_tensor(op, "b_hh", b_hh, theta, shape=(4 * hidden,))
    for name, t in (("w_f", w_f), ("w_i", w_i)):
        _checks.check_tensor(op, name, t, theta, shape=(hidden + 2,))
    for name, t in (("b_f", b_f), ("b_i", b_i)):
        _checks.check_tensor(op, name, t, theta, shape=(1,))
    # Checked in either input mode (the raw-gradient one does not use them), as everywhere.
    _checks.check_preprocess_options(op, p, log_eps, theta.dtype)


def meta_lstm_step(theta: Tensor, grad: Tensor, loss: Tensor, h: Tensor, c: Tensor,
                   f_prev: Tensor, i_prev: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
                   b_hh: Tensor, w_f: Tensor, b_f: Tensor, w_i: Tensor, b_i: Tensor,
                   p: float = 10.0, log_eps: float = 0.0, strict: bool = False
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Both LSTM layers and the parameter update for n coordinates in one pass.

    Returns (theta_new, h_new, c_new, f, i); see :func:`learnedopt.reference.meta_lstm_step`
    for the shapes and the math. The input mode follows ``w_ih.shape[1]``: 4 for Ravi's
    preprocessed [loss, grad], 1 for the raw gradient (the enhanced LSTM; ``loss`` is then unused).

    ``loss`` is 0-d (one loss for all n coordinates) or, for a meta-batch of B tasks in one call,
    of shape (B,): B >= 1 must divide n, and task b owns the contiguous coordinates
    [b*n/B, (b+1)*n/B) of theta, grad, f_prev, i_prev and the same rows of h and c — a (B, n/B)
    parameter matrix flattened row by row. The result is that of B calls on the segments, each with
    its own loss; the weights' gradients are summed over the tasks and the loss gradient has shape
    (B,). Inside the one call the kernel still runs once per task segment; what the batching saves
    is the per-call host work (checks, dispatch, autograd nodes, stacking) of B calls.
    ``p`` and ``log_eps`` are those of :func:`learnedopt.ops.preprocess`, with its valid range
    (checked in both modes); out-of-range options, wrong shapes, dtypes or devices raise here, in
    the fake kernel and at ``torch.ops.learnedopt.meta_lstm_step`` alike.
    """
    args = (theta, grad, loss, h, c, f_prev, i_prev, w_ih, w_hh, b_ih, b_hh, w_f, b_f, w_i, b_i)
    _check(*args, p, log_eps)
    if _backend.use_fused(theta.device, "meta_lstm_step"):
        if _functorch.active():
            return _functorch.MetaLSTMStep.apply(*args, float(p), float(log_eps), bool(strict))
        return tuple(torch.ops.learnedopt.meta_lstm_step(*args, float(p), float(log_eps), bool(strict)))
    return reference.meta_lstm_step(*args, p, log_eps, strict)


STATE_NAMES = ("h", "c", "f_prev", "i_prev")  # what meta_lstm_step_inplace writes over


def _check_inplace_state(args: tuple) -> None:
    op = "meta_lstm_step_inplace"
    named = dict(zip(INPUT_NAMES, args))
    for name in STATE_NAMES:
        t = named[name]
        if t.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(f"learnedopt.ops.{op}: {name} requires grad; the in-place step has "
                               f"no backward (use meta_lstm_step, which returns new tensors)")
        if not t.is_contiguous():
            raise ValueError(f"learnedopt.ops.{op}: {name} is updated in place and must be "
                             f"contiguous (got strides {t.stride()})")
        for other, u in named.items():
            if other != name and _shares_memory(t, u):
                raise ValueError(f"learnedopt.ops.{op}: {name} is updated in place but shares "
                                 f"memory with {other}")


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    if a.device.type == "meta" or a.numel() == 0 or b.numel() == 0:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    # The same storage: overlapping byte ranges (contiguous a; b's span from its strides).
    a0 = a.data_ptr()
    a1 = a0 + a.numel() * a.element_size()
    b0 = b.data_ptr()
    b1 = b0 + (1 + sum((n - 1) * st for n, st in zip(b.shape, b.stride()))) * b.element_size()
    return a0 < b1 and b0 < a1


def meta_lstm_step_inplace(theta: Tensor, grad: Tensor, loss: Tensor, h: Tensor, c: Tensor,
                           f_prev: Tensor, i_prev: Tensor, w_ih: Tensor, w_hh: Tensor,
                           b_ih: Tensor, b_hh: Tensor, w_f: Tensor, b_f: Tensor, w_i: Tensor,
                           b_i: Tensor, p: float = 10.0, log_eps: float = 0.0,
                           strict: bool = False) -> Tensor:
    """:func:`meta_lstm_step` with the recurrent state updated in place: ``h``, ``c``,
    ``f_prev`` and ``i_prev`` are overwritten by h_new, c_new, f and i; returns theta_new.

    For optimizer steps (``LSTMOptimizer``), which need no gradient through the step and keep
    their state: on the CPU the fused kernel writes the state where it is, so a step allocates
    only theta_new, where the functional op's fresh (n, H) outputs cost page faults on every call
    at large n (above glibc's mmap threshold each one is new, zeroed memory). The values are
    exactly those of :func:`meta_lstm_step`. The four state tensors must be contiguous and share
    no memory with any input; none may require grad under autograd (there is no backward).
    """
    args = (theta, grad, loss, h, c, f_prev, i_prev, w_ih, w_hh, b_ih, b_hh, w_f, b_f, w_i, b_i)
    _check(*args, p, log_eps, op="meta_lstm_step_inplace")
    _check_inplace_state(args)
    if _backend.use_fused(theta.device, "meta_lstm_step"):
        return torch.ops.learnedopt.meta_lstm_step_inplace(*args, float(p), float(log_eps),
                                                           bool(strict))
    theta_new, h_new, c_new, f, i = reference.meta_lstm_step(*args, p, log_eps, strict)
    with torch.no_grad():
        for state, new in zip((h, c, f_prev, i_prev), (h_new, c_new, f, i)):
            state.copy_(new)
    return theta_new


# Fake kernels: shapes for torch.compile and the meta device. Autograd is registered in C++
# (csrc/autograd/), with the CPU and CUDA kernels.
if _extension._C is not None:
    # They check what the wrapper checks: torch.ops.learnedopt is public, and a fake kernel also
    # runs for a real call that mixes meta and real tensors.
    @torch.library.register_fake("learnedopt::meta_lstm_step")
    def _(theta, grad, loss, h, c, *rest):
        _check(theta, grad, loss, h, c, *rest[:-1])  # all but `strict`
        # Contiguous outputs whatever the inputs' strides, as the kernels return them.
        return (theta.new_empty(theta.shape), h.new_empty(h.shape), c.new_empty(c.shape),
                theta.new_empty(theta.shape), theta.new_empty(theta.shape))

    @torch.library.register_fake("learnedopt::meta_lstm_step_inplace")
    def _(theta, grad, loss, h, c, *rest):
        _check(theta, grad, loss, h, c, *rest[:-1], op="meta_lstm_step_inplace")
        return theta.new_empty(theta.shape)

    @torch.library.register_fake("learnedopt::meta_lstm_step_backward")
    def _(g_theta, g_h, g_c, g_f, g_i, *inputs_and_args):
        op = "meta_lstm_step_backward"
        inputs = inputs_and_args[:len(INPUT_NAMES)]
        p, log_eps, _strict = inputs_and_args[len(INPUT_NAMES):]
        _check(*inputs, p, log_eps, op=op)
        theta, h = inputs[0], inputs[3]
        for name, g, like in (("grad_theta_new", g_theta, theta), ("grad_h_new", g_h, h),
                              ("grad_c_new", g_c, h), ("grad_f", g_f, theta), ("grad_i", g_i, theta)):
            _checks.check_tensor(op, name, g, theta, shape=tuple(like.shape))
        return tuple(t.new_empty(t.shape) for t in inputs)
