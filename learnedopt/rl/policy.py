"""The Gaussian policy: a module, and the learner that runs it over the algorithms' flat θ.

:class:`GaussianMLPPolicy` is MAML's 2D-navigation policy (Finn et al. 2017 §5.3): an MLP
2 → 100 → 100 → 2 with ReLU gives the action mean, and a state-independent learned log standard
deviation (one per action dimension) the spread. Any ``nn.Module`` whose ``forward(observations)``
returns ``(mean, log_std)`` of the same shape can stand in for it.

:class:`PolicyLearner` is a :class:`learnedopt.learners.Learner` over such a module: its trainable
parameters are packed into the flat θ by the generic module learner
(:class:`learnedopt.module_learner.ModuleLearner`, through ``torch.func.functional_call``, a
meta-batch of θ (B, n) vmapped), so every algorithm's inner-update rule adapts a policy exactly as
it adapts a supervised learner. Its primary metric is the return (higher is better).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from learnedopt.learners import Learner

DEFAULT_FACTORY = "learnedopt.rl.policy:GaussianMLPPolicy"
LOG_2PI = math.log(2.0 * math.pi)


class GaussianMLPPolicy(nn.Module):
    """mean = MLP(observation), log_std a learned vector (init ``init_log_std``: std 1, as the
    public MAML-RL code). Weights Xavier-uniform, biases 0 (pytorch-maml-rl's initialisation)."""

    def __init__(self, observation_size: int = 2, action_size: int = 2,
                 hidden_sizes: tuple[int, ...] | list[int] = (100, 100), init_log_std: float = 0.0):
        super().__init__()
        sizes = [int(observation_size), *(int(h) for h in hidden_sizes), int(action_size)]
        if min(sizes) < 1:
            raise ValueError(f"GaussianMLPPolicy: every layer size must be >= 1, got {sizes}")
        layers: list[nn.Module] = []
        for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            linear = nn.Linear(fan_in, fan_out)
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
            layers.append(linear)
            if k < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.mean = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((int(action_size),), float(init_log_std)))

    def forward(self, observations: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.mean(observations)
        return mean, self.log_std.expand_as(mean)


def gaussian_log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """log N(actions; mean, exp(log_std)²) summed over the last (action) dimension."""
    z = (actions - mean) * torch.exp(-log_std)
    return -(0.5 * z.pow(2) + log_std + 0.5 * LOG_2PI).sum(dim=-1)


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """KL(p ‖ q) of two diagonal Gaussians, summed over the last dimension."""
    var_ratio = torch.exp(2.0 * (log_std_p - log_std_q))
    mean_term = (mean_p - mean_q).pow(2) * torch.exp(-2.0 * log_std_q)
    return 0.5 * (var_ratio + mean_term - 1.0 - 2.0 * (log_std_p - log_std_q)).sum(dim=-1)


class PolicyLearner(Learner):
    """A policy module as a learner: ``learner(theta, observations)`` → (mean, log_std), for one
    θ (n,) with observations (M, obs) or a meta-batch θ (B, n) with (B, M, obs).

    Args:
        model: the policy module (default: ``GaussianMLPPolicy(**factory_kwargs)``).
        factory, factory_kwargs: how to rebuild it, recorded in :meth:`config` so that a
            checkpoint rebuilds the learner by itself (the default policy's path by default;
            None for a module that cannot be imported).
        batching: how a meta-batch runs, as ModuleLearner's ("auto": vmap).
    """

    kind = "policy"
    head_names = ()

    def __init__(self, model: nn.Module | None = None, *, factory: str | None = DEFAULT_FACTORY,
                 factory_kwargs: Mapping[str, Any] | None = None, batching: str = "auto"):
        from learnedopt.module_learner import ModuleLearner
        factory_kwargs = dict(factory_kwargs or {})
        if model is None:
            if factory != DEFAULT_FACTORY:
                raise ValueError("PolicyLearner: give the model, or leave factory at its default")
            model = GaussianMLPPolicy(**factory_kwargs)
        elif factory == DEFAULT_FACTORY and not isinstance(model, GaussianMLPPolicy):
            factory = None  # a user module: its own path is not known
        # The module learner packs θ and runs the forward; its supervised loss is never used (the
        # policy's objective is the policy-gradient surrogate of learnedopt.rl.estimator).
        self.module = ModuleLearner(model, loss="mse", kind="policy", batching=batching,
                                    factory=factory, factory_kwargs=factory_kwargs)
        self.layout = self.module.layout
        self.fixed = self.module.fixed
        self.dtype = self.module.dtype

    @property
    def primary_metric(self) -> tuple[str, bool]:
        return ("return", True)

    @property
    def task_family(self) -> str:
        return "navigation2d"

    def config(self) -> dict:
        spec = self.module.config()
        return {"name": "policy", "factory": spec["factory"], "kwargs": spec["kwargs"],
                "params": spec["params"], "batching": spec["batching"]}

    def train(self, mode: bool = True) -> "PolicyLearner":
        self.training = bool(mode)
        self.module.train(mode)
        return self

    def init_parameters(self, generator=None, device=None, dtype=None) -> Tensor:
        return self.module.init_parameters(generator, device, dtype)

    def __call__(self, theta: Tensor, observations: Tensor, bn=None, use_running: bool = False
                 ) -> tuple[Tensor, Tensor]:
        out = self.module(theta, observations)
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and out[0].shape == out[1].shape):
            raise ValueError(f"PolicyLearner: the policy module must return (mean, log_std) of one "
                             f"shape, got {type(out).__name__}")
        return out[0], out[1]

    def check_batch(self, algorithm: str, batch) -> None:
        goals = getattr(batch, "goals", None)
        if not isinstance(goals, Tensor) or goals.dim() != 2 or goals.shape[1] != 2:
            raise ValueError(f"{algorithm}: a policy learns from goal batches (goals (B, 2)), got "
                             f"{type(batch).__name__}")


def default_policy_spec(**kwargs: Any) -> dict:
    """The spec of the default Gaussian MLP policy (``kwargs``: its constructor's)."""
    return {"name": "policy", "factory": DEFAULT_FACTORY, "kwargs": dict(kwargs), "batching": "auto"}


def build_policy_learner(spec: Mapping[str, Any], model: nn.Module | None = None) -> PolicyLearner:
    """The learner a :meth:`PolicyLearner.config` describes; ``model`` stands in for a module
    whose factory was not recorded. Refused when the parameters differ from the recorded ones."""
    from learnedopt import _imports
    factory = spec.get("factory")
    if model is None and factory is None:
        raise ValueError("this policy was made from a Python object (no import path was recorded): "
                         "pass the model again (model=...)")
    if model is None and factory != DEFAULT_FACTORY:
        model = _imports.build_from_path(factory, spec.get("kwargs"), "policy")
    learner = PolicyLearner(model, factory=factory, factory_kwargs=spec.get("kwargs"),
                            batching=spec.get("batching", "auto"))
    recorded = spec.get("params")
    current = learner.config()["params"]
    if recorded is not None and [[n, list(s)] for n, s in recorded] != current:
        raise ValueError(f"the policy's parameters {current} differ from the recorded ones "
                         f"{recorded}: the checkpoint was made with another policy")
    return learner
