"""``turtle_step``: one fused TURTLE update (SPEC §3), the per-coordinate MLP evaluated in registers."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from learnedopt import _extension, reference
from learnedopt.ops import _backend, _checks, _functorch

MAX_WIDTH = 64  # widest hidden layer the kernels hold per coordinate
MAX_LAYERS = 16


def _check(theta, grad, m, t, alpha, weights, biases, beta, grad_clamp, op="turtle_step"):
    _checks.check_vector(op, "theta", theta)
    n = theta.shape[0]
    for name, v in (("grad", grad), ("m", m), ("alpha", alpha)):
        _checks.check_tensor(op, name, v, theta, shape=(n,))
    # (A SymInt where torch.compile traces the fake kernel with a dynamic t.)
    if not isinstance(t, (int, torch.SymInt)) or isinstance(t, bool) or t < 0:
        raise ValueError(f"learnedopt.ops.{op}: t must be a step index (int >= 0), got {t!r}")
    if len(weights) != len(biases) or not 1 <= len(weights) <= MAX_LAYERS:
        raise ValueError(f"learnedopt.ops.{op}: expected 1..{MAX_LAYERS} layers with one bias each, "
                         f"got {len(weights)} weights and {len(biases)} biases")
    fan_in = None
    for k, (w, b) in enumerate(zip(weights, biases)):
        _checks.check_tensor(op, f"weights[{k}]", w, theta)
        if w.dim() != 2:
            raise ValueError(f"learnedopt.ops.{op}: weights[{k}] must be 2-D (out, in), got {tuple(w.shape)}")
        if k == 0 and w.shape[1] not in (2, 3):
            raise ValueError(f"learnedopt.ops.{op}: weights[0] must have 3 input columns for "
                             f"[g, m, t] or 2 for [g, m], got {w.shape[1]}")
        if fan_in is not None and w.shape[1] != fan_in:
            raise ValueError(f"learnedopt.ops.{op}: weights[{k}] has {w.shape[1]} inputs but the "
                             f"previous layer has {fan_in} outputs")
        if not 1 <= w.shape[0] <= MAX_WIDTH:
            raise ValueError(f"learnedopt.ops.{op}: weights[{k}] has {w.shape[0]} outputs; layer "
                             f"widths must lie in 1..{MAX_WIDTH}")
        _checks.check_tensor(op, f"biases[{k}]", b, theta, shape=(w.shape[0],))
        fan_in = w.shape[0]
    if fan_in != 1:
        raise ValueError(f"learnedopt.ops.{op}: the last layer must have 1 output, got {fan_in}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"learnedopt.ops.{op}: beta must lie in [0, 1], got {beta}")
    if not grad_clamp > 0:
        raise ValueError(f"learnedopt.ops.{op}: grad_clamp must be > 0 (math.inf for no clamp), "
                         f"got {grad_clamp}")


def turtle_step(theta: Tensor, grad: Tensor, m: Tensor, t: int, alpha: Tensor,
                weights: Sequence[Tensor], biases: Sequence[Tensor], beta: float = 0.9,
                grad_clamp: float = math.inf) -> tuple[Tensor, Tensor]:
    """Returns (theta_new, m_new); see :func:`learnedopt.reference.turtle_step` for the math."""
    weights, biases = list(weights), list(biases)
    _check(theta, grad, m, t, alpha, weights, biases, beta, grad_clamp)
    if _backend.use_fused(theta.device, "turtle_step"):
        if _functorch.active():
            return _functorch.TurtleStep.apply(theta, grad, m, t, alpha, len(weights), *weights,
                                               *biases, float(beta), float(grad_clamp))
        return tuple(torch.ops.learnedopt.turtle_step(theta, grad, m, t, alpha, weights, biases,
                                                      float(beta), float(grad_clamp)))
    return reference.turtle_step(theta, grad, m, t, alpha, weights, biases, beta, grad_clamp)


# Fake kernels: shapes for torch.compile and the meta device. Autograd is registered in C++
# (csrc/autograd/), with the CPU and CUDA kernels.
if _extension._C is not None:
    # They check what the wrapper checks: torch.ops.learnedopt is public, and a fake kernel also
    # runs for a real call that mixes meta and real tensors.
    @torch.library.register_fake("learnedopt::turtle_step")
    def _(theta, grad, m, t, alpha, weights, biases, beta, grad_clamp):
        _check(theta, grad, m, t, alpha, weights, biases, beta, grad_clamp)
        # Contiguous outputs whatever the inputs' strides, as the kernels return them.
        return theta.new_empty(theta.shape), theta.new_empty(theta.shape)

    @torch.library.register_fake("learnedopt::turtle_step_backward")
    def _(g_theta, g_m, theta, grad, m, t, alpha, weights, biases, beta, grad_clamp):
        op = "turtle_step_backward"
        _check(theta, grad, m, t, alpha, weights, biases, beta, grad_clamp, op=op)
        for name, g in (("grad_theta_new", g_theta), ("grad_m_new", g_m)):
            _checks.check_tensor(op, name, g, theta, shape=tuple(theta.shape))
        return (theta.new_empty(theta.shape), grad.new_empty(grad.shape), m.new_empty(m.shape),
                alpha.new_empty(alpha.shape), [w.new_empty(w.shape) for w in weights],
                [b.new_empty(b.shape) for b in biases])
