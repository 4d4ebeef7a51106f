"""``LSTMOptimizer``: the meta-learner LSTM (SPEC §2) as a drop-in torch.optim optimizer."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from learnedopt import ops
from learnedopt.optim._flat import FlatGroup, FlatOptimizer, check_state_dtype
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
    (shape ``p.shape``), all starting at 0 as in the paper. ``h`` and ``c`` are 2 x hidden of the
    2 x hidden + 2 numbers per coordinate (40 of 42 at hidden 20, 42x the parameters' memory):
    ``state_dtype=torch.bfloat16`` stores them in bfloat16 (about half the memory), the step
    widening a block of coordinates at a time to the parameters' dtype, running the same kernel
    and rounding the new state back (round to nearest even); ``f`` and ``i``, which set the
    forget and input gates through a sigmoid, stay in the parameters' dtype.

    Args:
        params: parameters or param groups (per-group option: ``lr``), or
            ``model.named_parameters()``.
        rule: the :class:`~learnedopt.rules.MetaLSTMRule` (default: a freshly initialised,
            untrained one; use :meth:`from_pretrained` for a meta-trained rule). Its weights are
            read, never trained, by the optimizer.
        lr: scale of the proposed update (see above).
        state_dtype: None (``h``, ``c`` in the parameters' dtype) or ``torch.bfloat16``.
    """

    KIND = "metalstm"
    # Written in place by meta_lstm_step_inplace (no mask) and by the widened step (always).
    IN_PLACE_STATE = ("h", "c", "f", "i")

    REDUCIBLE_STATE = ("h", "c")  # what state_dtype=torch.bfloat16 stores reduced
    # Coordinates widened at a time when h, c are stored reduced: on the CPU the two float32
    # blocks (2 x 16384 x hidden x 4 bytes, 2.6 MB at hidden 20) stay in cache between the
    # widening, the kernel and the rounding; on a GPU larger blocks keep the launches few.
    STAGE_COORDS = {"cpu": 16384, "other": 1 << 18}

    def __init__(self, params: Iterable, rule: MetaLSTMRule | None = None, lr: float = 1.0,
                 state_dtype: torch.dtype | None = None):
        self.state_dtype = check_state_dtype(state_dtype, "LSTMOptimizer", self.REDUCIBLE_STATE)
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
        flat.state = {"h": flat.new_state(hidden, dtype=self.state_dtype),
                      "c": flat.new_state(hidden, dtype=self.state_dtype),
                      "f": flat.new_state(), "i": flat.new_state()}

    def _step_group(self, flat: FlatGroup, group: dict[str, Any], loss: Tensor | None) -> None:
        if loss is None:  # raw-gradient rule: the op ignores the loss
            loss = flat.param.new_zeros(())
        s = flat.state
        rule = self.rule
        weights = self._weights.get(flat.device, flat.dtype)
        if s["h"].dtype != flat.dtype:
            self._step_widened(flat, group, loss, weights)
            return
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

    def _step_widened(self, flat: FlatGroup, group: dict[str, Any], loss: Tensor,
                      weights: list[Tensor]) -> None:
        """The step with ``h``, ``c`` stored reduced: block by block, widen them into two scratch
        buffers, run the kernel on the block (in place, or out of place where some parameters are
        skipped), round the new state back into storage and update the block's parameters. Per
        coordinate this is exactly the full-precision step on the widened state."""
        s, rule = flat.state, self.rule
        n = flat.numel
        block = min(n, self.STAGE_COORDS["cpu" if flat.device.type == "cpu" else "other"])
        scratch_h = torch.empty((block, rule.hidden_size), dtype=flat.dtype, device=flat.device)
        scratch_c = torch.empty_like(scratch_h)
        for a in range(0, n, block):
            b = min(n, a + block)
            h, c = scratch_h[:b - a], scratch_c[:b - a]
            h.copy_(s["h"][a:b])
            c.copy_(s["c"][a:b])
            param, grad, f, i = flat.param[a:b], flat.grad[a:b], s["f"][a:b], s["i"][a:b]
            if flat.mask is None:
                theta = ops.meta_lstm_step_inplace(param, grad, loss, h, c, f, i, *weights,
                                                   rule.p, rule.log_eps, rule.strict)
            else:
                theta, h_new, c_new, f_new, i_new = ops.meta_lstm_step(
                    param, grad, loss, h, c, f, i, *weights, rule.p, rule.log_eps, rule.strict)
                active = flat.mask[a:b]
                h.copy_(torch.where(active[:, None], h_new, h))  # a skipped h stays what it was
                c.copy_(torch.where(active[:, None], c_new, c))
                f.copy_(torch.where(active, f_new, f))
                i.copy_(torch.where(active, i_new, i))
                theta = torch.where(active, theta, param)
            s["h"][a:b].copy_(h)
            s["c"][a:b].copy_(c)
            param.lerp_(theta, group["lr"])

    @classmethod
    def _kwargs_from_rule(cls, rule_file: dict[str, Any]) -> dict[str, Any]:
        return {"rule": build_rule(rule_file)}
