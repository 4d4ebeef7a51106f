"""The fused meta_lstm_step (forward and backward) against the pure-PyTorch reference (SPEC §2)."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from learnedopt import ops, reference
from learnedopt.ops import _backend
from learnedopt.ops.meta_lstm import INPUT_NAMES
from tests import cuda_emulation
from tests.conftest import cpu_capability

CPU_FUSED = _backend.available("cpu", "meta_lstm_step")
needs_cpu_kernel = pytest.mark.skipif(not CPU_FUSED, reason="learnedopt._C is not built")
pytestmark = needs_cpu_kernel

CAPABILITIES = ("baseline", "avx2", "avx512")
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def make_inputs(n, hidden=20, input_size=4, dtype=torch.float64, seed=0, device="cpu"):
    """Random inputs of the magnitudes meta-training sees (weights as LSTMCell's init or so)."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return ((torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale).to(dtype)

    w = 1.0 / math.sqrt(hidden)
    grad = r(n, scale=1.0) * torch.exp(r(n, scale=8.0).to(torch.float64)).to(dtype)  # many scales
    t = [r(n), grad, r(()).abs() + 0.1, r(n, hidden), r(n, hidden), r(n, scale=3.0),
         r(n, scale=3.0), r(4 * hidden, input_size, scale=w), r(4 * hidden, hidden, scale=w),
         r(4 * hidden, scale=w), r(4 * hidden, scale=w), r(hidden + 2, scale=0.5), r(1) + 4.0,
         r(hidden + 2, scale=0.5), r(1) - 4.0]
    return [x.to(device) for x in t]


def output_grads(outputs, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(o.shape, generator=gen, dtype=torch.float64) * 2 - 1).to(o)
            for o in outputs]


def run(backend, inputs, grads_out=None):
    """Forward (and, given output gradients, backward) of one backend: (outputs, input grads)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    with ops.use_backend(backend):
        outs = ops.meta_lstm_step(*leaves)
    if grads_out is None:
        return [o.detach() for o in outs], None
    grads = torch.autograd.grad(outs, leaves, grads_out, allow_unused=True, materialize_grads=True)
    return [o.detach() for o in outs], list(grads)


def assert_close(actual, expected, name, dtype):
    """rtol per element; atol scaled to the tensor's magnitude (sums over n coordinates included)."""
    tol = TOL[dtype]
    finite = expected[torch.isfinite(expected)]
    scale = finite.abs().max().item() if finite.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * max(scale, 1e-30),
                               equal_nan=True, msg=lambda m: f"{name}: {m}")


def compare(inputs, dtype, backward=True):
    ref_out, _ = run("reference", inputs)
    g = output_grads(ref_out) if backward else None
    ref_out, ref_grads = run("reference", inputs, g)
    out, grads = run("fused", inputs, g)
    for name, a, e in zip(("theta_new", "h_new", "c_new", "f", "i"), out, ref_out):
        assert_close(a, e, name, dtype)
    if backward:
        for name, a, e in zip(INPUT_NAMES, grads, ref_grads):
            assert a.shape == e.shape, name
            assert_close(a, e, f"d {name}", dtype)
    return out, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("input_size", [4, 1])
@pytest.mark.parametrize("hidden", [20, 7])
@pytest.mark.parametrize("n", [1, 7, 1000, 100003])
def test_matches_reference(n, hidden, input_size, dtype, device):
    compare(make_inputs(n, hidden, input_size, dtype, seed=n + hidden, device=device), dtype)


# The generic kernel's extremes: hidden 1, and 64, whose CUDA backward stages more than the 48 KiB
# of shared memory a kernel gets without opting in (float32 and float64 alike).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("input_size", [4, 1])
@pytest.mark.parametrize("hidden", [1, 64])
def test_smallest_and_largest_hidden_sizes(hidden, input_size, dtype, device):
    for n in (3, 517):
        compare(make_inputs(n, hidden, input_size, dtype, seed=n + hidden, device=device), dtype)


def test_more_coordinates_than_one_grid(cuda_device):
    """The forward kernel's grid-stride loop going round several times: on a GPU with a million
    coordinates, emulated with a 1-SM GPU (grids of 32 blocks); the backward's tile loop strides
    past 1024 blocks of 64 (hidden 20) or 32 coordinates."""
    n = 10007 if cuda_device.emulated else 1_000_003
    with cuda_emulation.multiprocessors(1) if cuda_device.emulated else contextlib.nullcontext():
        compare(make_inputs(n, 20, 4, torch.float32, seed=21, device=cuda_device), torch.float32)
        compare(make_inputs(n, 7, 1, torch.float64, seed=22, device=cuda_device), torch.float64)
    compare(make_inputs(70001, 20, 1, torch.float32, seed=23, device=cuda_device), torch.float32)


@pytest.mark.parametrize("capability", CAPABILITIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_cpu_capability(capability, dtype):
    inputs = make_inputs(2053, 20, 4, dtype, seed=3)  # not a multiple of any SIMD width
    with cpu_capability(capability):
        compare(inputs, dtype)
    with cpu_capability(capability):
        compare(make_inputs(37, 9, 1, dtype, seed=4), dtype)


def edge_gradients(dtype):
    thr = torch.tensor(math.exp(-10.0), dtype=dtype)
    below = torch.nextafter(thr, torch.zeros((), dtype=dtype))
    above = torch.nextafter(thr, torch.ones((), dtype=dtype))
    tiny = torch.finfo(dtype).tiny
    vals = [0.0, thr, -thr, below, -below, above, -above, 1e30, -1e30, tiny / 4, -tiny / 4,
            tiny, 1.0, -1.0]
    return torch.stack([torch.as_tensor(v, dtype=dtype) for v in vals])


@pytest.mark.parametrize("capability", CAPABILITIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss", [0.0, "thr", 1e30, 2.5, 1e-20])
def test_edge_values(capability, dtype, loss):
    edges = edge_gradients(dtype)
    n = 3 * edges.numel()  # the edges land in several SIMD lanes and in the tail
    inputs = make_inputs(n, 20, 4, dtype, seed=5)
    inputs[1] = edges.repeat(3)
    thr = math.exp(-10.0)
    inputs[2] = torch.tensor(thr if loss == "thr" else loss, dtype=dtype)
    with cpu_capability(capability):
        out, grads = compare(inputs, dtype)
    for t in (*out, grads[0], grads[1], grads[3], grads[4]):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("capability", CAPABILITIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("input_size", [4, 1])
def test_nan_gradient_stays_in_its_coordinate(capability, dtype, input_size):
    n, bad = 37, 18
    inputs = make_inputs(n, 20, input_size, dtype, seed=6)
    inputs[1][bad] = float("nan")
    with cpu_capability(capability):
        out, grads = compare(inputs, dtype)
    theta_new = out[0]
    assert torch.isnan(theta_new[bad])
    others = torch.arange(n) != bad
    for t in (*out, grads[0], grads[1], grads[3], grads[4], grads[5], grads[6]):
        assert torch.isfinite(t[others]).all()


def test_gradcheck_float64(device):
    for input_size in (4, 1):
        inputs = make_inputs(5, 3, input_size, torch.float64, seed=7, device=device)
        leaves = [t.requires_grad_(True) for t in inputs]
        with ops.use_backend("fused"):
            assert torch.autograd.gradcheck(lambda *a: ops.meta_lstm_step(*a), leaves)


def test_opcheck(device):
    for input_size in (4, 1):
        inputs = make_inputs(9, 5, input_size, torch.float64, seed=8, device=device)
        args = (*inputs, 10.0, 0.0, False)
        torch.library.opcheck(torch.ops.learnedopt.meta_lstm_step.default, args)
        leaves = (*[t.clone().requires_grad_(True) for t in inputs], 10.0, 0.0, False)
        torch.library.opcheck(torch.ops.learnedopt.meta_lstm_step.default, leaves)
        outs = torch.ops.learnedopt.meta_lstm_step(*args)
        back_args = (*output_grads(outs), *inputs, 10.0, 0.0, False)
        torch.library.opcheck(torch.ops.learnedopt.meta_lstm_step_backward.default, back_args)


def test_opcheck_non_contiguous_inputs(device):
    """Fake and real kernels agree on the outputs' strides (contiguous) when h, c and w_hh are
    transposed views and theta is strided."""
    inputs = make_inputs(9, 5, 4, torch.float64, seed=14, device=device)
    for k in (3, 4, 8):  # h, c, w_hh
        inputs[k] = inputs[k].t().contiguous().t()
    inputs[0] = torch.stack([inputs[0], inputs[0]], dim=1)[:, 0]  # theta with stride 2
    assert not any(inputs[k].is_contiguous() for k in (0, 3, 4, 8))
    args = (*inputs, 10.0, 0.0, False)
    torch.library.opcheck(torch.ops.learnedopt.meta_lstm_step.default, args)
    outs = torch.ops.learnedopt.meta_lstm_step(*args)
    torch.library.opcheck(torch.ops.learnedopt.meta_lstm_step_backward.default,
                          (*output_grads(outs), *inputs, 10.0, 0.0, False))


# 1761: the reduction chunk depends on n below 16k coordinates (256 here); 100003: 2048.
@pytest.mark.parametrize("n", [1761, 100003])
def test_deterministic_across_runs_and_threads(n):
    inputs = make_inputs(n, 20, 4, torch.float32, seed=9)
    outs = run("fused", inputs)[0]
    g = output_grads(outs)
    threads = torch.get_num_threads()
    results = []
    try:
        for k in (2, 2, 1):
            torch.set_num_threads(k)
            results.append(run("fused", inputs, g))
    finally:
        torch.set_num_threads(threads)
    for out, grads in results[1:]:
        for a, b in zip(out + grads, results[0][0] + results[0][1]):
            assert torch.equal(a, b)


def make_learner(seed, device="cpu"):
    """A 1-8-8-1 MLP regression learner, its parameters as one flat vector."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(8, 1), (8,), (8, 8), (8,), (1, 8), (1,)]
    theta0 = torch.cat([torch.randn(s, generator=gen, dtype=torch.float64).flatten() * 0.5
                        for s in shapes]).to(device)
    x = (torch.rand(20, 1, generator=gen, dtype=torch.float64) * 10 - 5).to(device)
    y = 2.0 * torch.sin(x + 0.5)

    def loss(theta, xs=x, ys=y):
        params, k = [], 0
        for s in shapes:
            size = math.prod(s)
            params.append(theta[k:k + size].view(s))
            k += size
        a = torch.relu(xs @ params[0].T + params[1])
        a = torch.relu(a @ params[2].T + params[3])
        return ((a @ params[4].T + params[5] - ys) ** 2).mean()

    return theta0, loss


@pytest.mark.parametrize("second_order", [False, True])
@pytest.mark.parametrize("input_size", [4, 1])
def test_unrolled_meta_gradient(second_order, input_size, device):
    theta0, learner_loss = make_learner(10, device)
    n = theta0.numel()
    meta = make_inputs(n, 20, input_size, torch.float64, seed=11, device=device)[7:]  # the rule's weights

    def meta_gradient(backend):
        weights = [w.clone().requires_grad_(True) for w in meta]
        c0 = theta0.clone().requires_grad_(True)
        theta, h, c = c0, theta0.new_zeros(n, 20), theta0.new_zeros(n, 20)
        f, i = theta0.new_zeros(n), theta0.new_zeros(n)
        with ops.use_backend(backend):
            for _ in range(5):
                loss = learner_loss(theta)
                (g,) = torch.autograd.grad(loss, theta, create_graph=second_order)
                if not second_order:
                    g, loss = g.detach(), loss.detach()
                theta, h, c, f, i = ops.meta_lstm_step(theta, g, loss, h, c, f, i, *weights)
            meta_loss = learner_loss(theta)
            return torch.autograd.grad(meta_loss, [c0, *weights])

    expected, actual = meta_gradient("reference"), meta_gradient("fused")
    for a, e in zip(actual, expected):
        assert e.abs().sum() > 0
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)


def test_torch_compile_forward_and_backward_match_eager():
    """The C++ autograd kernel and the Python fake kernel together trace under torch.compile."""
    inputs = make_inputs(300, 20, 4, torch.float64, seed=13)

    def loss(*leaves):
        with ops.use_backend("fused"):
            theta_new, h, c, f, i = ops.meta_lstm_step(*leaves)
        return theta_new.sum() + (h * c).sum() + (f * i).sum()

    def gradients(fn):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        return torch.autograd.grad(fn(*leaves), leaves)

    compiled = torch.compile(loss, fullgraph=True)
    for got, want in zip(gradients(compiled), gradients(loss)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_double_backward_is_refused():
    inputs = [t.requires_grad_(True) for t in make_inputs(4, 5, 4, torch.float64, seed=12)]
    with ops.use_backend("fused"):
        theta_new = ops.meta_lstm_step(*inputs)[0]
    (d_theta,) = torch.autograd.grad(theta_new.sum(), inputs[0], create_graph=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        torch.autograd.grad(d_theta.sum(), inputs[3])


def bad_input_cases():
    def replaced(k, value):
        return lambda inputs: inputs[:k] + [value(inputs[k])] + inputs[k + 1:]

    return [
        ("int grad", replaced(1, lambda t: t.to(torch.int32)), "dtype"),
        ("half h", replaced(3, lambda t: t.half()), "dtype"),
        ("float64 c among float32", replaced(4, lambda t: t.double()), "dtype"),
        ("short f_prev", replaced(5, lambda t: t[:-1]), "f_prev"),
        ("w_hh shape", replaced(8, lambda t: t[:, :-1]), "w_hh"),
        ("w_ih with 3 columns", replaced(7, lambda t: t[:, :3]), "w_ih"),
        ("loss 2-D", replaced(2, lambda t: t.reshape(1, 1)), "loss"),
        ("per-task loss not dividing n", replaced(2, lambda t: t.expand(4).clone()), "loss"),
    ]


@pytest.mark.parametrize("case", bad_input_cases(), ids=lambda c: c[0])
def test_bad_inputs_raise_clear_errors(case, device):
    _, corrupt, word = case
    inputs = corrupt(make_inputs(6, 4, 4, torch.float32, seed=13, device=device))
    with ops.use_backend("fused"), pytest.raises((TypeError, ValueError), match=word):
        ops.meta_lstm_step(*inputs)
    # The C++ glue refuses the same input when the wrapper is bypassed.
    with pytest.raises(RuntimeError, match=word):
        torch.ops.learnedopt.meta_lstm_step(*inputs, 10.0, 0.0, False)


def test_hidden_above_64_and_device_mismatch_refused(device):
    inputs = make_inputs(3, 65, 4, torch.float32, seed=14, device=device)
    with pytest.raises(ValueError, match="hidden size 65"):
        ops.meta_lstm_step(*inputs)
    with pytest.raises(RuntimeError, match="hidden size 65"):
        torch.ops.learnedopt.meta_lstm_step(*inputs, 10.0, 0.0, False)
    inputs = make_inputs(3, 4, 4, torch.float32, seed=15, device=device)
    inputs[4] = inputs[4].to("meta")
    with pytest.raises(ValueError, match="c is on meta"):
        ops.meta_lstm_step(*inputs)


def test_non_contiguous_inputs(device):
    inputs = make_inputs(50, 20, 4, torch.float64, seed=16, device=device)
    # h and w_hh as transposed views, theta strided.
    inputs[3] = inputs[3].T.contiguous().T
    inputs[8] = inputs[8].T.contiguous().T
    inputs[0] = torch.stack([inputs[0], inputs[0]], 1)[:, 0]
    assert not inputs[3].is_contiguous() and not inputs[0].is_contiguous()
    compare(inputs, torch.float64)


def test_edge_values_nan_and_weight_gradient_determinism(device):
    for dtype in (torch.float32, torch.float64):
        edges = edge_gradients(dtype)
        inputs = make_inputs(3 * edges.numel(), 20, 4, dtype, seed=18, device=device)
        inputs[1] = edges.repeat(3).to(device)
        inputs[1][5] = float("nan")
        compare(inputs, dtype)
    inputs = make_inputs(300007, 20, 4, torch.float32, seed=19, device=device)
    outs = run("fused", inputs)[0]
    g = output_grads(outs)
    first, second = run("fused", inputs, g), run("fused", inputs, g)
    for a, b in zip(first[0] + first[1], second[0] + second[1]):
        assert torch.equal(a, b)


# ---- meta_lstm_step_inplace: the optimizers' step, state written over itself ----------------

STATE = (3, 4, 5, 6)  # h, c, f_prev, i_prev


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hidden,input_size,tasks", [(20, 4, 1), (20, 4, 3), (7, 1, 1), (64, 4, 5)])
def test_inplace_step_equals_the_functional_one(hidden, input_size, tasks, dtype, device):
    inputs = make_inputs(2055, hidden, input_size, dtype, seed=31 + hidden, device=device)
    if tasks > 1:  # one loss per task segment
        inputs[2] = torch.rand(tasks, generator=torch.Generator().manual_seed(5), dtype=dtype).to(device) + 0.1
    for backend in ("fused", "reference"):
        with ops.use_backend(backend):
            expected = ops.meta_lstm_step(*inputs)
            state = [t.clone() for t in inputs]
            theta_new = ops.meta_lstm_step_inplace(*state)
        # The same kernel (or reference) on the same inputs: bitwise the functional outputs.
        for got, want, name in zip([theta_new, *(state[k] for k in STATE)], expected,
                                   ("theta_new", "h", "c", "f", "i")):
            assert torch.equal(got, want), (backend, name)
        for k in set(range(len(inputs))) - set(STATE):  # everything else untouched
            assert torch.equal(state[k], inputs[k]), (backend, INPUT_NAMES[k])


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_inplace_step_on_every_cpu_capability(capability):
    inputs = make_inputs(1037, 20, 4, torch.float32, seed=33)
    with ops.use_backend("fused"), cpu_capability(capability):
        expected = ops.meta_lstm_step(*inputs)
        state = [t.clone() for t in inputs]
        theta_new = ops.meta_lstm_step_inplace(*state)
    assert torch.equal(theta_new, expected[0])
    for k, want in zip(STATE, expected[1:]):
        assert torch.equal(state[k], want), INPUT_NAMES[k]


def test_opcheck_inplace(device):
    for input_size in (4, 1):
        inputs = make_inputs(9, 5, input_size, torch.float64, seed=34, device=device)
        torch.library.opcheck(torch.ops.learnedopt.meta_lstm_step_inplace.default,
                              (*inputs, 10.0, 0.0, False))


def inplace_bad_cases():
    def replaced(k, value):
        return lambda inputs: inputs[:k] + [value(inputs)] + inputs[k + 1:]

    return [
        ("non-contiguous h", replaced(3, lambda i: i[3].t().contiguous().t()), "h is updated in place and must be contiguous"),
        ("c is h", replaced(4, lambda i: i[3]), "h is updated in place but shares memory with c"),
        ("f_prev is theta", replaced(5, lambda i: i[0]), "f_prev is updated in place but shares memory with theta"),
        ("i_prev inside grad", replaced(6, lambda i: i[1][:]), "i_prev is updated in place but shares memory with grad"),
    ]


@pytest.mark.parametrize("case", inplace_bad_cases(), ids=lambda c: c[0])
def test_inplace_step_refuses_state_it_cannot_write(case, device):
    _, corrupt, message = case
    inputs = corrupt(make_inputs(6, 4, 4, torch.float32, seed=35, device=device))
    before = [t.clone() for t in inputs]
    with ops.use_backend("fused"), pytest.raises(ValueError, match=message):
        ops.meta_lstm_step_inplace(*inputs)
    with pytest.raises(RuntimeError, match=message):  # the C++ glue, when the wrapper is bypassed
        torch.ops.learnedopt.meta_lstm_step_inplace(*inputs, 10.0, 0.0, False)
    assert all(torch.equal(a, b) for a, b in zip(inputs, before))  # nothing was written


def test_inplace_step_has_no_backward():
    inputs = make_inputs(6, 4, 4, torch.float32, seed=36)
    inputs[3].requires_grad_(True)
    with pytest.raises(RuntimeError, match="h requires grad; the in-place step has no backward"):
        ops.meta_lstm_step_inplace(*inputs)
