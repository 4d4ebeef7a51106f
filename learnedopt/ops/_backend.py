"""The explicit, queryable choice between the fused kernels and the pure-PyTorch reference.

``"auto"`` (the default) runs the fused kernel where one is compiled for the tensor's device and the
reference elsewhere; ``"fused"`` insists on the kernels and raises where there are none;
``"reference"`` always runs :mod:`learnedopt.reference`. ``LEARNEDOPT_BACKEND`` sets the initial choice.
"""

from __future__ import annotations

import contextlib
import os

import torch

from learnedopt import _extension

BACKENDS = ("auto", "fused", "reference")
# Process-wide (a plain global, so torch.compile can guard on it).
_backend = os.environ.get("LEARNEDOPT_BACKEND", "auto")
if _backend not in BACKENDS:
    raise ValueError(f"LEARNEDOPT_BACKEND={_backend!r}: expected one of {BACKENDS}")


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown learnedopt backend {name!r}: expected one of {BACKENDS}")
    return name


def set_backend(name: str) -> None:
    """Choose "auto", "fused" or "reference" for every op called afterwards."""
    global _backend
    _backend = _check_name(name)


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def use_backend(name: str):
    """``with use_backend("reference"): ...`` runs the block on the given backend."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def available(device: str | torch.device = "cpu", op: str | None = None) -> bool:
    """Whether the fused kernel of ``op`` (default: of every op) can run on ``device`` in this build."""
    device_type = torch.device(device).type if not isinstance(device, torch.device) else device.type
    if op is None:
        return device_type in _extension.compiled_devices()
    return _extension.KERNELS.get((op, device_type), False)


def use_fused(device: torch.device, op: str) -> bool:
    """Decide, for one call of ``op`` on ``device``, whether the fused kernel runs."""
    name = get_backend()
    if name == "reference":
        return False
    if available(device, op):
        return True
    if name == "fused":
        why = (f"the extension failed to load: {_extension.LOAD_ERROR}" if _extension._C is None
               else f"this build has its kernels for {_extension.compiled_devices(op) or 'no device'}")
        raise RuntimeError(
            f"learnedopt.ops.{op}: backend 'fused' was requested but no fused kernel exists for "
            f"device '{device.type}' ({why}). Use set_backend('auto') or 'reference'.")
    return False


def describe() -> str:
    """One line for logs and result files: the backend choice and the compiled kernels."""
    if _extension._C is None:
        return f"backend={get_backend()}; fused kernels: none ({_extension.LOAD_ERROR})"
    per_op = "; ".join(f"{op}: {', '.join(_extension.compiled_devices(op)) or 'none'}"
                       for op in _extension.OPS)
    return f"backend={get_backend()}; fused kernels: {per_op}"
