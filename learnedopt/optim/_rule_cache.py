"""A rule's weights, converted once per (device, dtype) of the param groups that use them."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


class RuleTensors:
    """A rule's tensors as detached copies on a group's device and dtype.

    Converting every step would add a copy per weight per step; caching them instead must not
    serve stale values, so the cache is keyed on the weights' version counters too (an in-place
    change such as ``rule.load_state_dict`` bumps them).
    """

    def __init__(self, sources: Callable[[], list[Tensor]]):
        self._sources = sources  # returns the rule's tensors in the order the op takes them
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[tuple, list[Tensor]]] = {}

    def get(self, device: torch.device, dtype: torch.dtype) -> list[Tensor]:
        sources = self._sources()
        versions = tuple((id(t), t._version) for t in sources)
        hit = self._cache.get((device, dtype))
        if hit is not None and hit[0] == versions:
            return hit[1]
        converted = [t.detach().to(device=device, dtype=dtype) for t in sources]
        self._cache[(device, dtype)] = (versions, converted)
        return converted
