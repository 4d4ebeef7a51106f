"""The machinery every learned optimizer shares: one param group = one flat buffer.

At construction each group's parameters are copied into ONE contiguous buffer and re-pointed to
views of it (``p.data = flat[a:b].view_as(p)``); their gradients become views of one flat gradient
buffer, so backward accumulates straight into it. A step is then one call of a fused op on the
flat buffers, whatever the number of tensors, with no host synchronisation.

The host-side work per step is two C-level scans over the group's parameters (is ``p.grad`` still
our view? is ``p`` still backed by our buffer?), tens of nanoseconds per tensor, launching nothing.
Only when a gradient was replaced (``model.zero_grad()``, ``zero_grad(set_to_none=True)``, a
manual ``p.grad = ...``) does a slower path copy it into the buffer (one multi-tensor copy) and
re-attach the view.
"""

from __future__ import annotations

import itertools
import math
import numbers
import operator
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from learnedopt.optim import pretrained
from learnedopt.optim._state import OptimizerState

SUPPORTED_DTYPES = (torch.float32, torch.float64)
_grad_of = operator.attrgetter("grad")


class FlatGroup:
    """One param group's parameters, gradients and per-coordinate state as flat 1-D buffers.

    ``param`` and ``grad`` are updated in place (the parameters are views of them); ``state``
    maps a state name to a buffer of shape (n,) + trailing dims, which a step may replace by new
    tensors (the ops return fresh outputs, and swapping saves a copy).
    """

    def __init__(self, params: list[Tensor], where: str):
        self.where = where  # e.g. "TurtleOptimizer param group 1", for error messages
        _check_params(params, where)
        self.params = params
        self.shapes = [p.shape for p in params]
        self.bounds = list(itertools.accumulate([0] + [p.numel() for p in params]))
        first = params[0]
        self.dtype, self.device = first.dtype, first.device
        with torch.no_grad():
            self.param = torch.cat([p.detach().reshape(-1) for p in params])
        for p, view in zip(params, self.views(self.param)):
            p.data = view
        self.data_ptrs = [p.data_ptr() for p in params]
        self.grad = torch.zeros_like(self.param)
        self.grad_views = self.views(self.grad)
        # What each p.grad is expected to be at the next step: our view, or None for a parameter
        # that has no gradient (it is skipped). A gradient the user made before construction is
        # adopted; parameters without one stay without until backward gives them one.
        self.expected: list[Tensor | None] = [None] * len(params)
        self.mask: Tensor | None = None
        self.has_any_gradient = False
        self._rebuild_mask()
        self.adopt_gradients()
        self.state: dict[str, Tensor] = {}
        self.step = 0  # steps this group has taken (TURTLE's t)

    @property
    def numel(self) -> int:
        return self.bounds[-1]

    def views(self, flat: Tensor) -> list[Tensor]:
        """Per-parameter views of a flat per-coordinate buffer (trailing dims are kept)."""
        return [self.view(flat, k) for k in range(len(self.shapes))]

    def view(self, flat: Tensor, k: int) -> Tensor:
        """Parameter ``k``'s view of a flat per-coordinate buffer, shaped ``p.shape + trailing``
        (a 0-dim parameter, such as a learnable temperature, gets a 0-dim view)."""
        # The shape goes in as one tuple: view(*()) would be view() with no size at all.
        return flat[self.bounds[k]:self.bounds[k + 1]].view((*self.shapes[k], *flat.shape[1:]))

    def new_state(self, *trailing: int, fill: float = 0.0, dtype: torch.dtype | None = None) -> Tensor:
        """A per-coordinate state buffer, in the parameters' dtype unless ``dtype`` says otherwise
        (bfloat16 storage of the state an optimizer allows to be stored reduced)."""
        return torch.full((self.numel, *trailing), fill, dtype=dtype or self.dtype,
                          device=self.device)

    # -- gradients ---------------------------------------------------------------------------

    def adopt_gradients(self) -> bool:
        """Bring every ``p.grad`` into the flat buffer; returns False if no parameter has one.

        Fast path: every gradient is still the view we attached (or still None). Otherwise copy
        the new gradients into their slots with one multi-tensor copy, re-attach the views, zero
        the slots of parameters that lost their gradient, and rebuild the skip mask.
        """
        self.check_storage()
        grads = list(map(_grad_of, self.params))
        if all(map(operator.is_, grads, self.expected)):
            return self.has_any_gradient
        sources, targets, dropped = [], [], []
        for k, (p, g) in enumerate(zip(self.params, grads)):
            if g is self.expected[k]:
                continue
            view = self.grad_views[k]
            if g is None:
                dropped.append(view)
                self.expected[k] = None
                continue
            if g.layout != torch.strided:
                raise TypeError(
                    f"{self.where}: parameter {k} (shape {tuple(p.shape)}) has a {g.layout} "
                    f"gradient; learned optimizers need dense gradients (use "
                    f"nn.Embedding(sparse=False), or densify with .to_dense())")
            if g is not view:
                sources.append(g)
                targets.append(view)
                p.grad = view
            self.expected[k] = view
        if targets:
            torch._foreach_copy_(targets, sources)
        if dropped:
            torch._foreach_zero_(dropped)
        self._rebuild_mask()
        return self.has_any_gradient

    def zero_grad(self, set_to_none: bool) -> None:
        """Zero the gradients: in place in the flat buffer (views stay attached), or drop them."""
        self.check_storage()
        if set_to_none:
            for p in self.params:
                p.grad = None
            self.expected = [None] * len(self.params)
        else:
            grads = list(map(_grad_of, self.params))
            if not all(map(operator.is_, grads, self.expected)):
                # Like torch.optim: a gradient that is None stays None; any other becomes zero,
                # which re-attaching the (zeroed) view achieves without touching the old tensor.
                for k, (p, g) in enumerate(zip(self.params, grads)):
                    if g is None:
                        self.expected[k] = None
                    else:
                        if g is not self.grad_views[k]:
                            p.grad = self.grad_views[k]
                        self.expected[k] = self.grad_views[k]
        self.grad.zero_()
        self._rebuild_mask()

    def _rebuild_mask(self) -> None:
        """Per-coordinate mask of the parameters that have a gradient (None: all have one)."""
        active = tuple(e is not None for e in self.expected)
        if active == getattr(self, "_mask_key", None):
            return  # unchanged: keep the mask already on the device (no new host-to-device copy)
        self._mask_key = active
        self.has_any_gradient = any(active)
        if all(active):
            self.mask = None
            return
        # Filled on the device, one run of consecutive active parameters at a time: a host-built
        # mask would need a host-to-device copy, which synchronises with pageable memory.
        self.mask = torch.zeros(self.numel, dtype=torch.bool, device=self.device)
        k = 0
        while k < len(active):
            if not active[k]:
                k += 1
                continue
            end = k
            while end < len(active) and active[end]:
                end += 1
            self.mask[self.bounds[k]:self.bounds[end]] = True
            k = end

    def check_storage(self) -> None:
        if list(map(Tensor.data_ptr, self.params)) != self.data_ptrs:
            moved = next(k for k, (p, ptr) in enumerate(zip(self.params, self.data_ptrs))
                         if p.data_ptr() != ptr)
            raise RuntimeError(
                f"{self.where}: parameter {moved} (shape {tuple(self.params[moved].shape)}) no "
                f"longer lives in the optimizer's flat buffer: its .data was replaced after the "
                f"optimizer was built (model.to(...), .half(), p.data = ...). Move or cast the "
                f"model first, then construct the optimizer.")

    # -- masked updates ------------------------------------------------------------------------

    def keep_skipped(self, new: Tensor, old: Tensor) -> Tensor:
        """The next state buffer: ``new`` where the parameter has a gradient, ``old`` where it is
        skipped. Never an alias of the parameter or gradient buffer, which change in place: the
        reference TURTLE step, for one, returns the gradient itself as m_0 = g_0."""
        if self.mask is not None:
            return torch.where(self.mask.view(-1, *([1] * (new.dim() - 1))), new, old)
        storage = new.untyped_storage().data_ptr()
        if storage in (self.grad.untyped_storage().data_ptr(),
                       self.param.untyped_storage().data_ptr()):
            return new.clone()
        return new

    def apply_update(self, theta_new: Tensor, lr: float) -> None:
        """theta <- theta + lr * (theta_new - theta), in place; skipped parameters keep theta."""
        self.param.lerp_(self.keep_skipped(theta_new, self.param), lr)


def _check_params(params: list[Tensor], where: str) -> None:
    if not params:
        raise ValueError(f"{where}: the group has no parameters")
    first = params[0]
    for k, p in enumerate(params):
        if p.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{where}: parameter {k} (shape {tuple(p.shape)}) has dtype {p.dtype}; "
                            f"learned optimizers run in float32 or float64 only (half, bfloat16 "
                            f"and complex are refused: cast the model with .float())")
        if p.layout != torch.strided:
            raise TypeError(f"{where}: parameter {k} is a {p.layout} tensor; only dense "
                            f"parameters are supported")
        if p.device != first.device or p.dtype != first.dtype:
            raise ValueError(f"{where}: parameter {k} is {p.dtype} on {p.device} but parameter 0 "
                             f"is {first.dtype} on {first.device}; a group shares one flat "
                             f"buffer, so put tensors of another dtype/device in their own group")


def check_lr(lr: Any, where: str) -> float:
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(f"{where}: lr must be a Python number, got {type(lr).__name__}")
    lr = float(lr)
    if not (lr >= 0.0 and lr != float("inf")):
        raise ValueError(f"{where}: lr must be finite and >= 0, got {lr}")
    return lr


def check_state_dtype(state_dtype: Any, owner: str, names: tuple[str, ...]) -> torch.dtype | None:
    """``state_dtype``: None (the state in the parameters' dtype) or torch.bfloat16."""
    if state_dtype is None or state_dtype is torch.bfloat16:
        return state_dtype
    raise ValueError(f"{owner}: state_dtype must be None (the state {', '.join(names)} in the "
                     f"parameters' dtype) or torch.bfloat16 (stored in bfloat16, the math in the "
                     f"parameters' dtype), got {state_dtype!r}")


def check_alpha(alpha: Any, where: str) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
        raise ValueError(f"{where}: alpha (the initial per-coordinate step size) must be a finite "
                         f"number, got {alpha!r}")
    return float(alpha)


class FlatOptimizer(torch.optim.Optimizer):
    """Base of the learned optimizers: flat buffers per group, torch.optim-compatible API.

    Subclasses name the rule kind they load (``KIND``), fill a new group's per-coordinate state
    in :meth:`_init_state`, compute a group's step in :meth:`_step_group`, and say which
    constructor arguments a rule file implies in :meth:`_kwargs_from_rule`.
    """

    KIND: str = ""
    # State buffers a step overwrites in place (rather than replacing them by new tensors):
    # state_dict copies them to stay a snapshot.
    IN_PLACE_STATE: tuple[str, ...] = ()

    def __init__(self, params: Iterable, defaults: dict[str, Any]):
        self._flat: list[FlatGroup] = []
        super().__init__(params, defaults)
        # torch.optim's per-parameter state, as views of the flat buffers (replaces the empty
        # defaultdict torch.optim.Optimizer.__init__ made): opt.state[p]["m"], ...
        self.state = OptimizerState(self)

    def _where(self, index: int) -> str:
        return f"{type(self).__name__} param group {index}"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{self._where(len(self.param_groups))}: a parameter appears twice in "
                             f"the group (tied weights: pass each tensor once)")
        super().add_param_group({**param_group, "params": params})
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        where = self._where(index)
        try:
            self._check_group(group, where)
            flat = FlatGroup(group["params"], where)
        except Exception:
            self.param_groups.pop()
            raise
        self._flat.append(flat)
        self._init_state(flat, group)

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        group["lr"] = check_lr(group["lr"], where)

    def _init_state(self, flat: FlatGroup, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _step_group(self, flat: FlatGroup, group: dict[str, Any], loss: Tensor | None) -> None:
        raise NotImplementedError

    def _needs_loss(self) -> bool:
        return False

    @classmethod
    def _kwargs_from_rule(cls, rule_file: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path_or_name: Any, params: Iterable, **overrides: Any):
        """Build the optimizer from a meta-learned rule for the parameters ``params``.

        ``path_or_name``: a rule file ("learnedopt-rule/1", see :mod:`learnedopt.optim.pretrained`),
        a meta-training checkpoint ("learnedopt-checkpoint/1": only its transferable part is
        used), or the name of a rule shipped in ``learnedopt/pretrained/``. ``overrides`` are
        constructor arguments (``lr``, ``alpha``, ...) that replace what the file implies;
        ``alpha`` may also be "mean" or "median" of the learned step sizes. Files are loaded with
        ``torch.load(weights_only=True)`` and validated whole before anything is built.

        ``params`` may be ``model.named_parameters()`` (or param groups of (name, tensor) pairs):
        for the model the rule was meta-trained on, TURTLE and Meta-SGD then start each parameter
        at its own learned step sizes, found by name (an ``alpha`` override turns that off); for
        any other model every coordinate starts at one scalar; a partial match is an error
        (:func:`learnedopt.optim.pretrained.alpha_for_parameters`).
        """
        rule_file = pretrained.load_rule(path_or_name)
        if rule_file["kind"] != cls.KIND:
            owner = {"metalstm": "LSTMOptimizer", "turtle": "TurtleOptimizer",
                     "metasgd": "MetaSGD"}[rule_file["kind"]]
            raise pretrained.PretrainedError(
                f"{cls.__name__}.from_pretrained: {str(path_or_name)!r} holds a "
                f"{rule_file['kind']!r} rule; load it with {owner}.from_pretrained")
        kwargs = cls._kwargs_from_rule(rule_file)
        if isinstance(overrides.get("alpha"), str):
            overrides["alpha"] = pretrained.alpha_init(rule_file, overrides["alpha"])
        kwargs.update(overrides)
        optimizer = cls(params, **kwargs)
        if "alpha" not in overrides:
            optimizer._use_learned_alpha(rule_file, str(path_or_name))
        return optimizer

    def _use_learned_alpha(self, rule_file: dict[str, Any], source: str) -> None:
        """Copy the rule's per-parameter step sizes into the ``alpha`` state of the parameters
        given by name, when they are the meta-training model's (else keep the scalar start)."""
        if not all("alpha" in flat.state for flat in self._flat):
            return  # this optimizer has no per-coordinate step size (the LSTM)
        named = [(name, p) for group in self.param_groups
                 for name, p in zip(group.get("param_names", ()), group["params"])]
        by_name = dict(named)
        for name, values in pretrained.alpha_for_parameters(rule_file, named, source).items():
            param = by_name[name]
            self.state[param]["alpha"] = values.to(device=param.device, dtype=param.dtype)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero every gradient in place in the flat gradient buffer (``p.grad`` stays a view of it).

        ``set_to_none=True`` drops the gradients as torch.optim does; the next step then copies
        the fresh ones back into the buffer (slower, still correct). The default differs from
        torch.optim's on purpose: keeping the views is what makes a step one kernel launch.
        """
        for flat in self._flat:
            flat.zero_grad(set_to_none)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, loss: Tensor | float | None = None):
        """One update of every parameter that has a gradient.

        ``closure`` re-evaluates the model and returns the loss (as in torch.optim); ``loss`` gives
        it directly (it wins over the closure's value). Only the meta-learner LSTM reads the loss.
        Returns the loss, as torch.optim optimizers do.
        """
        if closure is not None:
            with torch.enable_grad():
                closure_loss = closure()
            if loss is None:
                loss = closure_loss
        loss_tensor = None
        if self._needs_loss():
            if loss is None:
                raise ValueError(
                    f"{type(self).__name__}.step: this rule reads the loss; pass it as "
                    f"step(loss=loss) or give a closure that returns it")
            loss_tensor = _as_loss(loss, type(self).__name__)
        for index, (flat, group) in enumerate(zip(self._flat, self.param_groups)):
            group["lr"] = check_lr(group["lr"], self._where(index))
            if not flat.adopt_gradients():
                continue
            group_loss = None
            if isinstance(loss_tensor, float):  # made on the device: no host-to-device copy
                group_loss = flat.param.new_full((), loss_tensor)
            elif loss_tensor is not None:
                group_loss = loss_tensor.to(device=flat.device, dtype=flat.dtype)
            self._step_group(flat, group, group_loss)
            flat.step += 1
        return loss

    # -- state_dict ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch.optim layout: per-parameter state (views of the flat buffers, shaped like the
        parameter plus trailing dims) keyed by the parameter's index, and the group options.

        The buffers a step produces are new tensors, and those it writes in place
        (``IN_PLACE_STATE``) are copied here, so a state_dict is a snapshot: later steps do not
        change it (``alpha`` excepted, which no step changes anyway).
        """
        state: dict[int, dict[str, Tensor]] = {}
        groups = []
        index = 0
        for flat, group in zip(self._flat, self.param_groups):
            per_name = {name: flat.views(buffer.clone() if name in self.IN_PLACE_STATE else buffer)
                        for name, buffer in flat.state.items()}
            step = torch.tensor(float(flat.step))
            ids = []
            for k in range(len(flat.params)):
                entry = {name: views[k] for name, views in per_name.items()}
                entry["step"] = step
                state[index] = entry
                ids.append(index)
                index += 1
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved, into this optimizer's flat buffers (copied, cast
        to each buffer's dtype — the group's, or bfloat16 for state stored reduced — and device);
        group options (lr, ...) are taken from the saved dict."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and "
                             f"'param_groups' (from {name}.state_dict())")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the saved state has {len(saved_groups)} "
                             f"param groups, this optimizer {len(self.param_groups)}")
        saved_state = state_dict["state"]
        new_state: list[tuple[dict[str, Tensor], int]] = []
        for g, (flat, saved) in enumerate(zip(self._flat, saved_groups)):
            where = f"{name}.load_state_dict: param group {g}"
            ids = saved["params"]
            if len(ids) != len(flat.params):
                raise ValueError(f"{where} has {len(ids)} parameters saved, {len(flat.params)} here")
            buffers: dict[str, list[Tensor]] = {s: [] for s in flat.state}
            steps = set()
            for k, (i, shape) in enumerate(zip(ids, flat.shapes)):
                entry = saved_state.get(i, saved_state.get(str(i)))
                if entry is None:
                    raise ValueError(f"{where}: no state saved for parameter {k}")
                for s, trailing in flat_state_shapes(flat).items():
                    if s not in entry:
                        raise ValueError(f"{where}: parameter {k} lacks state {s!r} "
                                         f"(saved by another optimizer class?)")
                    t = entry[s]
                    want = (*shape, *trailing)
                    if not isinstance(t, Tensor) or tuple(t.shape) != want:
                        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                        raise ValueError(f"{where}: state {s!r} of parameter {k} has shape "
                                         f"{got}, expected {want}")
                    buffers[s].append(t.reshape(-1, *trailing))
                if "step" not in entry:
                    raise ValueError(f"{where}: parameter {k} lacks 'step'")
                steps.add(int(entry["step"]))
            if len(steps) != 1:
                raise ValueError(f"{where}: its parameters were saved at different steps {steps}")
            # Each buffer keeps its own dtype: bfloat16 state (state_dtype) stays bfloat16.
            new_state.append(({s: torch.cat(parts).to(device=flat.device, dtype=flat.state[s].dtype)
                               for s, parts in buffers.items()}, steps.pop()))
        # Everything validated: now commit, so a bad dict leaves the optimizer untouched.
        for flat, group, saved, (buffers, step) in zip(self._flat, self.param_groups, saved_groups,
                                                     new_state):
            flat.state = buffers
            flat.step = step
            for key, value in saved.items():
                if key != "params":
                    group[key] = value


def flat_state_shapes(flat: FlatGroup) -> dict[str, tuple[int, ...]]:
    """name -> trailing dims of each per-coordinate state buffer of ``flat``."""
    return {name: tuple(buffer.shape[1:]) for name, buffer in flat.state.items()}


def _as_loss(loss: Any, owner: str) -> Tensor | float:
    """The loss as a detached 0-d tensor, without reading its value (no host synchronisation),
    or as a float when it was given as a number."""
    if isinstance(loss, Tensor):
        if loss.numel() != 1:
            raise ValueError(f"{owner}.step: the loss must be a scalar, got shape {tuple(loss.shape)}")
        if not loss.is_floating_point():
            raise TypeError(f"{owner}.step: the loss must be a floating-point tensor, got {loss.dtype}")
        return loss.detach().reshape(())
    if isinstance(loss, numbers.Real) and not isinstance(loss, bool):
        return float(loss)
    raise TypeError(f"{owner}.step: the loss must be a tensor or a number, got {type(loss).__name__}")
