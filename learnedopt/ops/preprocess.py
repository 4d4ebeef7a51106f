"""``preprocess``: the log-magnitude/sign preprocessing of SPEC §1 as a registered op with autograd."""

from __future__ import annotations

import torch
from torch import Tensor

from learnedopt import _extension, reference
from learnedopt.ops import _backend, _checks, _functorch


def _check(x, p, log_eps, op="preprocess"):
    _checks.check_tensor(op, "x", x)
    _checks.check_preprocess_options(op, p, log_eps, x.dtype)


def preprocess(x: Tensor, p: float = 10.0, log_eps: float = 0.0, strict: bool = False) -> Tensor:
    """Returns ``x.shape + (2,)``: (log(|x| + log_eps)/p, sign x) where |x| >= e^-p (> with
    ``strict``), (-1, e^p·x) below it.

    Options: p in [p_min, p_max] of x's dtype (:func:`learnedopt.ops._checks.preprocess_p_range`:
    87.34 at most for float32, 708.40 for float64), log_eps in [0, 1]; anything else (NaN
    included) raises ValueError, here, in the reference and at ``torch.ops.learnedopt.preprocess``.
    Within that range every finite x gives finite outputs and a finite derivative.
    """
    _check(x, p, log_eps)
    if _backend.use_fused(x.device, "preprocess"):
        if _functorch.active():
            return _functorch.Preprocess.apply(x, float(p), float(log_eps), bool(strict))
        return torch.ops.learnedopt.preprocess(x, float(p), float(log_eps), bool(strict))
    return reference.preprocess(x, p, log_eps, strict)


# Fake kernels: shapes for torch.compile and the meta device. Autograd is registered in C++
# (csrc/autograd/), with the CPU and CUDA kernels.
if _extension._C is not None:
    # They check what the wrapper checks: torch.ops.learnedopt is public, and a fake kernel also
    # runs for a real call that mixes meta and real tensors.
    @torch.library.register_fake("learnedopt::preprocess")
    def _(x, p, log_eps, strict):
        _check(x, p, log_eps)
        return x.new_empty((*x.shape, 2))

    @torch.library.register_fake("learnedopt::preprocess_backward")
    def _(grad_out, x, p, log_eps, strict):
        op = "preprocess_backward"
        _check(x, p, log_eps, op)
        _checks.check_tensor(op, "grad_out", grad_out, x, shape=(*x.shape, 2))
        return x.new_empty(x.shape)  # contiguous, as the kernels return it
