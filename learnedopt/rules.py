"""The learned update rules as modules: what meta-training learns and what the optimizers ship.

:class:`MetaLSTMRule` (SPEC §2) and :class:`TurtleRule` (SPEC §3) own the meta-weights and call the
fused ops; the algorithms (``learnedopt.algorithms``) and the drop-in optimizers
(``learnedopt.optim``) both use them, so a rule meta-trained by one runs unchanged in the other.
Per-coordinate quantities that belong to a particular learner (TURTLE's step sizes alpha, the
LSTM's per-coordinate state) live outside the rule.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from learnedopt import ops


class MetaLSTMState(NamedTuple):
    """Per-coordinate state of the meta-learner LSTM: layer-1 (h, c) (n, H) and the layer-2 gate
    pre-activations f, i (n,) of the previous step."""
    h: Tensor
    c: Tensor
    f: Tensor
    i: Tensor


class MetaLSTMRule(nn.Module):
    """Ravi & Larochelle's two-layer coordinate-wise meta-learner (SPEC §2).

    ``input_size=4``: Ravi's preprocessed [loss, gradient]; ``input_size=1``: the enhanced LSTM's
    raw gradient. Layer 1 is initialised as torch.nn.LSTMCell; W_F, W_I ~ U(-0.01, 0.01),
    b_F ~ U(4, 6) (forget gate near 1), b_I ~ U(-5, -4) (small learning rate).
    """

    def __init__(self, input_size: int = 4, hidden_size: int = 20, p: float = 10.0,
                 log_eps: float = 0.0, strict: bool = False):
        super().__init__()
        if input_size not in (1, 4):
            raise ValueError(f"MetaLSTMRule: input_size must be 4 (preprocessed [loss, grad]) or 1 "
                             f"(raw gradient), got {input_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.p, self.log_eps, self.strict = p, log_eps, strict
        cell = nn.LSTMCell(input_size, hidden_size)
        self.w_ih, self.w_hh = cell.weight_ih, cell.weight_hh
        self.b_ih, self.b_hh = cell.bias_ih, cell.bias_hh
        self.w_f = nn.Parameter(torch.empty(hidden_size + 2).uniform_(-0.01, 0.01))
        self.w_i = nn.Parameter(torch.empty(hidden_size + 2).uniform_(-0.01, 0.01))
        self.b_f = nn.Parameter(torch.empty(1).uniform_(4.0, 6.0))
        self.b_i = nn.Parameter(torch.empty(1).uniform_(-5.0, -4.0))

    def config(self) -> dict:
        return {"input_size": self.input_size, "hidden_size": self.hidden_size, "p": self.p,
                "log_eps": self.log_eps, "strict": self.strict}

    def init_state(self, theta: Tensor) -> MetaLSTMState:
        n = theta.shape[0]
        zeros = theta.new_zeros
        return MetaLSTMState(zeros(n, self.hidden_size), zeros(n, self.hidden_size), zeros(n), zeros(n))

    def forward(self, theta: Tensor, grad: Tensor, loss: Tensor, state: MetaLSTMState
                ) -> tuple[Tensor, MetaLSTMState]:
        """theta_t from theta_{t-1}, its gradient and the loss; returns (theta_t, new state).
        ``state.f`` / ``state.i`` of the result are the gate values before the sigmoid."""
        theta_new, h, c, f, i = ops.meta_lstm_step(
            theta, grad, loss, state.h, state.c, state.f, state.i, self.w_ih, self.w_hh,
            self.b_ih, self.b_hh, self.w_f, self.b_f, self.w_i, self.b_i,
            self.p, self.log_eps, self.strict)
        return theta_new, MetaLSTMState(h, c, f, i)


class TurtleRule(nn.Module):
    """TURTLE's stateless per-coordinate MLP g_phi (SPEC §3).

    ``use_t``: inputs [g, m, t] (the paper) or [g, m] (the authors' example commands).
    Weights as torch.nn.Linear's default, biases 0. The update is theta + alpha * g_phi(...),
    with alpha supplied by the caller.
    """

    def __init__(self, hidden_size: int = 20, num_hidden_layers: int = 5, use_t: bool = True,
                 beta: float = 0.9, grad_clamp: float = math.inf):
        super().__init__()
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.use_t, self.beta, self.grad_clamp = use_t, beta, grad_clamp
        sizes = [3 if use_t else 2] + [hidden_size] * num_hidden_layers + [1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layer = nn.Linear(fan_in, fan_out)
            self.weights.append(layer.weight)
            self.biases.append(nn.Parameter(torch.zeros(fan_out)))

    def config(self) -> dict:
        return {"hidden_size": self.hidden_size, "num_hidden_layers": self.num_hidden_layers,
                "use_t": self.use_t, "beta": self.beta, "grad_clamp": self.grad_clamp}

    def forward(self, theta: Tensor, grad: Tensor, m: Tensor, t: int, alpha: Tensor,
                grad_clamp: float | None = None) -> tuple[Tensor, Tensor]:
        """Returns (theta_{t+1}, m_t). At t = 0 the moving average starts at g_0 (``m`` unused)."""
        clamp = self.grad_clamp if grad_clamp is None else grad_clamp
        return ops.turtle_step(theta, grad, m, t, alpha, _in_order(self.weights),
                               _in_order(self.biases), self.beta, clamp)


def _in_order(parameters: nn.ParameterList) -> list[Tensor]:
    # The list's own dict holds its parameters in order; iterating the ParameterList goes through
    # __getitem__ per entry, ~17 us per TURTLE step for the two lists, as much as a tenth of the
    # kernel's time on a sine learner.
    return list(parameters._parameters.values())
