"""The meta-learner LSTM family (SPEC §2): Ravi & Larochelle's MetaLSTM, MetaLSTM++ and the
enhanced meta-learner LSTM of Huisman et al. 2022.

theta_0 (``self.theta0``, Ravi's c_0) and the two-layer coordinate-wise LSTM (``self.rule``, a
:class:`learnedopt.rules.MetaLSTMRule` running ``learnedopt.ops.meta_lstm_step``) are meta-learned
together with Adam; the meta-gradient norm is clipped to 0.25.
"""

from __future__ import annotations

import torch
from torch import Tensor

from learnedopt.algorithms import _options
from learnedopt.algorithms.episodic import EpisodicAlgorithm, common_defaults
from learnedopt.rules import MetaLSTMRule
from learnedopt.tasks.base import TaskBatch


class MetaLSTM(EpisodicAlgorithm):
    """Ravi & Larochelle 2017: preprocessed [loss, gradient] input, first order, one task per
    meta-update, T = 5 inner steps (the paper's 5-shot setting; it used 12 for 1-shot: pass
    ``inner_steps=12, test_inner_steps=12``).

    Options from the authors' code: ``divide_grad_by_batch`` (the gradient of the mean loss is
    divided once more by the number of support examples), ``bn_mode="running"`` (running
    statistics over the support steps at meta-test), ``log_eps=1e-8`` / ``strict`` (preprocessing).
    """

    name = "metalstm"
    input_size = 4

    @classmethod
    def _defaults(cls, task, ways):
        options = common_defaults(task)
        options.update(inner_steps=5, test_inner_steps=5, meta_batch_size=1, first_order=True,
                       clip_grad_norm=0.25, divide_grad_by_batch=False, hidden_size=20,
                       preprocess_p=10.0, log_eps=0.0, strict=False)
        return options

    def __init__(self, learner, **options):
        super().__init__(learner, **options)
        o = self._options
        _options.require(self.name, isinstance(o["hidden_size"], int) and 1 <= o["hidden_size"] <= 64,
                         f"hidden_size must be an int in 1..64, got {o['hidden_size']!r}")
        self.rule = MetaLSTMRule(input_size=self.input_size, hidden_size=o["hidden_size"],
                                 p=o["preprocess_p"], log_eps=o["log_eps"], strict=o["strict"])

    def _prepare_grad(self, grad, num_examples, steps):
        grad = super()._prepare_grad(grad, num_examples, steps)
        return grad / num_examples if self._options["divide_grad_by_batch"] else grad

    def _init_state(self, theta):
        # One state for the whole meta-batch: the (B, n) parameters flattened row by row, so that
        # task b's rows of h and c are [b*n, (b+1)*n), as meta_lstm_step's per-task loss expects.
        return self.rule.init_state(theta.reshape(-1))

    def _step(self, theta, grad, loss, state, t, steps):
        # One op call for the meta-batch: loss (B,) gives each task's coordinates its own loss.
        theta_new, state = self.rule(theta.reshape(-1), grad.reshape(-1), loss, state)
        return theta_new.view(theta.shape), state

    def gate_trace(self, batch: TaskBatch, steps: int | None = None, coordinates: int = 20,
                   seed: int = 0) -> dict[str, Tensor]:
        """sigma(i_t) (the learning rate) and sigma(f_t) (the forget gate) over the inner steps
        of each task (Ravi & Larochelle Fig. 3): for ``coordinates`` coordinates drawn with
        ``seed`` ("input_gate", "forget_gate": (B, steps, coordinates)) and averaged over all
        coordinates ("input_gate_mean", "forget_gate_mean": (B, steps)); "coordinates" holds the
        indices into theta."""
        steps = self._options["test_inner_steps"] if steps is None else steps
        _options.require(self.name, isinstance(steps, int) and steps >= 1,
                         f"gate_trace needs steps >= 1, got {steps!r}")
        n = self.theta0.numel()
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(n, generator=generator)[:min(coordinates, n)].to(self.theta0.device)
        trace = {"input_gate": [], "forget_gate": [], "input_gate_mean": [], "forget_gate_mean": []}

        def observe(t, state):
            for gate in ("input_gate", "forget_gate"):
                value = torch.sigmoid((state.i if gate == "input_gate" else state.f).detach()
                                      ).view(batch.num_tasks, n)
                trace[gate].append(value[:, index])
                trace[gate + "_mean"].append(value.mean(dim=1))

        self.adapt(batch.x_support, batch.y_support, steps, meta_graph=False,
                   bn=self._new_bn(batch.num_tasks), observer=observe)
        # Stacked over steps at dim 1: (B, steps, coordinates) and (B, steps).
        result = {key: torch.stack(values, dim=1) for key, values in trace.items()}
        result["coordinates"] = index
        return result


class MetaLSTMPlusPlus(MetaLSTM):
    """MetaLSTM++ (the stress-test paper): the same meta-learner, meta-batch of 4 tasks."""

    name = "metalstm++"

    @classmethod
    def _defaults(cls, task, ways):
        return {**super()._defaults(task, ways), "meta_batch_size": 4}


class EnhancedLSTM(MetaLSTM):
    """The enhanced meta-learner LSTM (Huisman et al. 2022): raw gradient as the only input,
    second-order meta-gradients, T = 8."""

    name = "enhanced-lstm"
    input_size = 1

    @classmethod
    def _defaults(cls, task, ways):
        return {**super()._defaults(task, ways), "first_order": False, "inner_steps": 8,
                "test_inner_steps": 8}
