"""``preprocess``: the log-magnitude/sign preprocessing of SPEC §1 as a registered op with autograd."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from learnedopt import _extension, reference
from learnedopt.ops import _backend, _checks, _functorch


def preprocess(x: Tensor, p: float = 10.0, log_eps: float = 0.0, strict: bool = False) -> Tensor:
    """Returns ``x.shape + (2,)``: (log|x|/p, sign x) above |x| = e^-p, (-1, e^p x) below it."""
    _checks.check_tensor("preprocess", "x", x)
    if not (p > 0 and math.isfinite(p)):
        raise ValueError(f"learnedopt.ops.preprocess: p must be finite and > 0, got {p}")
    if not (log_eps >= 0 and math.isfinite(log_eps)):
        raise ValueError(f"learnedopt.ops.preprocess: log_eps must be finite and >= 0, got {log_eps}")
    if _backend.use_fused(x.device, "preprocess"):
        if _functorch.active():
            return _functorch.Preprocess.apply(x, float(p), float(log_eps), bool(strict))
        return torch.ops.learnedopt.preprocess(x, float(p), float(log_eps), bool(strict))
    return reference.preprocess(x, p, log_eps, strict)


# Fake kernels: shapes for torch.compile and the meta device. Autograd is registered in C++
# (csrc/autograd/), with the CPU and CUDA kernels.
if _extension._C is not None:
    @torch.library.register_fake("learnedopt::preprocess")
    def _(x, p, log_eps, strict):
        return x.new_empty((*x.shape, 2))

    @torch.library.register_fake("learnedopt::preprocess_backward")
    def _(grad_out, x, p, log_eps, strict):
        return x.new_empty(x.shape)  # contiguous, as the kernels return it
