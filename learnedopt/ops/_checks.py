"""Argument checks shared by every op wrapper, so that both backends refuse bad input the same way.

Each message names the op, the argument and what was expected. The same checks hold at the op
boundary, since ``torch.ops.learnedopt`` is public: the fake kernels (learnedopt/ops/*.py) call
these functions, and the C++ glue repeats them (csrc/common/*glue.h) for the CPU and CUDA
kernels; the reference (learnedopt/reference.py) refuses bad preprocessing options through
:func:`check_preprocess_options` too. The wrappers are where a user normally meets them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.float64)

# The valid range of the preprocessing options (csrc/common/preprocess_math.h enforces the same at
# the C++ op boundary). Within it every finite x has finite outputs and a finite derivative:
#   p in [p_min, p_max] (per dtype, preprocess_p_range): e^p and e^-p are normal numbers of the
#     dtype, so the small branch's e^p·x cannot overflow and the threshold e^-p is no subnormal;
#     and log(|x| + log_eps)/p stays finite for |x| up to the dtype's max.
#   log_eps in [0, LOG_EPS_MAX]: an epsilon (1e-8 in the Ravi/Larochelle port); the bound keeps
#     |x| + log_eps finite for every finite x.
LOG_EPS_MAX = 1.0


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


def check_task_loss(op: str, loss: Tensor, n: int) -> int:
    """meta_lstm_step's loss: 0-d (one loss for all n coordinates) or (B,) with B >= 1 dividing n,
    task b owning coordinates [b*n/B, (b+1)*n/B). Returns B (1 for a 0-d loss)."""
    if loss.dim() == 0:
        return 1
    if loss.dim() != 1:
        raise ValueError(f"learnedopt.ops.{op}: loss must be 0-d (one loss for all coordinates) or "
                         f"of shape (B,) (one loss per task), got shape {tuple(loss.shape)}")
    tasks = loss.shape[0]
    if tasks == 0:
        raise ValueError(f"learnedopt.ops.{op}: a per-task loss needs at least one task, got shape "
                         f"{tuple(loss.shape)}")
    if n % tasks != 0:
        raise ValueError(
            f"learnedopt.ops.{op}: loss has shape {tuple(loss.shape)} (B = {tasks} tasks) but "
            f"n = {n} coordinates do not split into {tasks} equal segments (task b owns "
            f"coordinates [b*n/B, (b+1)*n/B))")
    return tasks


def preprocess_p_range(dtype: torch.dtype) -> tuple[float, float]:
    """[p_min, p_max] for inputs of ``dtype``: p_max = -ln(smallest normal number), so that e^p and
    e^-p are both normal (87.34 for float32, 708.40 for float64); p_min = 2·ln(max)/max, so that
    log|x|/p is finite for every finite x (the 2 a margin for rounding)."""
    info = torch.finfo(dtype)
    return 2.0 * math.log(info.max) / info.max, -math.log(info.tiny)


# Computed once: the check runs on every op call.
_P_RANGES = {dtype: preprocess_p_range(dtype) for dtype in SUPPORTED_DTYPES}


def check_preprocess_options(op: str, p: float, log_eps: float, dtype: torch.dtype) -> None:
    """p and log_eps within their valid range for inputs of ``dtype`` (NaN fails every test)."""
    p_min, p_max = _P_RANGES[dtype] if dtype in _P_RANGES else preprocess_p_range(dtype)
    if not p_min <= p <= p_max:
        raise ValueError(
            f"learnedopt.ops.{op}: p must be in [{p_min:.6g}, {p_max:.6g}] for "
            f"{str(dtype).removeprefix('torch.')} (e^p and e^-p normal numbers, log|x|/p finite "
            f"for every finite x), got {p!r}")
    if not 0.0 <= log_eps <= LOG_EPS_MAX:
        raise ValueError(f"learnedopt.ops.{op}: log_eps must be in [0, {LOG_EPS_MAX:g}] (an epsilon "
                         f"inside log(|x| + log_eps)), got {log_eps!r}")
