"""``optimizer.state``: torch.optim's per-parameter state, as live views of the flat buffers.

torch.optim optimizers keep ``state[p]`` as a dict of tensors updated in place. The learned
optimizers keep one flat buffer per state name and param group instead (a step is one fused op
over it), and a step *replaces* those buffers by the op's fresh outputs (swapping saves a copy
per step). So ``state[p]`` cannot be a dict filled once: it is a mapping that, on every access,
looks up the group's current buffer and returns parameter ``p``'s view of it. What that gives:

- ``opt.state[p]["m"]`` is the state after the last step, shaped ``p.shape`` (+ trailing dims,
  e.g. the LSTM's hidden size for ``h`` and ``c``); ``"step"`` is the group's step count.
- In-place edits of a view (``opt.state[p]["m"].zero_()``) and assignments
  (``opt.state[p]["m"] = t``, copied into the buffer) act on the next step.
- A tensor taken out of it is a view of the buffer *of that moment*: after the next step it still
  holds the old values (the buffer was replaced), so read it again after each step.
- Entries cannot be removed and ``"step"`` cannot be changed (it is shared by the whole group:
  use ``load_state_dict``; writing back its current value is allowed); parameters the optimizer
  does not hold are a ``KeyError``.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:  # only for annotations: _flat imports this module
    from learnedopt.optim._flat import FlatGroup, FlatOptimizer

STEP = "step"


class ParamState(MutableMapping):
    """The state of parameter ``k`` of ``flat``: its views of the group's current buffers."""

    def __init__(self, flat: FlatGroup, k: int):
        self._flat, self._k = flat, k

    def _names(self) -> list[str]:
        return [*self._flat.state, STEP]

    def __getitem__(self, name: str) -> Tensor:
        if name == STEP:
            return torch.tensor(float(self._flat.step))
        if name not in self._flat.state:
            raise KeyError(self._unknown(name))
        return self._flat.view(self._flat.state[name], self._k)

    def __setitem__(self, name: str, value: Any) -> None:
        where = f"{self._flat.where}: state of parameter {self._k}"
        if name == STEP:
            if _same_number(value, self._flat.step):
                return  # writing back what was read (state[p] = dict(state[p])) changes nothing
            raise TypeError(f"{where}: 'step' is the step count of the whole param group (TURTLE's "
                            f"t); it cannot be set for one parameter (restore it with "
                            f"load_state_dict)")
        if name not in self._flat.state:
            raise KeyError(self._unknown(name))
        view = self[name]
        if not isinstance(value, Tensor) or tuple(value.shape) != tuple(view.shape):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{where}: {name!r} must be a tensor of shape {tuple(view.shape)}, "
                             f"got {got}")
        view.copy_(value)  # into the group's buffer: the next step reads it

    def __delitem__(self, name: str) -> None:
        raise TypeError(f"{self._flat.where}: state {name!r} of parameter {self._k} cannot be "
                        f"removed (every coordinate of the group has it)")

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._flat.state) + 1

    def _unknown(self, name: Any) -> str:
        return f"{self._flat.where}: no state {name!r} (this optimizer keeps {self._names()})"

    def __repr__(self) -> str:
        return repr(dict(self))


class OptimizerState(MutableMapping):
    """``optimizer.state``: parameter -> :class:`ParamState`, for every parameter of every group."""

    def __init__(self, optimizer: FlatOptimizer):
        self._optimizer = optimizer
        self._index: dict[int, tuple[FlatGroup, int]] = {}

    def _locate(self, param: Any) -> tuple[FlatGroup, int] | None:
        flats = self._optimizer._flat
        if sum(len(f.params) for f in flats) != len(self._index):  # a group was added
            self._index = {id(p): (f, k) for f in flats for k, p in enumerate(f.params)}
        hit = self._index.get(id(param))
        # id() alone could name a dead object's successor; the group holds its parameters alive,
        # so an identity check settles it.
        return hit if hit is not None and hit[0].params[hit[1]] is param else None

    def __getitem__(self, param: Any) -> ParamState:
        hit = self._locate(param)
        if hit is None:
            raise KeyError(f"{type(self._optimizer).__name__}.state: "
                           f"{_describe(param)} is not a parameter of this optimizer")
        return ParamState(*hit)

    def __setitem__(self, param: Any, entries: Any) -> None:
        """``state[p] = {...}`` sets the named entries (copied in); names it omits keep their value."""
        target = self[param]
        if not isinstance(entries, (dict, MutableMapping)):
            raise TypeError(f"{type(self._optimizer).__name__}.state[p] must be set to a dict of "
                            f"tensors, got {type(entries).__name__}")
        for name, value in dict(entries).items():
            target[name] = value

    def __delitem__(self, param: Any) -> None:
        raise TypeError(f"{type(self._optimizer).__name__}.state: the state of a parameter cannot "
                        f"be removed (its group's buffers hold every coordinate)")

    def __iter__(self) -> Iterator[Tensor]:
        return (p for f in self._optimizer._flat for p in f.params)

    def __len__(self) -> int:
        return sum(len(f.params) for f in self._optimizer._flat)

    def __contains__(self, param: Any) -> bool:
        return self._locate(param) is not None

    def __repr__(self) -> str:
        return f"{type(self._optimizer).__name__}.state ({len(self)} parameters)"


def _same_number(value: Any, number: int) -> bool:
    try:
        return float(value) == number  # a 1-element tensor or a Python number
    except (TypeError, ValueError, RuntimeError):
        return False


def _describe(param: Any) -> str:
    if isinstance(param, Tensor):
        return f"the tensor of shape {tuple(param.shape)}"
    return f"{type(param).__name__} {param!r}"
