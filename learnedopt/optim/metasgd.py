"""``MetaSGD``: SGD with a per-coordinate step size (Li et al. 2017, SPEC §4) as an optimizer."""

from __future__ import annotations

from typing import Any, Iterable

from torch import Tensor

from learnedopt.optim._flat import FlatGroup, FlatOptimizer, check_alpha
from learnedopt.optim.pretrained import alpha_init


class MetaSGD(FlatOptimizer):
    """theta <- theta - lr * alpha * g, with ``alpha`` one step size (and sign) per coordinate.

    Meta-SGD learns alpha per coordinate of its meta-training learner: for that model,
    ``from_pretrained(..., model.named_parameters())`` starts each coordinate at its learned value
    (found by parameter name), which makes a step exactly Meta-SGD's inner update; for a new
    model every coordinate of a group starts at the group's scalar ``alpha``
    (``from_pretrained``: the median of the learned ones). The per-coordinate ``alpha`` is
    optimizer state (``opt.state[p]["alpha"]``, and per parameter in ``state_dict``), so it can
    be set per coordinate. One fused ``addcmul_`` per group per step; ``lr`` (default 1) scales
    ``alpha * g``.

    Args:
        params: parameters or param groups (per-group options: ``lr``, ``alpha``), or
            ``model.named_parameters()``.
        lr: scale of the update.
        alpha: initial per-coordinate step size of the group's coordinates.
    """

    KIND = "metasgd"

    def __init__(self, params: Iterable, lr: float = 1.0, alpha: float = 0.01):
        super().__init__(params, {"lr": lr, "alpha": alpha})

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        super()._check_group(group, where)
        group["alpha"] = check_alpha(group["alpha"], where)

    def _init_state(self, flat: FlatGroup, group: dict[str, Any]) -> None:
        flat.state = {"alpha": flat.new_state(fill=float(group["alpha"]))}

    def _step_group(self, flat: FlatGroup, group: dict[str, Any], loss: Tensor | None) -> None:
        # Parameters without a gradient have zeros in their gradient slots: no mask needed.
        flat.param.addcmul_(flat.state["alpha"], flat.grad, value=-group["lr"])

    @classmethod
    def _kwargs_from_rule(cls, rule_file: dict[str, Any]) -> dict[str, Any]:
        return {"alpha": alpha_init(rule_file, "median")}
