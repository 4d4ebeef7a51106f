"""``TurtleOptimizer``: TURTLE's learned update rule (SPEC §3) as a drop-in torch.optim optimizer."""

from __future__ import annotations

import numbers
from typing import Any, Iterable

import torch
from torch import Tensor

from learnedopt import ops
from learnedopt.optim._flat import FlatGroup, FlatOptimizer, check_alpha, check_state_dtype
from learnedopt.optim._rule_cache import RuleTensors
from learnedopt.optim.pretrained import alpha_init, build_rule
from learnedopt.rules import TurtleRule


class TurtleOptimizer(FlatOptimizer):
    """TURTLE (Huisman, Plaat & van Rijn 2022) applied to any model.

    Per step and param group, one call of :func:`learnedopt.ops.turtle_step` over the flat buffers:

        m_t = beta * m_{t-1} + (1 - beta) * g_t    (m_0 = g_0)
        theta <- theta + lr * alpha * g_phi([g_t, m_t, t])

    ``lr`` (default 1: the meta-learned update) scales ``alpha * u``; schedulers act on it.
    ``alpha`` is a per-coordinate step size: meta-training learns one per coordinate of the
    meta-training learner. For that model, ``from_pretrained(..., model.named_parameters())``
    starts each coordinate at its learned value (found by parameter name); a new model has no
    such values, so every coordinate of a group starts at the group's scalar ``alpha``
    (``from_pretrained`` uses the median of the learned ones). Either way it stays there (the
    optimizer does not learn it); ``opt.state[p]["alpha"]`` reads or sets it per coordinate.

    ``momentum`` is the beta of the moving average above (None, the default: the rule's own beta,
    the value g_phi was meta-trained with). It is a per-group option under torch.optim's name so
    that schedulers which cycle momentum (``OneCycleLR``, ``CyclicLR`` with ``cycle_momentum=True``,
    their default) work; they move beta away from the meta-trained value (OneCycleLR: between 0.85
    and 0.95), so pass ``cycle_momentum=False`` to keep the rule as it was meta-trained.

    ``t`` is the number of steps the group has taken. g_phi saw only t < T during meta-training
    (T inner steps), so ``max_t`` caps the t it is fed (``from_pretrained`` sets T - 1 when the
    file records T); the moving average still starts at g_0 on the first step only. A parameter
    that was skipped (no gradient) keeps its m while the group's t advances, and one whose first
    gradient comes after the group's first step starts its average from m = 0, not from g.

    Per-coordinate state, in ``opt.state[p]`` and :meth:`state_dict` per parameter: ``m`` and
    ``alpha`` (shape ``p.shape``), plus ``step`` (the group's t). ``state_dtype=torch.bfloat16``
    stores ``m`` in bfloat16: each step widens it to the parameters' dtype for the kernel and
    rounds the new m back (round to nearest even); ``alpha`` stays in the parameters' dtype.

    Args:
        params: parameters or param groups (per-group options: ``lr``, ``alpha``, ``grad_clamp``,
            ``max_t``, ``momentum``), or ``model.named_parameters()``.
        rule: the :class:`~learnedopt.rules.TurtleRule` (default: freshly initialised, untrained).
        lr: scale of the update.
        alpha: initial per-coordinate step size of the group's coordinates.
        grad_clamp: clamp the gradient to +-grad_clamp before the rule sees it (default: the
            rule's own setting; the authors clamp at 10).
        max_t: largest step index fed to g_phi (None: no cap).
        momentum: beta of the moving average m in [0, 1] (None: the rule's beta).
        state_dtype: None (``m`` in the parameters' dtype) or ``torch.bfloat16``.
    """

    KIND = "turtle"
    REDUCIBLE_STATE = ("m",)  # what state_dtype=torch.bfloat16 stores reduced

    def __init__(self, params: Iterable, rule: TurtleRule | None = None, lr: float = 1.0,
                 alpha: float = 0.5, grad_clamp: float | None = None, max_t: int | None = None,
                 momentum: float | None = None, state_dtype: torch.dtype | None = None):
        self.state_dtype = check_state_dtype(state_dtype, "TurtleOptimizer", self.REDUCIBLE_STATE)
        rule = TurtleRule() if rule is None else rule
        if not isinstance(rule, TurtleRule):
            raise TypeError(f"TurtleOptimizer: rule must be a learnedopt.rules.TurtleRule, got "
                            f"{type(rule).__name__}")
        self.rule = rule
        self._weights = RuleTensors(lambda: [*rule.weights, *rule.biases])
        super().__init__(params, {"lr": lr, "alpha": alpha, "grad_clamp": grad_clamp,
                                  "max_t": max_t, "momentum": momentum})

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        super()._check_group(group, where)
        group["alpha"] = check_alpha(group["alpha"], where)
        clamp = group["grad_clamp"]
        if clamp is not None and (isinstance(clamp, bool) or not isinstance(clamp, numbers.Real)
                                  or not clamp > 0):
            raise ValueError(f"{where}: grad_clamp must be > 0 (math.inf: no clamp) or None, "
                             f"got {clamp!r}")
        max_t = group["max_t"]
        if max_t is not None and (isinstance(max_t, bool) or not isinstance(max_t, int) or max_t < 1):
            raise ValueError(f"{where}: max_t must be an int >= 1 or None, got {max_t!r}")
        self._beta(group, where)

    def _beta(self, group: dict[str, Any], where: str) -> float:
        """The group's beta: its ``momentum`` (which a scheduler may have set), else the rule's."""
        momentum = group["momentum"]
        if momentum is None:
            return self.rule.beta
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not (
                0.0 <= momentum <= 1.0):
            raise ValueError(f"{where}: momentum (TURTLE's beta) must lie in [0, 1] or be None "
                             f"(the rule's beta), got {momentum!r}")
        return float(momentum)

    def _init_state(self, flat: FlatGroup, group: dict[str, Any]) -> None:
        flat.state = {"m": flat.new_state(dtype=self.state_dtype), "alpha": flat.new_state(fill=float(group["alpha"]))}

    def _step_group(self, flat: FlatGroup, group: dict[str, Any], loss: Tensor | None) -> None:
        rule = self.rule
        max_t = group["max_t"]
        t = flat.step if max_t is None else min(flat.step, max_t)
        clamp = rule.grad_clamp if group["grad_clamp"] is None else float(group["grad_clamp"])
        tensors = self._weights.get(flat.device, flat.dtype)
        layers = len(rule.weights)
        s = flat.state
        beta = self._beta(group, flat.where)
        stored = s["m"]
        m_prev = stored.to(flat.dtype)  # widened when stored reduced (else the buffer itself)
        theta, m = ops.turtle_step(flat.param, flat.grad, m_prev, t, s["alpha"],
                                   tensors[:layers], tensors[layers:], beta, clamp)
        m = flat.keep_skipped(m, m_prev)
        flat.state = {"m": m.to(stored.dtype), "alpha": s["alpha"]}
        flat.apply_update(theta, group["lr"])

    @classmethod
    def _kwargs_from_rule(cls, rule_file: dict[str, Any]) -> dict[str, Any]:
        kwargs = {"rule": build_rule(rule_file), "alpha": alpha_init(rule_file, "median")}
        if rule_file.get("max_t") is not None:
            kwargs["max_t"] = int(rule_file["max_t"])
        return kwargs
