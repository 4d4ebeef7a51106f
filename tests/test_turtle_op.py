"""The fused turtle_step kernels (CPU, and CUDA where present) against learnedopt.reference.

The expected values are the reference evaluated in float64 on the very same input values, so a
float32 kernel is held to float32 rounding of the exact result (rtol 1e-5, and an atol of 1e-5 times
the largest expected magnitude, for entries that are sums with cancellation); float64 to 1e-10.

NaN policy under test: a NaN in a coordinate's inputs makes that coordinate's outputs NaN (its
d_grad is 0 where the clamp is active, as torch.clamp's derivative at NaN) and leaves every other
coordinate's outputs untouched; the weight and bias gradients, sums over all coordinates, are NaN
as the reference's are.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from learnedopt import reference
from learnedopt.ops import available, turtle_step, use_backend
from tests import cuda_emulation
from tests.conftest import CPU_CAPABILITIES, cpu_capability

pytestmark = pytest.mark.skipif(not available("cpu", "turtle_step"),
                                reason="the fused CPU kernels are not built")

NETS = {
    "paper": (3, [20, 20, 20, 20, 20]),   # [g, m, t] -> 5 x 20 -> 1, the unrolled kernel
    "paper_gm": (2, [20, 20, 20, 20, 20]),  # [g, m] as in the authors' example commands
    "odd": (3, [7, 33]),                  # run-time widths
    "odd_gm": (2, [33, 7]),
    "linear": (3, []),                    # a single layer, 3 -> 1
    "shallow": (2, [20]),                 # the unrolled kernel with no 20 -> 20 layer
    "wide": (3, [64, 64]),                # CUDA: the backward opts in to more than 48 KiB of shared memory
    "deep_wide": (2, [64] * 15),          # 16 layers, 58k parameters: more than a GPU block's shared memory
}
MATRIX_NETS = ["paper", "paper_gm", "odd", "odd_gm", "linear"]


def make_net(name: str, dtype: torch.dtype, gen: torch.Generator, device="cpu"):
    inputs, hidden = NETS[name]
    sizes = [inputs] + hidden + [1]
    weights = [(torch.rand(o, i, generator=gen, dtype=torch.float64) * 2 - 1) * (1.5 / math.sqrt(i))
               for i, o in zip(sizes, sizes[1:])]
    biases = [torch.randn(o, generator=gen, dtype=torch.float64) * 0.1 for o in sizes[1:]]
    return ([w.to(dtype=dtype, device=device) for w in weights],
            [b.to(dtype=dtype, device=device) for b in biases])


def make_state(n: int, dtype: torch.dtype, gen: torch.Generator, device="cpu"):
    """theta, grad, m, alpha; grad reaches beyond ±10 and hits ±10 exactly (the clamp's bounds)."""
    theta = torch.randn(n, generator=gen, dtype=torch.float64)
    grad = torch.randn(n, generator=gen, dtype=torch.float64) * 8
    if n >= 4:
        grad[:4] = torch.tensor([10.0, -10.0, 25.0, -40.0], dtype=torch.float64)
    m = torch.randn(n, generator=gen, dtype=torch.float64) * 3
    alpha = torch.rand(n, generator=gen, dtype=torch.float64)
    return [x.to(dtype=dtype, device=device) for x in (theta, grad, m, alpha)]


def run_with_grads(op, state, weights, biases, t, grad_clamp, g_theta, g_m, dtype=None):
    """Forward outputs and the gradient of every input, via autograd through `op`.

    With `dtype`, every input is first converted (the float64 ground truth of float32 inputs).
    """
    def prep(x):
        x = x.detach().to(dtype) if dtype is not None else x.detach().clone()
        return x.requires_grad_()
    leaves = [prep(x) for x in (*state, *weights, *biases)]
    theta, grad, m, alpha = leaves[:4]
    layers = len(weights)
    w, b = leaves[4:4 + layers], leaves[4 + layers:]
    theta_new, m_new = op(theta, grad, m, t, alpha, w, b, 0.9, grad_clamp)
    cast = (lambda x: x.to(dtype)) if dtype is not None else (lambda x: x)
    grads = torch.autograd.grad((theta_new, m_new), leaves, (cast(g_theta), cast(g_m)),
                                allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves)]
    return [theta_new.detach(), m_new.detach(), *grads]


def fused_op(*args):
    with use_backend("fused"):
        return turtle_step(*args)


def names(layers: int):
    return (["theta_new", "m_new", "d_theta", "d_grad", "d_m", "d_alpha"]
            + [f"d_weights[{k}]" for k in range(layers)] + [f"d_biases[{k}]" for k in range(layers)])


def assert_matches(actual, expected, what: str, equal_nan: bool = False, magnitude=None):
    """|actual - expected| <= rtol * (|expected| + magnitude), entry by entry.

    `magnitude` is the size of the terms an entry is a sum of (a sum with cancellation is only as
    accurate as its largest terms); by default the largest finite |expected| of the tensor.
    """
    assert actual.dtype == (torch.float64 if expected.dtype == torch.float64 and
                            actual.dtype == torch.float64 else torch.float32), what
    expected = expected.to(actual.dtype)
    rtol = 1e-10 if actual.dtype == torch.float64 else 1e-5
    if magnitude is None:
        finite = expected[torch.isfinite(expected)]
        magnitude = finite.abs().max().item() if finite.numel() else 0.0
    else:
        magnitude = magnitude.to(actual.dtype)
    same = actual == expected  # also +-inf
    if equal_nan:
        same |= torch.isnan(actual) & torch.isnan(expected)
    close = (actual - expected).abs() <= rtol * (expected.abs() + magnitude)
    bad = ~(same | close)
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.numel()} entries differ; first at "
        f"{bad.nonzero()[0].tolist()}: got {actual[bad][0].item()!r}, expected {expected[bad][0].item()!r}")


def sum_magnitudes(state, weights, biases, t, grad_clamp, g_theta, g_m):
    """For each weight and bias gradient entry, a sum over coordinates, the size of what rounding
    acts on: the same sums and products with every factor replaced by its magnitude (a first-order
    rounding-error bound, up to a small multiple of the unit roundoff). A NaN coordinate adds 0:
    where its terms are NaN the expected sum is NaN too, and elsewhere the ReLU cut them off."""
    del g_m  # m' feeds the MLP's input only, whose gradient no weight depends on
    theta, grad, m, alpha = (x.double() for x in state)
    weights = [w.double() for w in weights]
    biases = [b.double() for b in biases]
    g = grad.clamp(-grad_clamp, grad_clamp) if math.isfinite(grad_clamp) else grad
    m_new = g if t == 0 else 0.9 * m + 0.1 * g
    columns = [g, m_new] + ([torch.full_like(g, float(t))] if weights[0].shape[1] == 3 else [])
    act = torch.stack(columns, 1)
    finite = lambda x: torch.nan_to_num(x, nan=0.0, posinf=math.inf)  # noqa: E731
    act_mag = finite(act.abs())
    inputs_mag, masks = [], []
    for k, (w, b) in enumerate(zip(weights, biases)):
        inputs_mag.append(act_mag)
        pre = act @ w.t() + b
        pre_mag = finite(act_mag @ w.abs().t() + b.abs())
        if k < len(weights) - 1:
            mask = (pre > 0).double()
            masks.append(mask)
            act, act_mag = pre * mask, pre_mag * mask
    dz_mag = finite((g_theta.double() * alpha).abs().unsqueeze(1))
    d_w, d_b = [None] * len(weights), [None] * len(weights)
    for k in range(len(weights) - 1, -1, -1):
        d_w[k] = dz_mag.t() @ inputs_mag[k]
        d_b[k] = dz_mag.sum(0)
        if k:
            dz_mag = (dz_mag @ weights[k].abs()) * masks[k - 1]
    return d_w + d_b


def move_off_relu_kinks(state, weights, biases, t, grad_clamp):
    """Where a hidden unit's pre-activation is within rounding of 0, float32 and the exact result
    may legitimately take different sides of the ReLU (a different gradient); such coordinates
    get the (g, m) of a coordinate clear of every kink. The kinks of the clamp are exact (the
    same comparison on the same values) and are tested as they are."""
    theta, grad, m, alpha = state
    g = grad.double().clamp(-grad_clamp, grad_clamp) if math.isfinite(grad_clamp) else grad.double()
    m_new = g if t == 0 else 0.9 * m.double() + 0.1 * g
    columns = [g, m_new] + ([torch.full_like(g, float(t))] if weights[0].shape[1] == 3 else [])
    act = torch.stack(columns, 1)
    act_mag = act.abs()
    near = torch.zeros(g.shape[0], dtype=torch.bool)
    for w, b in zip(weights[:-1], biases[:-1]):
        pre = act @ w.double().t() + b.double()
        pre_mag = act_mag @ w.double().abs().t() + b.double().abs()
        near |= (pre.abs() <= 1e-4 * pre_mag).any(1)
        act, act_mag = pre.clamp_min(0), pre_mag * (pre > 0)
    clear = (~near).nonzero()
    if not near.any() or clear.numel() == 0:
        return state
    j = clear[0, 0]
    grad, m = grad.clone(), m.clone()
    grad[near], m[near] = grad[j], m[j]
    return [theta, grad, m, alpha]


def check_against_reference(n, dtype, net, t, grad_clamp, seed=0, equal_nan=False, state=None, device="cpu"):
    """The fused op on `device` against the float64 reference on the CPU; returns the fused op's
    outputs and gradients (on the CPU)."""
    gen = torch.Generator().manual_seed(seed)
    weights, biases = make_net(net, dtype, gen)
    state = make_state(n, dtype, gen) if state is None else state
    state = move_off_relu_kinks(state, weights, biases, t, grad_clamp)
    g_theta = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
    g_m = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
    on = lambda xs: [x.to(device) for x in xs]  # noqa: E731
    got = run_with_grads(fused_op, on(state), on(weights), on(biases), t, grad_clamp, *on((g_theta, g_m)))
    got = [x.cpu() for x in got]
    want = run_with_grads(reference.turtle_step, state, weights, biases, t, grad_clamp, g_theta, g_m,
                          dtype=torch.float64)
    magnitudes = [None] * 6 + sum_magnitudes(state, weights, biases, t, grad_clamp, g_theta, g_m)
    for what, a, e, mag in zip(names(len(weights)), got, want, magnitudes):
        assert a.shape == e.shape, what
        assert_matches(a, e, what, equal_nan, mag)
    return got


@pytest.mark.parametrize("n", [1, 7, 1000, 100003])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("net", MATRIX_NETS)
def test_matches_reference(n, dtype, net, device):
    # Every combination of t and the clamp at the smaller sizes; one at the largest, which is
    # there for the chunking and tails of the parallel loops.
    combos = [(3, 10.0)] if n > 1000 else [(t, c) for t in (0, 3) for c in (math.inf, 10.0)]
    for t, grad_clamp in combos:
        check_against_reference(n, dtype, net, t, grad_clamp, seed=n + t, device=device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("net", ["wide", "deep_wide", "shallow"])
def test_wide_and_deep_nets(dtype, net, device):
    """Run-time widths at the 64 limit and 16 layers: on CUDA the parameters no longer fit a block's
    shared memory (read from global memory), or only after opting in to more than 48 KiB."""
    for n, t in ((3, 0), (517, 2)):
        check_against_reference(n, dtype, net, t, 10.0, seed=n + t, device=device)


def test_more_coordinates_than_one_grid(cuda_device):
    """The forward kernel's grid-stride loop going round several times (on a GPU with a million
    coordinates, emulated with a 1-SM GPU: grids of 32 blocks of 256), and the backward's tile loop
    striding past its 1024 blocks of 128 (paper net) or 64 (run-time widths) coordinates."""
    n = 20011 if cuda_device.emulated else 1_100_003
    with cuda_emulation.multiprocessors(1) if cuda_device.emulated else contextlib.nullcontext():
        check_against_reference(n, torch.float32, "paper", 3, 10.0, seed=31, device=cuda_device)
        check_against_reference(n, torch.float64, "odd", 0, math.inf, seed=32, device=cuda_device)
    check_against_reference(140001, torch.float32, "paper", 2, 10.0, seed=33, device=cuda_device)
    check_against_reference(70001, torch.float32, "odd_gm", 2, 10.0, seed=34, device=cuda_device)


@pytest.mark.parametrize("capability", CPU_CAPABILITIES)
def test_every_cpu_capability(capability):
    # Capabilities this CPU lacks fall back to the best it has.
    with cpu_capability(capability):
        for net in ("paper", "odd_gm", "shallow"):
            for dtype in (torch.float32, torch.float64):
                check_against_reference(1037, dtype, net, 2, 10.0, seed=5)


def test_no_coordinates(device):
    for t in (0, 2):
        got = check_against_reference(0, torch.float32, "paper", t, 10.0, device=device)
        assert all(torch.equal(x, torch.zeros_like(x)) for x in got[6:]), "sums over nothing are 0"


def test_clamp_derivative_includes_the_bounds(device):
    gen = torch.Generator().manual_seed(1)
    weights, biases = make_net("paper", torch.float64, gen, device)
    state = make_state(8, torch.float64, gen, device)  # grad[:4] = 10, -10, 25, -40
    ones = torch.ones(8, dtype=torch.float64, device=device)
    d_grad = run_with_grads(fused_op, state, weights, biases, 1, 10.0, ones, ones)[3]
    assert (d_grad[:2] != 0).all(), "the derivative at |grad| == grad_clamp must pass (torch.clamp)"
    assert (d_grad[2:4] == 0).all(), "beyond the clamp the gradient must be 0"
    unclamped = run_with_grads(fused_op, state, weights, biases, 1, math.inf, ones, ones)[3]
    assert (unclamped[2:4] != 0).all()


def edge_state(dtype):
    tiny = torch.finfo(dtype).tiny / 4  # subnormal
    grad = torch.tensor([0.0, -0.0, 1e30, -1e30, tiny, -tiny, 10.0, 3.0, 0.5, -2.0, 1.0, 7.0],
                        dtype=dtype)
    n = grad.numel()
    theta = torch.linspace(-1, 1, n, dtype=dtype)
    theta[5] = 1e30
    m = torch.linspace(2, -2, n, dtype=dtype)
    m[4] = tiny
    m[6] = -1e30
    alpha = torch.full((n,), 0.5, dtype=dtype)
    alpha[7] = 0.0
    return [theta, grad, m, alpha]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grad_clamp", [math.inf, 10.0])
def test_edge_values(dtype, grad_clamp, device):
    for t in (0, 1):
        got = check_against_reference(12, dtype, "paper", t, grad_clamp, state=edge_state(dtype), device=device)
        for x in got:
            assert not torch.isnan(x).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grad_clamp", [math.inf, 10.0])
def test_nan_stays_in_its_coordinate(dtype, grad_clamp, device):
    n = 40  # more than one SIMD vector, so NaN lanes share vectors with clean ones
    gen = torch.Generator().manual_seed(2)
    state = make_state(n, dtype, gen)
    nan_at = {"theta": 3, "grad": 17, "m": 21, "alpha": 30}
    for k, (name, j) in enumerate(nan_at.items()):
        state[k][j] = math.nan
    got = check_against_reference(n, dtype, "odd", 2, grad_clamp, equal_nan=True, state=state, device=device)
    theta_new, m_new, d_theta, d_grad, d_m, d_alpha = got[:6]
    poisoned = torch.zeros(n, dtype=torch.bool)
    poisoned[list(nan_at.values())] = True
    assert torch.isnan(theta_new[poisoned]).all()
    assert torch.isnan(m_new[[nan_at["grad"], nan_at["m"]]]).all()
    for what, x in zip(("theta_new", "m_new", "d_grad", "d_m", "d_alpha"),
                       (theta_new, m_new, d_grad, d_m, d_alpha)):
        assert torch.isfinite(x[~poisoned]).all(), f"{what}: NaN leaked into clean coordinates"


def test_non_contiguous_inputs(device):
    gen = torch.Generator().manual_seed(3)
    weights, biases = make_net("paper", torch.float32, gen, device)
    state = [x[::2] for x in make_state(2 * 501, torch.float32, gen, device)]
    weights = [w.t().contiguous().t() for w in weights]  # column-major (same values)
    args = (state[0], state[1], state[2], 2, state[3], weights, biases, 0.9, 10.0)
    got = fused_op(*args)
    want = reference.turtle_step(*args)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5 * e.abs().max().item())


def strided_views(tensors, gen):
    """The same values as views the kernels cannot read as flat arrays: a weight (out, in) is the
    transpose of every other column of a wider buffer (row stride 2, column stride 2 * out); a bias is
    every third entry of a buffer. Returns the views and the buffers, which are the autograd leaves."""
    views, bases = [], []
    for x in tensors:
        if x.dim() == 2:
            base = torch.randn(x.shape[1], 2 * x.shape[0], generator=gen, dtype=torch.float64).to(x)
            base[:, ::2] = x.t()
            view = lambda b: b[:, ::2].t()  # noqa: E731
        else:
            base = torch.randn(3 * x.shape[0], generator=gen, dtype=torch.float64).to(x)
            base[::3] = x
            view = lambda b: b[::3]  # noqa: E731
        base.requires_grad_()
        bases.append(base)
        views.append(view(base))
        assert torch.equal(views[-1], x) and (x.numel() == 1 or not views[-1].is_contiguous())
    return views, bases


@pytest.mark.parametrize("net", ["paper", "paper_gm", "odd", "linear"])
@pytest.mark.parametrize("t", [0, 3])
def test_strided_weights_forward_and_backward(net, t, device):
    """The kernels read the weights and biases through their pointers and strides (no packed
    copy): strided views, the t column of a 3-input first layer included, give the same outputs and
    gradients as the reference on the same values; the gradients reach the views' buffers."""
    dtype = torch.float32
    gen = torch.Generator().manual_seed(40 + t)
    weights, biases = make_net(net, dtype, gen, device)
    state = move_off_relu_kinks(make_state(301, dtype, gen, device), weights, biases, t, 10.0)
    g_theta = torch.randn(301, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    results = {}
    for backend in ("fused", "reference"):
        w_views, w_bases = strided_views(weights, torch.Generator().manual_seed(1))
        b_views, b_bases = strided_views(biases, torch.Generator().manual_seed(2))
        alpha = state[3].clone().requires_grad_()
        with use_backend(backend):
            theta_new, m_new = turtle_step(state[0], state[1], state[2], t, alpha, w_views, b_views,
                                           0.9, 10.0)
        grads = torch.autograd.grad((theta_new * g_theta).sum() + m_new.sum(),
                                    [alpha, *w_bases, *b_bases])
        results[backend] = [theta_new.detach(), m_new.detach(), *grads]
    for a, e in zip(results["fused"], results["reference"]):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4 * max(e.abs().max().item(), 1.0))
    # A buffer's entries outside the view get no gradient.
    for base in results["fused"][3:]:
        if base.dim() == 2:
            assert torch.count_nonzero(base[:, 1::2]) == 0
        else:
            assert torch.count_nonzero(base[1::3]) == 0 and torch.count_nonzero(base[2::3]) == 0


def test_weight_gradients_are_fresh_tensors_shaped_as_the_weights(device):
    """The backward writes each weight's and bias's gradient into its own new contiguous tensor (t
    column included), sharing no memory with an input or another output."""
    gen = torch.Generator().manual_seed(9)
    weights, biases = make_net("paper", torch.float32, gen, device)
    weights = [w.t().contiguous().t() for w in weights]
    theta, grad, m, alpha = make_state(50, torch.float32, gen, device)
    g = torch.randn(50, generator=gen).to(device)
    out = torch.ops.learnedopt.turtle_step_backward(g, g.clone(), theta, grad, m, 4, alpha, weights,
                                                    biases, 0.9, 10.0)
    d_weights, d_biases = out[4], out[5]
    pointers = {x.data_ptr() for x in (g, theta, grad, m, alpha, *weights, *biases)}
    for d, x in zip([*d_weights, *d_biases], [*weights, *biases]):
        assert d.shape == x.shape and d.is_contiguous() and d.data_ptr() not in pointers
        pointers.add(d.data_ptr())
    # The t column's gradient is t times the first bias's (SPEC §3: the input t is the constant 4).
    torch.testing.assert_close(d_weights[0][:, 2], 4 * d_biases[0])


@pytest.mark.parametrize("t", [0, 2])
@pytest.mark.parametrize("net", ["paper", "odd_gm", "linear", "shallow"])
def test_gradcheck(t, net, device):
    gen = torch.Generator().manual_seed(4)
    weights, biases = make_net(net, torch.float64, gen, device)
    theta, grad, m, alpha = make_state(6, torch.float64, gen, device)
    grad = grad.clamp(-9, 9)  # away from the clamp's kinks, where finite differences are wrong
    leaves = [x.clone().requires_grad_() for x in (theta, grad, m, alpha, *weights, *biases)]
    layers = len(weights)

    def fn(theta, grad, m, alpha, *params):
        return fused_op(theta, grad, m, t, alpha, params[:layers], params[layers:], 0.9, 10.0)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_opcheck(device):
    gen = torch.Generator().manual_seed(6)
    for net, dtype in (("paper", torch.float32), ("odd_gm", torch.float64)):
        weights, biases = make_net(net, dtype, gen, device)
        theta, grad, m, alpha = make_state(37, dtype, gen, device)
        grad.requires_grad_()
        alpha.requires_grad_()
        weights = [w.requires_grad_() for w in weights]
        args = (theta, grad, m, 1, alpha, weights, biases, 0.9, 10.0)
        torch.library.opcheck(torch.ops.learnedopt.turtle_step.default, args)
        g = torch.randn(37, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
        back_args = (g, g.clone(), theta, grad.detach(), m, 1, alpha.detach(),
                     [w.detach() for w in weights], biases, 0.9, 10.0)
        torch.library.opcheck(torch.ops.learnedopt.turtle_step_backward.default, back_args,
                              test_utils=("test_schema", "test_faketensor"))


def test_opcheck_non_contiguous_inputs(device):
    """Fake and real kernels agree on the outputs' strides (contiguous) when theta is strided and
    the weights are transposed views."""
    gen = torch.Generator().manual_seed(15)
    weights, biases = make_net("paper", torch.float64, gen, device)
    weights = [w.t().contiguous().t() for w in weights]
    theta, grad, m, alpha = make_state(37, torch.float64, gen, device)
    theta = torch.stack([theta, theta], dim=1)[:, 0]
    assert not theta.is_contiguous() and not weights[1].is_contiguous()
    args = (theta, grad, m, 1, alpha, weights, biases, 0.9, 10.0)
    torch.library.opcheck(torch.ops.learnedopt.turtle_step.default, args)
    g = torch.randn(37, generator=gen, dtype=torch.float64).to(device)
    torch.library.opcheck(torch.ops.learnedopt.turtle_step_backward.default,
                          (g, g.clone(), *args), test_utils=("test_schema", "test_faketensor"))


def backward_outputs(n, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(7)
        weights, biases = make_net("paper", torch.float32, gen)
        state = make_state(n, torch.float32, gen)
        g = torch.randn(n, generator=gen)
        return run_with_grads(fused_op, state, weights, biases, 3, 10.0, g, g * 0.5)
    finally:
        torch.set_num_threads(previous)


# 3522: the reduction chunk depends on n below 16k coordinates (448 here); 100003: 2048.
@pytest.mark.parametrize("n", [3522, 100003])
def test_deterministic_across_runs_and_thread_counts(n):
    first, again, one_thread = (backward_outputs(n, 2), backward_outputs(n, 2),
                                backward_outputs(n, 1))
    for what, a, b, c in zip(names(6), first, again, one_thread):
        assert torch.equal(a, b), f"{what} differs between two identical runs"
        assert torch.equal(a, c), f"{what} differs between 1 and 2 threads"


def unrolled_meta_gradient(op, second_order: bool, steps: int = 5, device="cpu"):
    """A T-step TURTLE inner loop on a small regression learner; the meta-gradient of the query
    loss with respect to theta_0, alpha and the MLP (second order: through the gradient g too)."""
    gen = torch.Generator().manual_seed(8)
    dtype = torch.float64
    x_s, x_q = torch.randn(10, 3, generator=gen, dtype=dtype), torch.randn(10, 3, generator=gen, dtype=dtype)
    y_s, y_q = torch.randn(10, generator=gen, dtype=dtype), torch.randn(10, generator=gen, dtype=dtype)
    x_s, x_q, y_s, y_q = (x.to(device) for x in (x_s, x_q, y_s, y_q))
    hidden = 4
    n = 3 * hidden + hidden + hidden + 1

    def learner(theta, x):
        w1 = theta[:3 * hidden].view(hidden, 3)
        b1 = theta[3 * hidden:4 * hidden]
        w2 = theta[4 * hidden:5 * hidden]
        return torch.tanh(x @ w1.t() + b1) @ w2 + theta[-1]

    weights, biases = make_net("paper", dtype, gen, device)
    theta0 = (torch.randn(n, generator=gen, dtype=dtype) * 0.5).to(device).requires_grad_()
    alpha = (torch.rand(n, generator=gen, dtype=dtype) * 0.1).to(device).requires_grad_()
    meta = [theta0, alpha, *[w.requires_grad_() for w in weights], *[b.requires_grad_() for b in biases]]
    theta, m = theta0, torch.zeros(n, dtype=dtype, device=device)
    for t in range(steps):
        loss = ((learner(theta, x_s) - y_s) ** 2).mean()
        (g,) = torch.autograd.grad(loss, theta, create_graph=second_order)
        theta, m = op(theta, g, m, t, alpha, weights, biases, 0.9, 10.0)
    query = ((learner(theta, x_q) - y_q) ** 2).mean()
    return [g.cpu() for g in torch.autograd.grad(query, meta)]


@pytest.mark.parametrize("second_order", [True, False])
def test_unrolled_meta_gradient(second_order, device):
    got = unrolled_meta_gradient(fused_op, second_order, device=device)
    want = unrolled_meta_gradient(reference.turtle_step, second_order)
    for a, e in zip(got, want):
        assert_matches(a, e, "meta-gradient")
    if second_order:  # the second-order term is really there: first order differs
        first = unrolled_meta_gradient(fused_op, False, device=device)
        assert not torch.allclose(got[0], first[0])


def test_double_backward_raises():
    gen = torch.Generator().manual_seed(9)
    weights, biases = make_net("odd", torch.float64, gen)
    theta, grad, m, alpha = (x.requires_grad_() for x in make_state(5, torch.float64, gen))
    theta_new, _ = fused_op(theta, grad, m, 1, alpha, weights, biases, 0.9, 10.0)
    (d_grad,) = torch.autograd.grad(theta_new.sum(), grad, create_graph=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        torch.autograd.grad(d_grad.sum(), alpha)


def test_torch_compile_forward_and_backward_match_eager():
    """The C++ autograd kernel and the Python fake kernel together trace under torch.compile."""
    gen = torch.Generator().manual_seed(11)
    weights, biases = make_net("paper", torch.float64, gen)
    state = make_state(300, torch.float64, gen)

    def loss(theta, grad, m, alpha, *params):
        theta_new, m_new = fused_op(theta, grad, m, 2, alpha, params[:len(weights)],
                                    params[len(weights):], 0.9, 10.0)
        return (theta_new.sin() * m_new).sum()

    def gradients(fn):
        leaves = [x.clone().requires_grad_() for x in (*state, *weights, *biases)]
        return torch.autograd.grad(fn(*leaves), leaves)

    compiled = torch.compile(loss, fullgraph=True)
    for got, want in zip(gradients(compiled), gradients(loss)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_bad_inputs_raise_clear_errors(device):
    gen = torch.Generator().manual_seed(10)
    weights, biases = make_net("odd", torch.float32, gen, device)
    theta, grad, m, alpha = make_state(9, torch.float32, gen, device)
    zeros = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
    ok = dict(theta=theta, grad=grad, m=m, t=1, alpha=alpha, weights=weights, biases=biases,
              beta=0.9, grad_clamp=10.0)
    bad_cases = [
        (dict(grad=grad.half()), "grad.*dtype"),
        (dict(m=m.double()), "m.*dtype"),
        (dict(alpha=alpha[:5]), "alpha.*shape"),
        (dict(theta=theta.view(3, 3), grad=grad.view(3, 3), m=m.view(3, 3), alpha=alpha.view(3, 3)),
         "theta.*1-D"),
        (dict(t=-1), "t must"),
        (dict(weights=weights[:2], biases=biases[:2]), "last layer"),
        (dict(weights=[zeros(7, 4)] + weights[1:]), "weights\\[0\\].*columns"),
        (dict(weights=[weights[0], zeros(33, 6), weights[2]]), "weights\\[1\\]"),
        (dict(biases=[biases[0], biases[1][:3], biases[2]]), "biases\\[1\\]"),
        (dict(weights=[zeros(65, 3), zeros(1, 65)], biases=[zeros(65), zeros(1)]),
         "65"),
        (dict(beta=1.5), "beta"),
        (dict(grad_clamp=0.0), "grad_clamp"),
    ]
    for change, pattern in bad_cases:
        args = {**ok, **change}
        ordered = [args[k] for k in ("theta", "grad", "m", "t", "alpha", "weights", "biases",
                                     "beta", "grad_clamp")]
        # The public wrapper (friendly Python checks) and the op itself (C++ checks) both refuse.
        with pytest.raises((TypeError, ValueError), match=pattern):
            fused_op(*ordered)
        with pytest.raises(RuntimeError, match="learnedopt::turtle_step"):
            torch.ops.learnedopt.turtle_step(*ordered)
    # The C++ messages name the offending layer.
    with pytest.raises(RuntimeError, match=r"weights\[1\] has dtype"):
        torch.ops.learnedopt.turtle_step(theta, grad, m, 1, alpha, [weights[0], weights[1].double(),
                                         weights[2]], biases, 0.9, 10.0)


def test_weight_gradients_are_deterministic(device):
    gen = torch.Generator().manual_seed(11)
    weights, biases = make_net("paper", torch.float32, gen, device)
    state = make_state(300007, torch.float32, gen, device)
    g = torch.randn(300007, generator=gen).to(device)
    first = run_with_grads(fused_op, state, weights, biases, 2, 10.0, g, g)
    again = run_with_grads(fused_op, state, weights, biases, 2, 10.0, g, g)
    for what, a, b in zip(names(6), first, again):
        assert torch.equal(a, b), f"{what} differs between two identical runs"
