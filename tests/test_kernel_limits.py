"""The fused kernels at the limits of their inputs, against learnedopt.reference (issue 11, items 3-4).

* Padding lanes: when n is not a multiple of the SIMD width, the last vector of a chunk is
  filled with zero "coordinates". With an infinite meta-weight those lanes compute 0 · Inf = NaN,
  which must not reach the weight-gradient sums: the fused gradients must have exactly the
  reference's NaNs and Infs, and its values elsewhere.
* Saturation: the backward must follow the reference's limit behaviour for every finite input,
  huge ones included (the float32 SIMD sigmoid once kept a floor of 6e-39, so σ' never vanished and
  the raw-gradient LSTM's w_ih gradient grew as 2e-40·g²), and for ±Inf gradients (0 · Inf = NaN
  in the gradient of c, as in the reference).

Every case runs on every SIMD path and at n that are no multiple of any SIMD width.
"""

from __future__ import annotations

import math

import pytest
import torch

from learnedopt import reference
from learnedopt.ops import available
from tests.conftest import CPU_CAPABILITIES, cpu_capability
from tests.test_meta_lstm_op import compare, make_inputs
from tests.test_turtle_op import assert_matches, fused_op, make_net, make_state, names, run_with_grads

pytestmark = pytest.mark.skipif(
    not (available("cpu", "meta_lstm_step") and available("cpu", "turtle_step")),
    reason="the fused CPU kernels are not built")

DTYPES = [torch.float32, torch.float64]
TAIL_SIZES = [17, 31, 33, 1001]  # no multiple of 4, 8 or 16 lanes
HUGE = [1e20, 1e30, 3e38]  # finite in float32 too


def check_meta_lstm_inf_weight(n, dtype, device):
    # The issue's +Inf at w_ih[0, 3] (Ravi's input: the preprocessed gradient's sign column), -Inf
    # in the raw gradient's only column, +Inf in w_hh on the generic (hidden 7) kernel.
    cases = [(20, 4, 7, (0, 3), math.inf), (20, 1, 7, (5, 0), -math.inf),
             (7, 4, 8, (2, 6), math.inf)]
    for hidden, input_size, k, index, value in cases:
        inputs = make_inputs(n, hidden, input_size, dtype, seed=n + hidden, device=device)
        inputs[k][index] = value
        compare(inputs, dtype)


def check_turtle_inf_weight(n, dtype, device):
    """A TURTLE step whose W0[0, 0] is ±Inf against the float64 reference on the same values."""
    for net, sign in (("paper", 1.0), ("odd", -1.0)):  # the unrolled and run-time-width kernels
        gen = torch.Generator().manual_seed(n)
        weights, biases = make_net(net, dtype, gen, device)
        weights[0][0, 0] = sign * math.inf
        state = make_state(n, dtype, gen, device)
        g_theta, g_m = (torch.randn(n, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
                        for _ in range(2))
        got = run_with_grads(fused_op, state, weights, biases, 1, 10.0, g_theta, g_m)
        want = run_with_grads(reference.turtle_step, state, weights, biases, 1, 10.0, g_theta, g_m,
                              dtype=torch.float64)
        for what, a, e in zip(names(len(weights)), got, want):
            # The same NaNs as the reference, entry by entry (the issue: 400 against 120); the
            # Infs and the finite entries as assert_matches holds them.
            assert torch.equal(torch.isnan(a), torch.isnan(e.to(a.dtype))), f"{net} {what}: NaNs"
            assert_matches(a, e, f"{net} {what}", equal_nan=True)


def gradient_with(values, n, dtype, seed, input_size=1, device="cpu"):
    """meta_lstm_step inputs whose gradient holds `values` at coordinates spread over the SIMD
    bodies and the tail (the last coordinate included)."""
    inputs = make_inputs(n, 20, input_size, dtype, seed=seed, device=device)
    grad = inputs[1].clone()
    positions = sorted({0, n // 3, n // 2, n - 1}) if n > 1 else [0]
    for k, j in enumerate(positions):
        grad[j] = values[k % len(values)]
    inputs[1] = grad
    return inputs


def check_meta_lstm_saturated_gates(n, dtype, device):
    """Huge finite raw gradients saturate every layer-1 gate (w_ih · g ≈ ±1e19 and beyond): σ is
    exactly 0 or 1 and tanh ±1 in the reference, so their derivatives vanish and the w_ih
    gradient gets nothing from those coordinates; the fused op must agree (it once returned 0.24
    at g = 1e20, 2e19 at 1e30). (Ravi's preprocessed input keeps the gates' inputs bounded.)"""
    for value in HUGE:
        out, grads = compare(gradient_with([value, -value], n, dtype, seed=n, device=device), dtype)
        assert all(torch.isfinite(t).all() for t in (*out, *grads)), value


def check_meta_lstm_infinite_gradient(n, dtype, device):
    """±Inf in the gradient: the reference's gradient of c is NaN where σ(f) = 0 meets an infinite
    d c_new (0 · Inf); the fused op must give the same NaNs and Infs, not ±Inf everywhere."""
    for input_size in (1, 4):
        compare(gradient_with([math.inf, -math.inf], n, dtype, seed=n + 1, input_size=input_size,
                              device=device), dtype)


CHECKS = [check_meta_lstm_inf_weight, check_turtle_inf_weight, check_meta_lstm_saturated_gates,
          check_meta_lstm_infinite_gradient]


@pytest.mark.parametrize("n", TAIL_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("capability", CPU_CAPABILITIES)
def test_meta_lstm_inf_weight_stays_out_of_padding_lanes(capability, dtype, n):
    with cpu_capability(capability):
        check_meta_lstm_inf_weight(n, dtype, "cpu")


@pytest.mark.parametrize("n", TAIL_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("capability", CPU_CAPABILITIES)
def test_turtle_inf_weight_stays_out_of_padding_lanes(capability, dtype, n):
    with cpu_capability(capability):
        check_turtle_inf_weight(n, dtype, "cpu")


@pytest.mark.parametrize("n", [1] + TAIL_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("capability", CPU_CAPABILITIES)
def test_meta_lstm_saturated_gates_have_the_reference_gradient(capability, dtype, n):
    with cpu_capability(capability):
        check_meta_lstm_saturated_gates(n, dtype, "cpu")


@pytest.mark.parametrize("n", [1] + TAIL_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("capability", CPU_CAPABILITIES)
def test_meta_lstm_infinite_gradient_has_the_reference_nans(capability, dtype, n):
    with cpu_capability(capability):
        check_meta_lstm_infinite_gradient(n, dtype, "cpu")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_limits_and_padding(dtype, cuda_device):
    """The same checks on the CUDA kernels (a GPU, or the emulated one: threads past n in a block
    are their padding), at n below, around and above one block."""
    for n in [1] + TAIL_SIZES + [4099]:
        for check in CHECKS:
            check(n, dtype, cuda_device)
