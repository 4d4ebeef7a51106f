"""Argument checks shared by every op wrapper, so that both backends refuse bad input the same way.

Each message names the op, the argument and what was expected. The C++ glue repeats the essential
checks (a direct ``torch.ops.learnedopt`` call must not crash either), but this is where a user
normally meets them.
"""

from __future__ import annotations

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def check_tensor(op: str, name: str, t: object, like: Tensor | None = None,
                 shape: tuple[int, ...] | None = None) -> Tensor:
    """``t`` must be a float32/float64 tensor, on ``like``'s device and of its dtype, of ``shape``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"learnedopt.ops.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"learnedopt.ops.{op}: {name} has dtype {t.dtype}; the ops compute in float32 or "
            f"float64 only (half and bfloat16 are refused: cast with .float())")
    if like is not None:
        if t.device != like.device:
            raise ValueError(f"learnedopt.ops.{op}: {name} is on {t.device} but the other inputs "
                             f"are on {like.device}")
        if t.dtype != like.dtype:
            raise TypeError(f"learnedopt.ops.{op}: {name} has dtype {t.dtype} but the other inputs "
                            f"have {like.dtype}")
    if t.is_sparse:
        raise TypeError(f"learnedopt.ops.{op}: {name} is a sparse tensor; only dense tensors are supported")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"learnedopt.ops.{op}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t


def check_vector(op: str, name: str, t: object, like: Tensor | None = None) -> Tensor:
    """A 1-D per-coordinate vector (theta, grad, ...)."""
    t = check_tensor(op, name, t, like)
    if t.dim() != 1:
        raise ValueError(f"learnedopt.ops.{op}: {name} must be 1-D (one entry per coordinate; "
                         f"flatten the parameters first), got shape {tuple(t.shape)}")
    return t
