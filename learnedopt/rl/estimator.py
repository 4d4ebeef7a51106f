"""The policy-gradient estimator: returns, advantages and the surrogate losses whose gradients are
the REINFORCE gradient (inner loop) and the importance-weighted one (TRPO's outer loop).

Every function works on (B, N, T) tensors (tasks, trajectories, time) with a step mask, and
gives one loss per task (B,), so a meta-batch differentiates as one sum (the tasks share no
parameter of the adapted θ (B, n)). Discounted sums are one triangular matrix product over time,
not a loop.
"""

from __future__ import annotations

import torch
from torch import Tensor


def discounted_sum(values: Tensor, factor: float) -> Tensor:
    """out[..., t] = Σ_{t' ≥ t} factor^(t'-t) · values[..., t'] over the last dimension."""
    steps = values.shape[-1]
    index = torch.arange(steps, device=values.device)
    power = (index.view(1, -1) - index.view(-1, 1)).to(values.dtype)  # power[t, t'] = t' - t
    weights = torch.where(power >= 0, torch.full_like(power, factor).pow(power.clamp(min=0)),
                          torch.zeros_like(power))
    return values @ weights.T


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """The discounted reward-to-go of every valid step (B, N, T), 0 on masked steps."""
    return discounted_sum(rewards * mask, gamma) * mask


def advantages(rewards: Tensor, mask: Tensor, values: Tensor | None, gamma: float,
               gae_lambda: float = 1.0, normalize: bool = True) -> Tensor:
    """Generalised advantage estimates (Schulman et al. 2016) from baseline ``values`` (B, N, T)
    (None: no baseline, the advantage is the reward-to-go). λ = 1 gives reward-to-go minus the
    baseline. ``normalize``: per task, shift and scale the valid entries to mean 0 and standard
    deviation 1 (what the public MAML-RL code does before every policy-gradient step)."""
    if values is None:
        result = discounted_returns(rewards, mask, gamma)
    else:
        values = values * mask
        next_values = torch.nn.functional.pad(values[..., 1:], (0, 1))
        deltas = (rewards + gamma * next_values - values) * mask
        result = discounted_sum(deltas, gamma * gae_lambda) * mask
    return normalize_per_task(result, mask) if normalize else result


def normalize_per_task(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over each task's valid entries (dims N and T), masked entries 0."""
    count = mask.sum(dim=(1, 2), keepdim=True).clamp(min=1.0)
    mean = (x * mask).sum(dim=(1, 2), keepdim=True) / count
    var = ((x - mean).pow(2) * mask).sum(dim=(1, 2), keepdim=True) / count
    return (x - mean) / (var.sqrt() + eps) * mask


def masked_task_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Each task's mean of x over its valid (trajectory, step) entries: (B, N, T) → (B,)."""
    return (x * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2)).clamp(min=1.0)


def reinforce_loss(log_probs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """−mean(log π(a|s) · A) per task (B,): its gradient is the REINFORCE estimate of −∇J (per
    step); ``advantages`` are constants."""
    return -masked_task_mean(log_probs * advantages.detach(), mask)


def surrogate_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor
                   ) -> Tensor:
    """TRPO's −mean(π/π_old · A) per task (B,); at π = π_old its gradient equals
    :func:`reinforce_loss`'s."""
    ratio = torch.exp(log_probs - old_log_probs.detach())
    return -masked_task_mean(ratio * advantages.detach(), mask)
