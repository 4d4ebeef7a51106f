"""The fused learned-optimizer ops, with an explicit choice of backend.

    from learnedopt import ops
    ops.available("cpu")            # fused kernels compiled for this device?
    ops.set_backend("reference")    # or "fused" / "auto" (default)
    ops.preprocess(g)               # SPEC §1
    ops.meta_lstm_step(...)         # SPEC §2
    ops.meta_lstm_step_inplace(...) # the same, state updated in place (optimizer steps)
    ops.turtle_step(...)            # SPEC §3

Path of a call: this wrapper checks its arguments, then either runs ``torch.ops.learnedopt.<op>``
(registered in csrc/schema.cpp, CPU kernel in csrc/cpu/, CUDA kernel in csrc/cuda/) or the
pure-PyTorch twin in :mod:`learnedopt.reference`. Autograd of the registered ops is C++
(csrc/autograd/); under torch.func transforms the wrappers use the Python route of
:mod:`learnedopt.ops._functorch` instead, with the vmap rules of :mod:`learnedopt.ops._vmap`.
"""

from learnedopt import _extension
from learnedopt.ops import _vmap
from learnedopt.ops._backend import (BACKENDS, available, describe, get_backend, set_backend,
                                     use_backend)
from learnedopt.ops.meta_lstm import meta_lstm_step, meta_lstm_step_inplace
from learnedopt.ops.preprocess import preprocess
from learnedopt.ops.turtle import turtle_step

if _extension._C is not None:
    _vmap.register()

__all__ = ["BACKENDS", "available", "describe", "get_backend", "set_backend", "use_backend",
           "preprocess", "meta_lstm_step", "meta_lstm_step_inplace", "turtle_step"]
