"""The learned update rules as modules: what meta-training learns and what the optimizers ship.

:class:`MetaLSTMRule` (SPEC §2) and :class:`TurtleRule` (SPEC §3) own the meta-weights and call the
fused ops; the algorithms (``learnedopt.algorithms``) and the drop-in optimizers
(``learnedopt.optim``) both use them, so a rule meta-trained by one runs unchanged in the other.
Per-coordinate quantities that belong to a particular learner (TURTLE's step sizes alpha, the
LSTM's per-coordinate state) live outside the rule.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor, nn

from learnedopt import ops
from learnedopt.ops import _checks
from learnedopt.ops.meta_lstm import MAX_HIDDEN as LSTM_MAX_HIDDEN
from learnedopt.ops.turtle import MAX_LAYERS as TURTLE_MAX_LAYERS
from learnedopt.ops.turtle import MAX_WIDTH as TURTLE_MAX_WIDTH


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
        self.check_config(input_size=input_size, hidden_size=hidden_size, p=p, log_eps=log_eps,
                          strict=strict)
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

    @staticmethod
    def check_config(*, input_size: Any, hidden_size: Any, p: Any, log_eps: Any, strict: Any
                     ) -> None:
        """Raise (TypeError / ValueError naming the option) unless every option is one the
        meta_lstm_step op runs; checked before anything is allocated."""
        where = "MetaLSTMRule"
        _require_int(where, "input_size", input_size, 1, 4)
        if input_size not in (1, 4):
            raise ValueError(f"{where}: input_size must be 4 (preprocessed [loss, grad]) or 1 "
                             f"(raw gradient), got {input_size}")
        _require_int(where, "hidden_size", hidden_size, 1, LSTM_MAX_HIDDEN)
        # The op's own ranges (learnedopt.ops._checks), for float32 inputs: the narrower of the
        # two dtypes', so a rule that passes runs in either.
        p_min, p_max = _checks.preprocess_p_range(torch.float32)
        _require_real(where, "p", p, lambda v: p_min <= v <= p_max, f"in [{p_min:.6g}, {p_max:.6g}]")
        _require_real(where, "log_eps", log_eps, lambda v: 0.0 <= v <= _checks.LOG_EPS_MAX,
                      f"in [0, {_checks.LOG_EPS_MAX:g}]")
        if not isinstance(strict, bool):
            raise TypeError(f"{where}: strict must be a bool, got {strict!r}")

    def init_state(self, theta: Tensor) -> MetaLSTMState:
        n = theta.shape[0]
        zeros = theta.new_zeros
        return MetaLSTMState(zeros(n, self.hidden_size), zeros(n, self.hidden_size), zeros(n), zeros(n))

    def forward(self, theta: Tensor, grad: Tensor, loss: Tensor, state: MetaLSTMState
                ) -> tuple[Tensor, MetaLSTMState]:
        """theta_t from theta_{t-1}, its gradient and the loss; returns (theta_t, new state).
        ``loss`` is 0-d, or (B,) for B tasks whose coordinates are concatenated in theta (task b
        owns the b-th of B equal segments; see :func:`learnedopt.ops.meta_lstm_step`).
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
        self.check_config(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                          use_t=use_t, beta=beta, grad_clamp=grad_clamp)
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

    @staticmethod
    def check_config(*, hidden_size: Any, num_hidden_layers: Any, use_t: Any, beta: Any,
                     grad_clamp: Any) -> None:
        """Raise (TypeError / ValueError naming the option) unless every option is one the
        turtle_step op runs; checked before anything is allocated."""
        where = "TurtleRule"
        _require_int(where, "hidden_size", hidden_size, 1, TURTLE_MAX_WIDTH)
        _require_int(where, "num_hidden_layers", num_hidden_layers, 0, TURTLE_MAX_LAYERS - 1)
        if not isinstance(use_t, bool):
            raise TypeError(f"{where}: use_t must be a bool, got {use_t!r}")
        _require_real(where, "beta", beta, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
        _require_real(where, "grad_clamp", grad_clamp, lambda v: v > 0, "> 0 (math.inf: no clamp)")

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


def _require_int(where: str, name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{where}: {name} must lie in {low}..{high} (the sizes the op supports), "
                         f"got {value}")


def _require_real(where: str, name: str, value: Any, valid: Callable[[float], bool],
                  expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be a number, got {value!r}")
    if not valid(float(value)):  # NaN fails every comparison, so it is refused here too
        raise ValueError(f"{where}: {name} must be {expected}, got {value}")
