"""The linear feature baseline (Duan et al. 2016, used by MAML's RL code): the discounted return
of each step regressed on hand-made features of its state and time, fitted per task by ridge
regression on that task's own trajectories, then used as the value estimate that is subtracted
from the returns (it lowers the policy gradient's variance without biasing it).

Features of a valid step (0 on masked steps): [s, s², τ, τ², τ³, 1] with τ = t / 100 (the public
code's time scale). All B tasks are fitted at once with one batched solve, in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

TIME_SCALE = 100.0


def features(observations: Tensor, mask: Tensor) -> Tensor:
    """(B, N, T, 2·obs + 4) features of every step."""
    steps = observations.shape[2]
    tau = (torch.arange(steps, device=observations.device, dtype=observations.dtype)
           / TIME_SCALE).view(1, 1, steps, 1).expand(*observations.shape[:3], 1)
    ones = torch.ones_like(tau)
    return torch.cat([observations, observations.pow(2), tau, tau.pow(2), tau.pow(3), ones],
                     dim=-1) * mask.unsqueeze(-1)


def fit_predict(observations: Tensor, returns: Tensor, mask: Tensor, reg: float = 1e-5,
                attempts: int = 5) -> Tensor:
    """Fit each task's baseline to its ``returns`` (B, N, T) and return the fitted values
    (B, N, T) (0 on masked steps). The ridge term starts at ``reg`` and grows tenfold while the
    normal equations cannot be solved (a task whose agents never moved has collinear features)."""
    if reg <= 0:
        raise ValueError(f"baseline: reg must be > 0, got {reg}")
    x = features(observations, mask).to(torch.float64)
    b, n, t, f = x.shape
    x = x.reshape(b, n * t, f)
    y = (returns * mask).to(torch.float64).reshape(b, n * t, 1)
    xtx, xty = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y
    eye = torch.eye(f, dtype=torch.float64, device=x.device)
    for _ in range(attempts):
        weights, info = torch.linalg.solve_ex(xtx + reg * eye, xty)
        if bool((info == 0).all()) and bool(torch.isfinite(weights).all()):
            break
        reg *= 10.0
    else:
        raise FloatingPointError(f"baseline: the normal equations stayed singular up to ridge "
                                 f"{reg / 10:g}")
    return (x @ weights).reshape(b, n, t).to(returns.dtype) * mask
