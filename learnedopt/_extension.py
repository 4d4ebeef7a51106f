"""Loads the compiled extension ``learnedopt._C`` and says which kernels it holds.

The extension registers the ops in the ``learnedopt`` namespace (csrc/schema.cpp) with a CPU
implementation always and a CUDA one when it was built with CUDA. Importing learnedopt never fails
because of it: without the extension every op runs on the pure-PyTorch reference.
"""

from __future__ import annotations

import torch

import importlib

try:
    _C = importlib.import_module("learnedopt._C")  # loading it registers the ops
    LOAD_ERROR: str | None = None
except ModuleNotFoundError:
    _C = None
    LOAD_ERROR = "learnedopt._C is not built (pip install --no-build-isolation -e .)"
except ImportError as exc:  # built, but against another torch or with missing symbols
    _C = None
    LOAD_ERROR = f"learnedopt._C failed to load: {exc}"


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``learnedopt::op`` has a kernel registered for ``dispatch_key`` ("CPU", "CUDA")."""
    if _C is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"learnedopt::{op}", dispatch_key)


OPS = ("preprocess", "meta_lstm_step", "turtle_step")
DEVICE_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


# Read once: kernels are registered when _C loads and never change afterwards. A plain dict also
# keeps the per-call lookup traceable by torch.compile.
KERNELS: dict[tuple[str, str], bool] = {
    (op, device): has_kernel(op, key) for op in OPS for device, key in DEVICE_KEYS.items()}


def compiled_devices(op: str | None = None) -> list[str]:
    """Device types for which ``op`` (or, without one, every op) has a fused kernel in this build."""
    wanted = OPS if op is None else (op,)
    return [d for d in DEVICE_KEYS if all(KERNELS[(o, d)] for o in wanted)]
