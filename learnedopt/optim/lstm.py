"""``LSTMOptimizer``: the meta-learner LSTM (SPEC §2) as a drop-in torch.optim optimizer."""

from __future__ import annotations

from typing import Any, Iterable

from torch import Tensor

from learnedopt import ops
from learnedopt.optim._flat import FlatGroup, FlatOptimizer
from learnedopt.optim._rule_cache import RuleTensors
from learnedopt.optim.pretrained import build_rule
from learnedopt.rules import MetaLSTMRule


class LSTMOptimizer(FlatOptimizer):
    """Ravi & Larochelle's coordinate-wise meta-learner LSTM, applied to any model.

    Each step runs :func:`learnedopt.ops.meta_lstm_step` once per param group over the group's
    flat buffers, and sets

        theta <- theta + lr * (theta_lstm - theta),   theta_lstm = sigmoid(f) * theta - sigmoid(i) * g

    so ``lr = 1`` (the default) is exactly the meta-learned update and ``lr`` scales the change
    the LSTM proposes (torch.optim.lr_scheduler schedulers act on it). The rule reads the loss
    (Ravi's preprocessed [loss, gradient] input): pass ``step(loss=loss)`` or a closure returning
    it; the enhanced LSTM's rule (``input_size=1``, raw gradient) does not need it.

    Per-coordinate state, in ``opt.state[p]`` and :meth:`state_dict` per parameter: layer-1
    ``h``, ``c`` (shape ``p.shape + (hidden,)``) and the layer-2 gate pre-activations ``f``, ``i``
    (shape ``p.shape``), all starting at 0 as in the paper.

    Args:
        params: parameters or param groups (per-group option: ``lr``), or
            ``model.named_parameters()``.
        rule: the :class:`~learnedopt.rules.MetaLSTMRule` (default: a freshly initialised,
            untrained one; use :meth:`from_pretrained` for a meta-trained rule). Its weights are
            read, never trained, by the optimizer.
        lr: scale of the proposed update (see above).
    """

    KIND = "metalstm"
    IN_PLACE_STATE = ("h", "c", "f", "i")  # meta_lstm_step_inplace writes them (no mask)

    def __init__(self, params: Iterable, rule: MetaLSTMRule | None = None, lr: float = 1.0):
        rule = MetaLSTMRule() if rule is None else rule
        if not isinstance(rule, MetaLSTMRule):
            raise TypeError(f"LSTMOptimizer: rule must be a learnedopt.rules.MetaLSTMRule, got "
                            f"{type(rule).__name__}")
        self.rule = rule
        self._weights = RuleTensors(lambda: [rule.w_ih, rule.w_hh, rule.b_ih, rule.b_hh,
                                             rule.w_f, rule.b_f, rule.w_i, rule.b_i])
        super().__init__(params, {"lr": lr})

    def _needs_loss(self) -> bool:
        return self.rule.input_size == 4

    def _init_state(self, flat: FlatGroup, group: dict[str, Any]) -> None:
        hidden = self.rule.hidden_size
        flat.state = {"h": flat.new_state(hidden), "c": flat.new_state(hidden),
                      "f": flat.new_state(), "i": flat.new_state()}

    def _step_group(self, flat: FlatGroup, group: dict[str, Any], loss: Tensor | None) -> None:
        if loss is None:  # raw-gradient rule: the op ignores the loss
            loss = flat.param.new_zeros(())
        s = flat.state
        rule = self.rule
        weights = self._weights.get(flat.device, flat.dtype)
        if flat.mask is None:
            # Every coordinate steps: the state is written where it is (no (n, H) outputs to
            # allocate, whose fresh pages cost as much as the math at this size on the CPU).
            theta = ops.meta_lstm_step_inplace(flat.param, flat.grad, loss, s["h"], s["c"], s["f"],
                                               s["i"], *weights, rule.p, rule.log_eps, rule.strict)
            flat.apply_update(theta, group["lr"])
            return
        theta, h, c, f, i = ops.meta_lstm_step(
            flat.param, flat.grad, loss, s["h"], s["c"], s["f"], s["i"],
            *weights, rule.p, rule.log_eps, rule.strict)
        flat.state = {"h": flat.keep_skipped(h, s["h"]), "c": flat.keep_skipped(c, s["c"]),
                      "f": flat.keep_skipped(f, s["f"]), "i": flat.keep_skipped(i, s["i"])}
        flat.apply_update(theta, group["lr"])

    @classmethod
    def _kwargs_from_rule(cls, rule_file: dict[str, Any]) -> dict[str, Any]:
        return {"rule": build_rule(rule_file)}
