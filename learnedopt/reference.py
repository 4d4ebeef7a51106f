"""Pure-PyTorch reference of every fused op (SPEC §1-§3).

These functions are the ground truth: the fused kernels are tested against them, and they are the
"pure PyTorch" side of every benchmark. They have the same names and signatures as the wrappers in
:mod:`learnedopt.ops` and are differentiable to any order through ordinary autograd.

Conventions shared with the kernels (and stated in the README):

* ``theta``, ``grad`` and every per-coordinate vector are 1-D of length n; LSTM states are (n, H).
* NaN policy: a NaN input propagates. ``preprocess`` maps NaN to (NaN, NaN) and its gradient at a NaN
  input is NaN; the step ops carry NaN through to their outputs. Nothing is silently replaced.
* ±Inf: ``preprocess`` maps ±Inf to (+Inf, ±1) with gradient 0 (the limit of 1/(p·x)).
* Options: ``p`` and ``log_eps`` outside their valid range for the dtype
  (:func:`learnedopt.ops._checks.check_preprocess_options`) raise the same ValueError as the ops.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from learnedopt.ops._checks import check_preprocess_options, check_task_loss

__all__ = ["preprocess", "meta_lstm_step", "turtle_step"]


def preprocess(x: Tensor, p: float = 10.0, log_eps: float = 0.0, strict: bool = False) -> Tensor:
    """Log-magnitude / sign preprocessing (SPEC §1); returns ``x.shape + (2,)``.

    x1 = log(|x| + log_eps) / p  if |x| >= e^-p  else  -1
    x2 = sign(x)                 if |x| >= e^-p  else  e^p · x
    ``strict=True`` uses ``>`` for the threshold (the original code); ``log_eps=1e-8`` is the
    Ravi/Larochelle port. The defaults are the paper's. p and log_eps must lie in their valid
    range for x's dtype (ValueError otherwise, as the fused op).
    """
    check_preprocess_options("preprocess", p, log_eps, x.dtype)
    thr = torch.tensor(math.exp(-p), dtype=x.dtype, device=x.device)
    ax = x.abs()
    big = ax > thr if strict else ax >= thr
    # The log is taken of 1 where the small branch is selected, so that neither its value nor its
    # derivative can be non-finite there (torch.where multiplies the unused branch's gradient by 0,
    # and 0 * inf would be NaN).
    safe = torch.where(big, ax, torch.ones_like(ax))
    x1 = torch.where(big, torch.log(safe + log_eps) / p, torch.full_like(x, -1.0))
    x2 = torch.where(big, torch.sign(x), x * math.exp(p))
    # NaN policy: NaN in both components and a NaN gradient. nan_part is x at NaN entries and 0
    # elsewhere, so nan_part² has value NaN and derivative 2·NaN there, and contributes exactly 0
    # (value and derivative) at every other entry, ±Inf included.
    is_nan = torch.isnan(x)
    nan_part = torch.where(is_nan, x, torch.zeros_like(x))
    x1 = torch.where(is_nan, nan_part * nan_part, x1)
    return torch.stack([x1, x2], dim=-1)


def _lstm_input(grad: Tensor, loss: Tensor, input_size: int, p: float, log_eps: float,
                strict: bool) -> Tensor:
    """Layer-1 input: Ravi's [pre(L)1, pre(L)2, pre(g)1, pre(g)2] (4) or the raw gradient (1)."""
    if input_size == 1:
        return grad.unsqueeze(1)
    n = grad.shape[0]
    losses = loss.reshape(-1)  # (B,): one per task segment of n/B coordinates
    tasks = losses.shape[0]
    pre_loss = preprocess(losses, p, log_eps, strict)
    pre_loss = pre_loss.expand(n, 2) if tasks == 1 else (
        pre_loss.unsqueeze(1).expand(tasks, n // tasks, 2).reshape(n, 2))
    pre_grad = preprocess(grad, p, log_eps, strict)
    return torch.cat([pre_loss, pre_grad], dim=1)


def meta_lstm_step(theta: Tensor, grad: Tensor, loss: Tensor, h: Tensor, c: Tensor,
                   f_prev: Tensor, i_prev: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
                   b_hh: Tensor, w_f: Tensor, b_f: Tensor, w_i: Tensor, b_i: Tensor,
                   p: float = 10.0, log_eps: float = 0.0, strict: bool = False
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One step of the coordinate-wise meta-learner LSTM (SPEC §2).

    Shapes: theta, grad, f_prev, i_prev (n,); loss 0-d, or (B,) with B dividing n for B tasks in
    one call (task b owns coordinates [b*n/B, (b+1)*n/B), its loss enters only their layer-1
    input); h, c (n, H); w_ih (4H, D) with D = 4
    (preprocessed [loss, grad]) or D = 1 (raw gradient); w_hh (4H, H); b_ih, b_hh (4H,);
    w_f, w_i (H + 2,); b_f, b_i (1,).
    Returns (theta_new, h_new, c_new, f, i), with f and i the gate values before the sigmoid.
    p and log_eps are preprocess's, checked in either input mode as the fused op checks them.
    """
    check_preprocess_options("meta_lstm_step", p, log_eps, theta.dtype)
    check_task_loss("meta_lstm_step", loss, theta.shape[0])
    hidden = h.shape[1]
    x = _lstm_input(grad, loss, w_ih.shape[1], p, log_eps, strict)
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    gate_i, gate_f, gate_g, gate_o = gates.chunk(4, dim=1)
    c_new = torch.sigmoid(gate_f) * c + torch.sigmoid(gate_i) * torch.tanh(gate_g)
    h_new = torch.sigmoid(gate_o) * torch.tanh(c_new)
    # Layer 2: [h_t, theta_{t-1}, f_{t-1}] . W_F + b_F, written without a concatenation.
    f = h_new @ w_f[:hidden] + theta * w_f[hidden] + f_prev * w_f[hidden + 1] + b_f
    i = h_new @ w_i[:hidden] + theta * w_i[hidden] + i_prev * w_i[hidden + 1] + b_i
    theta_new = torch.sigmoid(f) * theta - torch.sigmoid(i) * grad
    return theta_new, h_new, c_new, f, i


def turtle_step(theta: Tensor, grad: Tensor, m: Tensor, t: int, alpha: Tensor,
                weights: Sequence[Tensor], biases: Sequence[Tensor], beta: float = 0.9,
                grad_clamp: float = math.inf) -> tuple[Tensor, Tensor]:
    """One TURTLE step (SPEC §3).

    g   = clamp(grad, -grad_clamp, grad_clamp)           (no clamp when grad_clamp is inf)
    m'  = g                          if t == 0  (m_0 = g_0; the m passed in is then ignored)
        = beta * m + (1 - beta) * g  otherwise
    u   = MLP([g, m', t])   or MLP([g, m']) when weights[0] has 2 input columns
    theta' = theta + alpha * u
    The MLP is Linear(weights[k], biases[k]) with ReLU between layers and none after the last;
    weights[k] has shape (out, in) as in torch.nn.Linear and the last layer has one output.
    Returns (theta_new, m_new).
    """
    g = grad.clamp(-grad_clamp, grad_clamp) if math.isfinite(grad_clamp) else grad
    # At t == 0 a copy, never an alias of the caller's gradient (the fused op returns new tensors
    # too; a caller that keeps m as state must not see it change when the gradient is zeroed).
    m_new = g.clone() if t == 0 else beta * m + (1.0 - beta) * g
    columns = [g, m_new]
    if weights[0].shape[1] == 3:
        columns.append(torch.full_like(g, float(t)))
    act = torch.stack(columns, dim=1)
    last = len(weights) - 1
    for k, (w, b) in enumerate(zip(weights, biases)):
        act = F.linear(act, w, b)
        if k < last:
            act = torch.relu(act)
    theta_new = theta + alpha * act.squeeze(1)
    return theta_new, m_new
