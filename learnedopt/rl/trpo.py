"""Trust-region policy optimisation's update (Schulman et al. 2015), over any list of parameters.

The step direction solves F x = g by conjugate gradient, with g the gradient of the surrogate loss
and F the Hessian of the mean KL divergence between the old and the new policy (the Fisher
matrix), reached only through Fisher-vector products (a double backward, never F itself); the
step is scaled so that the quadratic model of the KL equals ``max_kl``, then a backtracking line
search keeps the first fraction of it that lowers the loss with the KL within the bound, or no
step at all.

In meta-RL the parameters are the meta-parameters (θ₀, Meta-SGD's α, a learned rule's φ) and the
policy is the *adapted* one, so the KL and the loss reach them through the inner update (MAML's
TRPO; each line-search trial re-adapts from the trial parameters).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor


def flat_grad(output: Tensor, parameters: Sequence[Tensor], **kwargs) -> Tensor:
    """∂output/∂parameters as one flat vector (zeros for parameters it does not depend on)."""
    grads = torch.autograd.grad(output, parameters, allow_unused=True, **kwargs)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for g, p in zip(grads, parameters)])


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, iterations: int = 10,
                       tolerance: float = 1e-10) -> Tensor:
    """Approximately solve A x = b for a symmetric positive-definite A given as ``matvec``."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iterations):
        if rr <= tolerance:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def trpo_step(parameters: Sequence[Tensor], objective: Callable[[bool], tuple[Tensor, Tensor]],
              max_kl: float = 0.01, damping: float = 1e-5, cg_iterations: int = 10,
              line_search_steps: int = 15, backtrack_ratio: float = 0.8) -> dict[str, float]:
    """One TRPO update of ``parameters`` in place.

    ``objective(differentiable)`` returns (loss, kl) at the parameters' current values: the
    surrogate loss and the mean KL(old ‖ current) (0 at the old parameters), with a graph to the
    parameters when ``differentiable``. Guarantee: the parameters end either where the line search
    found loss < the old loss and kl ≤ ``max_kl``, or unchanged. Returns what happened: the loss
    before and after, the KL, the accepted fraction of the full step (0: rejected) and the number
    of line-search trials.
    """
    if max_kl <= 0 or damping < 0 or backtrack_ratio <= 0 or backtrack_ratio >= 1:
        raise ValueError(f"trpo_step: need max_kl > 0, damping >= 0, 0 < backtrack_ratio < 1; got "
                         f"{max_kl}, {damping}, {backtrack_ratio}")
    parameters = list(parameters)
    loss, kl = objective(True)
    gradient = flat_grad(loss, parameters, retain_graph=True)
    kl_gradient = flat_grad(kl, parameters, create_graph=True)

    def fisher_vector(v: Tensor) -> Tensor:
        return flat_grad(kl_gradient @ v, parameters, retain_graph=True) + damping * v

    direction = conjugate_gradient(fisher_vector, gradient, cg_iterations)
    curvature = direction @ fisher_vector(direction)
    loss_before = float(loss.detach())
    info = {"loss_before": loss_before, "loss_after": loss_before, "kl": 0.0, "step_fraction": 0.0,
            "line_search_trials": 0}
    if not (torch.isfinite(curvature) and curvature > 0):
        return info  # a zero or degenerate gradient: no step
    full_step = direction * torch.sqrt(2.0 * max_kl / curvature)
    old = torch.cat([p.detach().reshape(-1) for p in parameters])
    fraction = 1.0
    for trial in range(1, line_search_steps + 1):
        _assign(parameters, old - fraction * full_step)
        with torch.no_grad():
            new_loss, new_kl = objective(False)
        new_loss, new_kl = float(new_loss), float(new_kl)
        info["line_search_trials"] = trial
        if new_loss < loss_before and new_kl <= max_kl:
            info.update(loss_after=new_loss, kl=new_kl, step_fraction=fraction)
            return info
        fraction *= backtrack_ratio
    _assign(parameters, old)
    return info


@torch.no_grad()
def _assign(parameters: Sequence[Tensor], flat: Tensor) -> None:
    offset = 0
    for p in parameters:
        p.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()
