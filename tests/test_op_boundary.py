"""The op boundary refuses what the wrappers refuse (issue 11, items 5-6).

``torch.ops.learnedopt.*`` is public, so every check of the Python wrappers must also hold there:
in the C++ kernels (CPU here) and in the fake kernels, which also run for a real call that mixes
meta and real tensors. And the preprocessing options have one valid range per dtype
(learnedopt/ops/_checks.py, csrc/common/preprocess_math.h), refused alike by the wrappers, both
backends, the C++ ops, the fake kernels and the reference, with the same message from the
wrapper and the reference. Within that range, every finite input gives finite outputs and
gradients, and fused equals reference.
"""

from __future__ import annotations

import math

import pytest
import torch

from learnedopt import ops, reference
from learnedopt.ops import _checks
from tests.conftest import CPU_CAPABILITIES, cpu_capability
from tests.test_meta_lstm_op import make_inputs, output_grads
from tests.test_turtle_op import make_net, make_state

pytestmark = pytest.mark.skipif(not ops.available("cpu"), reason="the fused CPU kernels are not built")

DTYPES = [torch.float32, torch.float64]
OPTION_OPS = ["preprocess", "preprocess_backward", "meta_lstm_step", "meta_lstm_step_backward"]


def op_args(name: str, dtype=torch.float32, p=10.0, log_eps=0.0):
    """Valid arguments of torch.ops.learnedopt.<name>, in schema order (lists for the MLP)."""
    gen = torch.Generator().manual_seed(0)
    if name in ("preprocess", "preprocess_backward"):
        x = torch.randn(5, generator=gen, dtype=torch.float64).to(dtype)
        if name == "preprocess":
            return [x, p, log_eps, False]
        return [torch.randn(5, 2, generator=gen, dtype=torch.float64).to(dtype), x, p, log_eps, False]
    if name in ("meta_lstm_step", "meta_lstm_step_backward"):
        inputs = make_inputs(5, 4, 4, dtype, seed=1)
        if name == "meta_lstm_step":
            return [*inputs, p, log_eps, False]
        outs = torch.ops.learnedopt.meta_lstm_step(*inputs, 10.0, 0.0, False)
        return [*output_grads(outs), *inputs, p, log_eps, False]
    weights, biases = make_net("odd", dtype, gen)
    theta, grad, m, alpha = make_state(5, dtype, gen)
    if name == "turtle_step":
        return [theta, grad, m, 1, alpha, weights, biases, 0.9, 10.0]
    return [theta.clone(), grad.clone(), theta, grad, m, 1, alpha, weights, biases, 0.9, 10.0]


ALL_OPS = OPTION_OPS + ["turtle_step", "turtle_step_backward"]
MULTI_INPUT_OPS = [name for name in ALL_OPS if name != "preprocess"]  # preprocess takes one tensor


def tensor_slots(args):
    """(position, index in the list or None) of every tensor argument."""
    slots = []
    for k, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            slots.append((k, None))
        elif isinstance(a, list):
            slots.extend((k, i) for i in range(len(a)))
    return slots


def with_slot(args, slot, change):
    """args with the tensor at `slot` (see tensor_slots) replaced by change(tensor)."""
    k, i = slot
    args = list(args)
    if i is None:
        args[k] = change(args[k])
    else:
        args[k] = [change(t) if j == i else t for j, t in enumerate(args[k])]
    return args


def with_meta(args):
    """args with every tensor on the meta device (as torch.compile's fake tensors)."""
    return [a.to("meta") if isinstance(a, torch.Tensor)
            else [t.to("meta") for t in a] if isinstance(a, list) else a for a in args]


@pytest.mark.parametrize("name", MULTI_INPUT_OPS)
def test_raw_op_refuses_meta_mixed_with_cpu(name):
    """One input on the meta device, the rest on the CPU: the dispatcher runs the fake kernel,
    which once returned uninitialised CPU memory. Every input position must be refused."""
    op = getattr(torch.ops.learnedopt, name)
    args = op_args(name)
    slots = tensor_slots(args)
    assert len(slots) >= 2
    for slot in slots:
        with pytest.raises((ValueError, RuntimeError), match=r"is on (meta|cpu) but the other inputs are on"):
            op(*with_slot(args, slot, lambda t: t.to("meta")))


@pytest.mark.parametrize("name", ALL_OPS)
def test_fake_kernel_checks_shapes_and_dtypes(name):
    """All inputs on meta (as torch.compile's fake tensors): wrong shapes and dtypes are refused
    as by the C++ kernels, not turned into outputs of made-up shapes."""
    op = getattr(torch.ops.learnedopt, name)
    args = with_meta(op_args(name))
    op(*args)  # valid: accepted
    slot = tensor_slots(args)[-1]  # b_i, the last bias, or x (preprocess_backward)
    cases = [lambda t: t.to(torch.float16)]
    if name != "preprocess":  # which takes any shape
        cases.append(lambda t: t[:-1])
    for bad in cases:
        with pytest.raises((ValueError, TypeError)):
            op(*with_slot(args, slot, bad))


def bad_options(dtype):
    """(p, log_eps) pairs outside the valid range for dtype, and the word the error names."""
    p_min, p_max = _checks.preprocess_p_range(dtype)
    return [
        # The cases first: e^p overflows the dtype; p = 1000; log_eps = -1.
        (89.0 if dtype == torch.float32 else 710.0, 0.0, "p"), (1000.0, 0.0, "p"),
        (10.0, -1.0, "log_eps"),
        (0.0, 0.0, "p"), (-1.0, 0.0, "p"), (math.nan, 0.0, "p"), (math.inf, 0.0, "p"),
        (-math.inf, 0.0, "p"), (math.nextafter(p_max, math.inf), 0.0, "p"),
        (math.nextafter(p_min, 0.0), 0.0, "p"),
        (10.0, -5e-324, "log_eps"), (10.0, math.nan, "log_eps"), (10.0, math.inf, "log_eps"),
        (10.0, math.nextafter(_checks.LOG_EPS_MAX, 2.0), "log_eps"),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", OPTION_OPS)
def test_raw_op_refuses_bad_options(name, dtype):
    """p <= 0, NaN p, e^p overflowing, negative/NaN/Inf log_eps: refused by the C++ kernel (CPU)
    and by the fake kernel (meta), as by the wrapper."""
    op = getattr(torch.ops.learnedopt, name)
    for p, log_eps, word in bad_options(dtype):
        args = op_args(name, dtype, p, log_eps)
        with pytest.raises(RuntimeError, match=f"learnedopt::{name}: {word} must be in"):
            op(*args)
        with pytest.raises(ValueError, match=f"learnedopt.ops.{name}: {word} must be in"):
            op(*with_meta(args))


def wrapper_calls(name, dtype, p, log_eps):
    """Calls of the public functions with these options: the wrapper on each backend, the reference."""
    x = torch.randn(7, dtype=dtype, generator=torch.Generator().manual_seed(2))
    inputs = make_inputs(7, 4, 4, dtype, seed=3)
    if name == "preprocess":
        fused = lambda: ops.preprocess(x, p, log_eps)  # noqa: E731
        ref = lambda: reference.preprocess(x, p, log_eps)  # noqa: E731
    else:
        fused = lambda: ops.meta_lstm_step(*inputs, p=p, log_eps=log_eps)  # noqa: E731
        ref = lambda: reference.meta_lstm_step(*inputs, p=p, log_eps=log_eps)  # noqa: E731

    def on(backend):
        def call():
            with ops.use_backend(backend):
                return fused()
        return call
    return {"fused": on("fused"), "reference backend": on("reference"), "reference": ref}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["preprocess", "meta_lstm_step"])
def test_wrappers_and_reference_refuse_the_same_options_with_one_message(name, dtype):
    """ops.meta_lstm_step(log_eps=-1) was accepted (fused finite, reference NaN); preprocess(p=89)
    gave NaN/Inf in float32, p = 1000 -inf fused and an OverflowError in the reference."""
    for p, log_eps, word in bad_options(dtype):
        messages = set()
        for where, call in wrapper_calls(name, dtype, p, log_eps).items():
            with pytest.raises(ValueError, match=f"{word} must be in") as err:
                call()
            messages.add(str(err.value))
        assert len(messages) == 1, messages


def edge_inputs(dtype, p):
    """Finite inputs where the preprocessing is most fragile for this p: 0, subnormals, the
    smallest normal, the threshold e^-p and its neighbours, 1, the largest finite numbers."""
    info = torch.finfo(dtype)
    thr = torch.tensor(math.exp(-p), dtype=dtype)
    values = [0.0, -0.0, info.tiny / 4, -info.tiny / 4, info.tiny, -info.tiny, 1.0, -1.0, 3.0,
              info.max, -info.max, info.max / 3, 1e-30, -1e-30]
    values = torch.tensor(values, dtype=dtype)
    near = torch.stack([thr, -thr, torch.nextafter(thr, torch.zeros_like(thr)),
                        torch.nextafter(thr, torch.ones_like(thr))])
    return torch.cat([values, near]).repeat(3)  # SIMD bodies and tails alike


@pytest.mark.parametrize("capability", CPU_CAPABILITIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_valid_range_is_exact_and_finite_in_finite_out_holds_on_it(dtype, capability):
    """At each end of the range (p_min, p_max; log_eps 0 and 1) every public path accepts the
    options, and the edge inputs give finite outputs and gradients, fused equal to reference;
    one step beyond, every path refuses (the C++ bounds are the Python ones, to the last bit)."""
    p_min, p_max = _checks.preprocess_p_range(dtype)
    tol = dict(rtol=1e-5, atol=1e-30) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-300)
    for p, beyond in ((p_min, math.nextafter(p_min, 0.0)), (p_max, math.nextafter(p_max, math.inf))):
        for log_eps in (0.0, _checks.LOG_EPS_MAX):
            x = edge_inputs(dtype, p)
            cot = (torch.rand(*x.shape, 2, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(4)) * 2 - 1).to(dtype)
            results = []
            for backend in ("fused", "reference"):
                xi = x.clone().requires_grad_()
                with cpu_capability(capability), ops.use_backend(backend):
                    y = ops.preprocess(xi, p, log_eps)
                (g,) = torch.autograd.grad(y, xi, cot)
                assert torch.isfinite(y).all() and torch.isfinite(g).all(), (backend, p, log_eps)
                results.append((y.detach(), g))
            torch.testing.assert_close(results[0][0], results[1][0], **tol)
            torch.testing.assert_close(results[0][1], results[1][1], **tol)
            for name in OPTION_OPS:
                op = getattr(torch.ops.learnedopt, name)
                op(*op_args(name, dtype, p, log_eps))
                op(*with_meta(op_args(name, dtype, p, log_eps)))
                with pytest.raises(RuntimeError, match="p must be in"):
                    op(*op_args(name, dtype, beyond, log_eps))
                with pytest.raises(ValueError, match="p must be in"):
                    op(*with_meta(op_args(name, dtype, beyond, log_eps)))
            for call in wrapper_calls("meta_lstm_step", dtype, p, log_eps).values():
                call()
            for call in wrapper_calls("preprocess", dtype, beyond, log_eps).values():
                with pytest.raises(ValueError, match="p must be in"):
                    call()
