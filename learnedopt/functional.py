"""Differentiable optimizers for your own inner loop: the package's update rules in functional form.

For a user who writes the inner loop over their own module (``torch.func.functional_call``) and
wants to differentiate through it, first or second order, as torchopt's functional optimizers and
higher's differentiable optimizers allow, but with the learned rules on the fused ops::

    from torch.func import functional_call
    from learnedopt import functional

    params = dict(model.named_parameters())
    opt = functional.Turtle(params)          # g_phi (opt.rule) and alpha (opt.alpha), an nn.Module
    state = opt.init(params)
    for t in range(5):
        loss = loss_fn(functional_call(model, params, (x,)), y)
        params, state = opt.step(loss, params, state)       # first_order=True: FO
    loss_fn(functional_call(model, params, (x_query,)), y_query).backward()
    # -> gradients in model.parameters() (theta_0), opt.rule's weights and opt.alpha

Every optimizer has

* ``init(params) -> state``: the per-coordinate state for a dict name -> tensor;
* ``update(params, grads, state, *, loss=None) -> (params, state)``: one step, with ``grads`` a
  dict with the same names or a sequence in ``params``' order (what
  ``torch.autograd.grad(loss, list(params.values()))`` returns); a pure function of its inputs
  and of the optimizer's meta-parameters, never modifying a tensor in place;
* ``step(loss, params, state, *, first_order=False)``: computes the gradients (``create_graph``
  unless ``first_order``; in first order the gradients and the loss are constants, the package's
  FO convention, SPEC notation) and calls ``update``.

Calling the optimizer is ``update``, so ``torch.func.functional_call(opt, meta_params, (params,
grads, state))`` steps with explicitly given meta-parameters.

Design: ``update`` returns the new parameters, not torchopt's ``(updates, state)`` followed by
``apply_updates``. The meta-learner LSTM's rule produces the new parameters themselves
(theta' = sigma(f) * theta - sigma(i) * g), and so does every fused op; returning theta' - theta
for the caller to add back would cost two more passes over every coordinate and two more graph
nodes per step, and theta + (theta' - theta) is not theta' in floating point, so the loop would no
longer compute what the package's algorithms and drop-in optimizers compute.

One fused op call per step for all the tensors of the dict, over one flat vector in the dict's
order (SPEC's flat theta):

* the per-coordinate state (the LSTM's h, c, f, i; TURTLE's m) and the step sizes alpha are flat
  from the start and never copied;
* the returned parameters are views of the op's flat output, and the state remembers it, so when
  the next ``update`` gets those same tensors back it uses the flat output as it is: the
  parameters are concatenated once, at the first step (or again after the caller replaced one
  of them);
* the gradients are concatenated at every step (one copy of n numbers): the model's backward
  makes one tensor per parameter, and taking the gradient with respect to a flat vector instead
  would make autograd do the same concatenation (the backward of the split into views).

Second order through the fused ops works as in the package's algorithms: the second-order term
flows through the gradients' own graph, and each op is differentiated once. Differentiating a
meta-gradient again (a Hessian of the meta-loss) needs ``learnedopt.ops.set_backend("reference")``,
which differentiates to any order; that backend is used underneath whenever it is selected.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from learnedopt.learners import ParamLayout
from learnedopt.optim import pretrained
from learnedopt.optim._flat import SUPPORTED_DTYPES, check_lr
from learnedopt.rules import MetaLSTMRule, MetaLSTMState, TurtleRule

__all__ = ["FunctionalOptimizer", "OptimizerState", "SGD", "MetaSGD", "MetaLSTM", "Turtle",
           "from_pretrained"]


@dataclasses.dataclass(frozen=True, eq=False)
class OptimizerState:
    """What ``init`` makes and ``update`` returns. Treat it as opaque and immutable: ``update``
    returns a new one and leaves the old one valid (stepping twice from it gives the same result).

    ``layout``: the names and shapes of the parameters it was made for; ``step``: the number of
    updates taken (TURTLE's t); ``buffers``: the flat per-coordinate state (n, ...) by name.
    ``flat`` / ``views``: the flat parameters the last update returned and the per-name views of
    them handed to the caller, so the next update can skip concatenating them.
    """
    owner: str
    layout: ParamLayout
    dtype: torch.dtype
    device: torch.device
    step: int
    buffers: dict[str, Tensor]
    flat: Tensor | None = None
    views: tuple[Tensor, ...] = ()


def _read_params(where: str, params: Any) -> tuple[ParamLayout, torch.dtype, torch.device]:
    """The layout of a dict name -> tensor, with the checks every entry point shares."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{where}: params must be a dict name -> tensor (e.g. "
                        f"dict(model.named_parameters())), got {type(params).__name__}")
    if not params:
        raise ValueError(f"{where}: params is empty: there is nothing to optimize")
    first_name, first = None, None
    seen: dict[int, str] = {}
    for name, p in params.items():
        if not isinstance(name, str):
            raise TypeError(f"{where}: parameter names must be strings, got {name!r}")
        if not isinstance(p, Tensor):
            raise TypeError(f"{where}: params[{name!r}] must be a tensor, got {type(p).__name__}")
        if p.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{where}: params[{name!r}] has dtype {p.dtype}; the rules run in "
                            f"float32 or float64 only (leave integer and boolean tensors out of the "
                            f"dict; cast half/bfloat16 models with .float())")
        if p.layout != torch.strided:
            raise TypeError(f"{where}: params[{name!r}] is a {p.layout} tensor; only dense "
                            f"tensors are supported")
        if first is None:
            first_name, first = name, p
        elif p.dtype != first.dtype or p.device != first.device:
            raise ValueError(f"{where}: params[{name!r}] is {p.dtype} on {p.device} but "
                             f"params[{first_name!r}] is {first.dtype} on {first.device}; the "
                             f"rule runs over one flat vector, so every tensor must share both")
        if id(p) in seen:
            raise ValueError(f"{where}: params[{name!r}] is the same tensor as "
                             f"params[{seen[id(p)]!r}] (tied weights): pass it once, as "
                             f"dict(model.named_parameters()) does; functional_call keeps the tie")
        seen[id(p)] = name
    return ParamLayout([(name, tuple(p.shape)) for name, p in params.items()]), first.dtype, first.device


def _mismatch(expected: ParamLayout, got: ParamLayout) -> str | None:
    """What differs between two layouts, in words (None: the same names and shapes)."""
    missing = [n for n in expected.names if n not in got.shapes]
    unexpected = [n for n in got.names if n not in expected.shapes]
    changed = [f"{n} {got.shapes[n]} (was {expected.shapes[n]})" for n in expected.names
               if n in got.shapes and got.shapes[n] != expected.shapes[n]]
    parts = ([f"missing {missing}"] if missing else []) + \
            ([f"unexpected {unexpected}"] if unexpected else []) + \
            ([f"changed shapes: {', '.join(changed)}"] if changed else [])
    return "; ".join(parts) or None


def _is_last_output(values: list[Tensor], state: OptimizerState) -> bool:
    """Whether ``values`` are the very tensors the update that made ``state`` returned."""
    return bool(state.views) and all(map(operator.is_, values, state.views))


class FunctionalOptimizer(nn.Module):
    """Base of the functional optimizers; its parameters are the rule's meta-parameters.

    Subclasses make the per-coordinate state (:meth:`_init_buffers`) and compute one step over the
    flat vectors (:meth:`_rule_step`). Optimizers with per-coordinate step sizes fix the layout
    of the parameters they serve at construction (``self.layout``); the others take it from
    ``init``.
    """

    layout: ParamLayout | None = None

    def _where(self, method: str) -> str:
        return f"learnedopt.functional.{type(self).__name__}.{method}"

    # -- the interface -----------------------------------------------------------------------

    def init(self, params: Mapping[str, Tensor]) -> OptimizerState:
        """The state before the first step for the parameters ``params`` (name -> tensor)."""
        where = self._where("init")
        layout, dtype, device = _read_params(where, params)
        if self.layout is not None:
            differs = _mismatch(self.layout, layout)
            if differs:
                raise ValueError(f"{where}: this optimizer's per-coordinate step sizes were made "
                                 f"for other parameters: {differs}")
        for name, t in [*self.named_parameters(), *self.named_buffers()]:
            if t.dtype != dtype or t.device != device:
                raise ValueError(f"{where}: the optimizer's {name!r} is {t.dtype} on {t.device} but "
                                 f"the parameters are {dtype} on {device}; move the optimizer "
                                 f"with opt.to(dtype=..., device=...)")
        buffers = self._init_buffers(layout.numel, dtype, device)
        return OptimizerState(type(self).__name__, layout, dtype, device, 0, buffers)

    def update(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor] | Sequence[Tensor],
               state: OptimizerState, *, loss: Tensor | float | None = None
               ) -> tuple[dict[str, Tensor], OptimizerState]:
        """The parameters after one step from their gradients ``grads``, and the next state.

        The result's tensors are views of one flat tensor, in ``state``'s layout order; pass them
        back (in a dict, any order) to the next update to spare their concatenation.
        ``loss`` is read by the meta-learner LSTM's preprocessed-input rule (required there).
        The step is differentiable in everything it is given: for second order pass gradients
        made with ``create_graph=True``; for first order, gradients made without and
        ``loss.detach()`` (what :meth:`step` does).
        """
        where = self._where("update")
        return self._update(where, self._check_state_and_params(where, params, state), grads,
                            state, loss)

    def _update(self, where: str, values: list[Tensor], grads: Any, state: OptimizerState,
                loss: Any) -> tuple[dict[str, Tensor], OptimizerState]:
        if _is_last_output(values, state):
            theta = state.flat  # the previous output itself: no copy
        else:
            theta = torch.cat([v.reshape(-1) for v in values])
        grad = torch.cat([g.reshape(-1) for g in self._grads_in_order(where, grads, state, values)])
        theta_new, buffers = self._rule_step(theta, grad, loss, state, where)
        views = state.layout.unflatten(theta_new)
        return views, OptimizerState(state.owner, state.layout, state.dtype, state.device,
                                     state.step + 1, buffers, theta_new, tuple(views.values()))

    def step(self, loss: Tensor, params: Mapping[str, Tensor], state: OptimizerState, *,
             first_order: bool = False) -> tuple[dict[str, Tensor], OptimizerState]:
        """``update`` with the gradients of ``loss`` with respect to ``params``.

        Second order (default): the gradients keep their graph (``create_graph=True``), so the
        meta-gradient flows through them. ``first_order=True``: the gradients and the loss are
        constants; the new parameters still depend on the old ones and on the meta-parameters
        (backpropagation through the unrolled rule, as the meta-learner LSTM paper trains).
        A parameter the loss does not depend on gets a zero gradient, as a coordinate of the
        algorithms' flat theta does; the rule still updates it.
        """
        where = self._where("step")
        if not isinstance(loss, Tensor):
            raise TypeError(f"{where}: loss must be a scalar tensor, got {type(loss).__name__}")
        if loss.numel() != 1 or not loss.is_floating_point():
            raise ValueError(f"{where}: loss must be a floating-point scalar, got {loss.dtype} of "
                             f"shape {tuple(loss.shape)}")
        values = self._check_state_and_params(where, params, state)
        frozen = [n for n, v in zip(state.layout.names, values) if not v.requires_grad]
        if frozen:
            raise ValueError(f"{where}: {frozen} do not require grad: leave frozen tensors out of "
                             f"the dict (functional_call falls back to the module's own)")
        if not loss.requires_grad:
            raise ValueError(f"{where}: the loss has no graph to the parameters (was it computed "
                             f"under torch.no_grad(), or from detached tensors?)")
        grads = torch.autograd.grad(loss, values, create_graph=not first_order,
                                    materialize_grads=True)
        return self._update(where, values, grads, state, loss.detach() if first_order else loss)

    def forward(self, params, grads, state, *, loss=None):
        """Same as :meth:`update` (so ``torch.func.functional_call`` can supply meta-parameters)."""
        return self.update(params, grads, state, loss=loss)

    # -- subclass hooks ----------------------------------------------------------------------

    def _init_buffers(self, n: int, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        return {}

    def _rule_step(self, theta: Tensor, grad: Tensor, loss: Any, state: OptimizerState, where: str
                   ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    # -- checks --------------------------------------------------------------------------------

    def _check_state_and_params(self, where: str, params: Any, state: Any) -> list[Tensor]:
        """``params``' tensors in the state's layout order, after checking that they match it."""
        if not isinstance(state, OptimizerState):
            raise TypeError(f"{where}: state must be what init/update returned, got "
                            f"{type(state).__name__}")
        if state.owner != type(self).__name__:
            raise ValueError(f"{where}: this state was made by learnedopt.functional."
                             f"{state.owner}, not by {type(self).__name__}")
        if isinstance(params, Mapping) and len(params) == len(state.layout.names):
            values = [params.get(name) for name in state.layout.names]
            # The tensors the last update returned need no check; others are checked cheaply
            # here, and only a mismatch pays for the full diagnosis below.
            if _is_last_output(values, state) or (
                    all(isinstance(v, Tensor) and v.shape == state.layout.shapes[name]
                        and v.dtype == state.dtype and v.device == state.device
                        and v.layout == torch.strided
                        for name, v in zip(state.layout.names, values))
                    and len(set(map(id, values))) == len(values)):
                return values
        layout, dtype, device = _read_params(where, params)
        differs = _mismatch(state.layout, layout)
        if differs:
            raise ValueError(f"{where}: params do not match the dict the state was made for "
                             f"(init(params)): {differs}")
        if dtype != state.dtype or device != state.device:
            raise ValueError(f"{where}: params are {dtype} on {device} but the state was made "
                             f"for {state.dtype} on {state.device}")
        return [params[name] for name in state.layout.names]

    @staticmethod
    def _grads_in_order(where: str, grads: Any, state: OptimizerState, values: list[Tensor]
                        ) -> list[Tensor]:
        names = state.layout.names
        if isinstance(grads, Mapping):
            missing = [n for n in names if n not in grads]
            unexpected = [n for n in grads if n not in state.layout.shapes]
            if missing or unexpected:
                raise ValueError(f"{where}: grads must have the names of params: "
                                 f"missing {missing}, unexpected {unexpected}")
            ordered = [grads[n] for n in names]
        elif isinstance(grads, Sequence) and not isinstance(grads, (str, Tensor)):
            if len(grads) != len(names):
                raise ValueError(f"{where}: {len(grads)} gradients for {len(names)} parameters "
                                 f"(a sequence of gradients must follow params' order)")
            ordered = list(grads)
        else:
            raise TypeError(f"{where}: grads must be a dict name -> tensor or a sequence in "
                            f"params' order, got {type(grads).__name__}")
        for name, g, p in zip(names, ordered, values):
            if g is None:
                raise ValueError(f"{where}: the gradient of {name!r} is None (the loss does not "
                                 f"depend on it): pass zeros, e.g. torch.autograd.grad(..., "
                                 f"materialize_grads=True), or leave it out of params")
            if not isinstance(g, Tensor):
                raise TypeError(f"{where}: the gradient of {name!r} must be a tensor, got "
                                f"{type(g).__name__}")
            if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                raise ValueError(f"{where}: the gradient of {name!r} is {g.dtype} "
                                 f"{tuple(g.shape)} on {g.device}, its parameter {p.dtype} "
                                 f"{tuple(p.shape)} on {p.device}")
            if g.layout != torch.strided:
                raise TypeError(f"{where}: the gradient of {name!r} is a {g.layout} tensor; "
                                f"the rules need dense gradients")
        return ordered


class _StepSizeOptimizer(FunctionalOptimizer):
    """An optimizer with learned per-coordinate step sizes: ``self.alpha``, one flat Parameter
    over the coordinates of the parameters given at construction, in the dict's order (the
    layout of the algorithms' ``alpha``, so their state_dict entries load into it)."""

    def _init_alpha(self, where: str, params: Any, alpha: Any, draw, learn_alpha: bool) -> None:
        """``alpha``: None for ``draw(n, dtype, device)``, a number for every coordinate, a flat
        (n,) tensor, or a dict shaped like ``params`` (values copied)."""
        layout, dtype, device = _read_params(where, params)
        n = layout.numel
        if alpha is None:
            values = draw(n, dtype, device)
        elif isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
            if not math.isfinite(alpha):
                raise ValueError(f"{where}: alpha must be finite, got {alpha}")
            values = torch.full((n,), float(alpha), dtype=dtype, device=device)
        elif isinstance(alpha, Mapping):
            alpha_layout, _, _ = _read_params(where + " (alpha)", alpha)
            differs = _mismatch(layout, alpha_layout)
            if differs:
                raise ValueError(f"{where}: alpha must have the names and shapes of params: {differs}")
            values = layout.flatten({k: v.detach() for k, v in alpha.items()})
        elif isinstance(alpha, Tensor):
            if tuple(alpha.shape) != (n,):
                raise ValueError(f"{where}: a tensor alpha must be flat, shape ({n},) for these "
                                 f"params, got {tuple(alpha.shape)}")
            values = alpha.detach()
        else:
            raise TypeError(f"{where}: alpha must be None, a number, a flat tensor or a dict like "
                            f"params, got {type(alpha).__name__}")
        self.layout = layout
        self.alpha = nn.Parameter(values.to(dtype=dtype, device=device).clone(),
                                  requires_grad=learn_alpha)

    def alpha_per_parameter(self) -> dict[str, Tensor]:
        """The step sizes as views shaped like the parameters (name -> tensor)."""
        return self.layout.unflatten(self.alpha)


class SGD(FunctionalOptimizer):
    """MAML's inner step (SPEC §4): theta <- theta - lr * g. No meta-parameters of its own (the
    meta-parameters are theta_0, the module's initial parameters)."""

    def __init__(self, lr: float):
        super().__init__()
        self.lr = check_lr(lr, "learnedopt.functional.SGD")

    def _rule_step(self, theta, grad, loss, state, where):
        return torch.add(theta, grad, alpha=-self.lr), {}


class MetaSGD(_StepSizeOptimizer):
    """Meta-SGD's inner step (SPEC §4): theta <- theta - alpha * g, with ``self.alpha`` a flat
    Parameter, one learned rate (and sign) per coordinate of ``params`` in the dict's order (the
    layout of the ``metasgd`` algorithm's ``alpha``).

    ``alpha``: None draws U[alpha_low, alpha_high] = U[0.005, 0.1] (SPEC); a number, a flat (n,)
    tensor or a dict shaped like ``params`` gives the initial values (copied).
    ``learn_alpha=False`` keeps alpha fixed (requires_grad False).
    """

    def __init__(self, params: Mapping[str, Tensor], alpha: Any = None, *, alpha_low: float = 0.005,
                 alpha_high: float = 0.1, learn_alpha: bool = True):
        super().__init__()
        where = "learnedopt.functional.MetaSGD"
        if not alpha_low <= alpha_high:
            raise ValueError(f"{where}: alpha_low must be <= alpha_high, got {alpha_low}, {alpha_high}")
        self._init_alpha(where, params, alpha, lambda n, dtype, device: torch.empty(
            n, dtype=dtype, device=device).uniform_(alpha_low, alpha_high), learn_alpha)

    def _rule_step(self, theta, grad, loss, state, where):
        return torch.addcmul(theta, self.alpha, grad, value=-1.0), {}


class MetaLSTM(FunctionalOptimizer):
    """The meta-learner LSTM (SPEC §2) over ``learnedopt.ops.meta_lstm_step``.

    ``rule``: a :class:`~learnedopt.rules.MetaLSTMRule` (default: a fresh one with Ravi's
    preprocessed [loss, gradient] input, which needs ``loss`` in every update; pass
    ``MetaLSTMRule(input_size=1)`` for the enhanced LSTM's raw gradient). The rule is used, not
    copied: its weights are this optimizer's parameters. State: h, c (n, hidden), f, i (n,),
    zero at init as in the paper.
    """

    def __init__(self, rule: MetaLSTMRule | None = None):
        super().__init__()
        rule = MetaLSTMRule() if rule is None else rule
        if not isinstance(rule, MetaLSTMRule):
            raise TypeError(f"learnedopt.functional.MetaLSTM: rule must be a "
                            f"learnedopt.rules.MetaLSTMRule, got {type(rule).__name__}")
        self.rule = rule

    def _init_buffers(self, n, dtype, device):
        return self.rule.init_state(torch.empty(n, dtype=dtype, device=device))._asdict()

    def _rule_step(self, theta, grad, loss, state, where):
        if loss is None:
            if self.rule.input_size == 4:
                raise ValueError(f"{where}: the preprocessed-input rule reads the loss: pass "
                                 f"loss=... (the raw-gradient rule, input_size=1, does not)")
            loss = theta.new_zeros(())  # the raw-gradient rule ignores it
        elif isinstance(loss, Tensor):
            if loss.numel() != 1:
                raise ValueError(f"{where}: loss must be a scalar, got shape {tuple(loss.shape)}")
            loss = loss.reshape(())
        elif isinstance(loss, numbers.Real) and not isinstance(loss, bool):
            loss = torch.tensor(float(loss), dtype=theta.dtype, device=theta.device)
        else:
            raise TypeError(f"{where}: loss must be a tensor or a number, got {type(loss).__name__}")
        if state.buffers["h"].shape[1] != self.rule.hidden_size:
            raise ValueError(f"{where}: this state was made for a rule of hidden size "
                             f"{state.buffers['h'].shape[1]}, this optimizer's has "
                             f"{self.rule.hidden_size}")
        theta_new, new = self.rule(theta, grad, loss, MetaLSTMState(**state.buffers))
        return theta_new, new._asdict()


class Turtle(_StepSizeOptimizer):
    """TURTLE (SPEC §3) over ``learnedopt.ops.turtle_step``: m_t = beta m_{t-1} + (1 - beta) g_t
    (m_0 = g_0), theta <- theta + alpha * g_phi([g_t, m_t, t]), with t the state's step count.

    ``rule``: a :class:`~learnedopt.rules.TurtleRule` (default: fresh, the paper's 3 -> 20x5 -> 1),
    used, not copied. ``alpha``: the per-coordinate step sizes, a flat Parameter over ``params``
    in the dict's order (the ``turtle`` algorithm's layout); None draws U(0, 1) (SPEC), or give a
    number, a flat tensor or a dict shaped like ``params`` (copied). ``grad_clamp``: clamp g to
    +-grad_clamp first (None: the rule's own setting; the TURTLE algorithm clamps at 10 when
    T > 1). ``max_t``: the largest t fed to g_phi (None: no cap).
    """

    def __init__(self, params: Mapping[str, Tensor], rule: TurtleRule | None = None,
                 alpha: Any = None, *, grad_clamp: float | None = None, max_t: int | None = None,
                 learn_alpha: bool = True):
        super().__init__()
        where = "learnedopt.functional.Turtle"
        self._init_alpha(where, params, alpha,
                         lambda n, dtype, device: torch.rand(n, dtype=dtype, device=device), learn_alpha)
        if rule is None:
            rule = TurtleRule().to(dtype=self.alpha.dtype, device=self.alpha.device)
        if not isinstance(rule, TurtleRule):
            raise TypeError(f"{where}: rule must be a learnedopt.rules.TurtleRule, got "
                            f"{type(rule).__name__}")
        if grad_clamp is not None and (isinstance(grad_clamp, bool) or
                                       not isinstance(grad_clamp, numbers.Real) or not grad_clamp > 0):
            raise ValueError(f"{where}: grad_clamp must be > 0 (math.inf: no clamp) or None, "
                             f"got {grad_clamp!r}")
        if max_t is not None and (isinstance(max_t, bool) or not isinstance(max_t, int) or max_t < 0):
            raise ValueError(f"{where}: max_t must be an int >= 0 or None, got {max_t!r}")
        self.rule = rule
        self.grad_clamp = None if grad_clamp is None else float(grad_clamp)
        self.max_t = max_t

    def _init_buffers(self, n, dtype, device):
        return {"m": torch.zeros(n, dtype=dtype, device=device)}  # unused at t = 0 (m_0 = g_0)

    def _rule_step(self, theta, grad, loss, state, where):
        t = state.step if self.max_t is None else min(state.step, self.max_t)
        theta_new, m = self.rule(theta, grad, state.buffers["m"], t, self.alpha,
                                 grad_clamp=self.grad_clamp)
        return theta_new, {"m": m}


def from_pretrained(path_or_name: Any, params: Mapping[str, Tensor], *, trainable: bool = True,
                    **overrides: Any) -> FunctionalOptimizer:
    """The functional optimizer of a meta-learned rule, ready to meta-train further.

    ``path_or_name``: a rule file, a meta-training checkpoint or the name of a shipped rule (as
    :func:`learnedopt.optim.pretrained.load_rule` reads them). The kind of rule picks the class:
    ``metalstm`` -> :class:`MetaLSTM`, ``turtle`` -> :class:`Turtle`, ``metasgd`` ->
    :class:`MetaSGD`. The rule's weights are moved to ``params``' dtype and device and, with
    ``trainable`` (default), require grad. Step sizes learned per coordinate belong to the
    meta-training learner, so every coordinate of ``params`` starts at the median of the learned
    ones (``alpha="mean"``, ``"median"`` or any value ``Turtle``/``MetaSGD`` accept overrides it);
    a TURTLE rule's ``max_t`` comes from the file. ``overrides``: other constructor arguments.
    """
    rule_file = pretrained.load_rule(path_or_name)
    _, dtype, device = _read_params("learnedopt.functional.from_pretrained", params)
    kind = rule_file["kind"]
    if kind in ("turtle", "metasgd"):
        alpha = overrides.pop("alpha", "median")
        overrides["alpha"] = pretrained.alpha_init(rule_file, alpha) if isinstance(alpha, str) else alpha
        overrides.setdefault("learn_alpha", trainable)
    if kind == "metasgd":
        return MetaSGD(params, **overrides)
    rule = pretrained.build_rule(rule_file, str(path_or_name)).to(dtype=dtype, device=device)
    rule.requires_grad_(trainable)
    if kind == "metalstm":
        return MetaLSTM(rule, **overrides)
    if rule_file.get("max_t") is not None:
        overrides.setdefault("max_t", int(rule_file["max_t"]))
    return Turtle(params, rule, **overrides)
