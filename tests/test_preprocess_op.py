"""The fused preprocess op against its pure-PyTorch reference (SPEC §1)."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from learnedopt import ops, reference
from tests import cuda_emulation
from tests.conftest import CPU_CAPABILITIES, cpu_capability

pytestmark = pytest.mark.skipif(not ops.available("cpu", "preprocess"),
                                reason="the fused CPU kernels are not built")

THR = math.exp(-10.0)


def edge_values(dtype: torch.dtype) -> torch.Tensor:
    tiny = torch.finfo(dtype).tiny
    thr = torch.tensor(THR, dtype=dtype).item()
    values = [0.0, -0.0, thr, -thr, math.nextafter(thr, 0), math.nextafter(thr, 1),
              -math.nextafter(thr, 1), thr * (1 + 1e-6), thr * (1 - 1e-6), 1e-30, -1e-30,
              tiny, tiny / 4, -tiny / 4, 1.0, -1.0, 3.0, 1e30, -1e30,
              torch.finfo(dtype).max, -torch.finfo(dtype).max,
              math.inf, -math.inf, math.nan]
    return torch.tensor(values, dtype=dtype)


def random_values(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Log-uniform magnitudes over many decades, both signs, so both branches are well covered.
    mags = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-25.0, 25.0, generator=g))
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    return (mags * signs).to(dtype)


def both(x: torch.Tensor, p: float = 10.0, log_eps: float = 0.0, strict: bool = False):
    """(output, input gradient) of the fused op and of the reference for one random cotangent."""
    cot = torch.randn(*x.shape, 2, dtype=x.dtype, generator=torch.Generator().manual_seed(1)).to(x.device)
    results = []
    for backend in ("fused", "reference"):
        xi = x.clone().requires_grad_()
        with ops.use_backend(backend):
            y = ops.preprocess(xi, p, log_eps, strict)
        (y * cot).sum().backward()
        results.append((y.detach(), xi.grad))
    return results


TOL = {torch.float32: dict(rtol=1e-5, atol=1e-30), torch.float64: dict(rtol=1e-10, atol=1e-300)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 7, 1000, 100_003])
@pytest.mark.parametrize("capability", CPU_CAPABILITIES)
def test_matches_reference_on_random_inputs(dtype, n, capability):
    x = random_values(n, dtype, seed=n)
    with cpu_capability(capability):
        (y, gx), (yr, gxr) = both(x)
    torch.testing.assert_close(y, yr, **TOL[dtype])
    torch.testing.assert_close(gx, gxr, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("capability", CPU_CAPABILITIES)
@pytest.mark.parametrize("options", [dict(), dict(strict=True), dict(log_eps=1e-8), dict(p=5.0)])
def test_matches_reference_on_edge_values(dtype, capability, options):
    x = edge_values(dtype).repeat(3)  # spans SIMD bodies and scalar tails alike
    with cpu_capability(capability):
        (y, gx), (yr, gxr) = both(x, **options)
    torch.testing.assert_close(y, yr, equal_nan=True, **TOL[dtype])
    torch.testing.assert_close(gx, gxr, equal_nan=True, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_edge_value_policy(dtype, device):
    """Finite inputs give finite outputs and gradients; ±Inf -> (+Inf, ±1) with gradient 0;
    NaN -> (NaN, NaN) with a NaN gradient; both outputs are continuous at |x| = e^-p."""
    x = edge_values(dtype).to(device)
    (y, gx), _ = both(x)
    finite = torch.isfinite(x)
    assert torch.isfinite(y[finite]).all() and torch.isfinite(gx[finite]).all()
    inf = torch.isinf(x)
    assert torch.equal(y[inf, 0], torch.full_like(y[inf, 0], math.inf))
    assert torch.equal(y[inf, 1], torch.sign(x[inf]))
    assert torch.equal(gx[inf], torch.zeros_like(gx[inf]))
    nan = torch.isnan(x)
    assert torch.isnan(y[nan]).all() and torch.isnan(gx[nan]).all()
    thr = torch.tensor(THR, dtype=dtype, device=device)
    at = ops.preprocess(torch.stack([thr, -thr]))
    torch.testing.assert_close(at, torch.tensor([[-1.0, 1.0], [-1.0, -1.0]], dtype=dtype, device=device),
                               rtol=1e-6, atol=1e-6)
    below = ops.preprocess(torch.stack([thr * (1 - 1e-6), -thr * (1 - 1e-6)]))
    torch.testing.assert_close(below, at, rtol=1e-5, atol=1e-5)


def test_exact_derivatives_of_each_branch(device):
    x = torch.tensor([0.5, -2.0, 1e-6, -1e-7, 0.0], dtype=torch.float64, device=device, requires_grad=True)
    y = ops.preprocess(x)
    d1, = torch.autograd.grad(y[:, 0].sum(), x, retain_graph=True)
    d2, = torch.autograd.grad(y[:, 1].sum(), x)
    big = x.detach().abs() >= THR
    expected_d1 = torch.where(big, 1.0 / (10.0 * x.detach()), torch.zeros_like(x))
    expected_d2 = torch.where(big, torch.zeros_like(x), torch.full_like(x, math.exp(10.0)))
    torch.testing.assert_close(d1, expected_d1, rtol=1e-12, atol=0)
    torch.testing.assert_close(d2, expected_d2, rtol=1e-12, atol=0)


def test_gradcheck_float64(device):
    x = random_values(64, torch.float64, seed=3).to(device)
    x = x[torch.isfinite(x) & ((x.abs() - THR).abs() > 1e-9)].requires_grad_()  # not on the kink
    with ops.use_backend("fused"):
        assert torch.autograd.gradcheck(lambda t: ops.preprocess(t), (x,))


def test_opcheck(device):
    for x in (random_values(33, torch.float32, 4).to(device),
              random_values(5, torch.float64, 5).reshape(5, 1).to(device)):
        torch.library.opcheck(torch.ops.learnedopt.preprocess.default, (x, 10.0, 0.0, False))
        torch.library.opcheck(torch.ops.learnedopt.preprocess.default,
                              (x.requires_grad_(), 10.0, 1e-8, True))


def test_any_shape_and_non_contiguous_input(device):
    x = random_values(60, torch.float32, 6).to(device).reshape(3, 4, 5).transpose(0, 2)
    assert not x.is_contiguous()
    with ops.use_backend("fused"):
        y = ops.preprocess(x)
    assert y.shape == (5, 4, 3, 2)
    torch.testing.assert_close(y, reference.preprocess(x), rtol=1e-5, atol=1e-30)


def test_deterministic_across_runs_and_threads():
    x = random_values(200_001, torch.float32, 7).requires_grad_()
    outs = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            y = ops.preprocess(x)
            g, = torch.autograd.grad(y.sum(), x)
            outs.append((y, g))
    finally:
        torch.set_num_threads(previous)
    for y, g in outs[1:]:
        assert torch.equal(y, outs[0][0]) and torch.equal(g, outs[0][1])


def test_opcheck_non_contiguous_inputs(device):
    """Fake and real kernels agree on the outputs' strides (contiguous) whatever the inputs' layout:
    a transposed (dense) tensor and a strided one."""
    transposed = random_values(24, torch.float64, 12).to(device).view(4, 6).t()
    strided = random_values(40, torch.float64, 13).to(device)[::2]
    for x in (transposed, strided):
        torch.library.opcheck(torch.ops.learnedopt.preprocess.default,
                              (x.clone().requires_grad_(), 10.0, 0.0, False))
        grad_out = torch.randn(*x.shape, 2, dtype=torch.float64, device=device)
        torch.library.opcheck(torch.ops.learnedopt.preprocess_backward.default,
                              (grad_out, x, 10.0, 0.0, False))


def test_double_backward_is_refused_clearly():
    x = random_values(10, torch.float64, 8).requires_grad_()
    y = ops.preprocess(x)
    g, = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        g.sum().backward()


@pytest.mark.parametrize("bad, error, match", [
    (torch.ones(3, dtype=torch.float16), TypeError, "float16"),
    (torch.ones(3, dtype=torch.bfloat16), TypeError, "bfloat16"),
    (torch.ones(3, dtype=torch.int64), TypeError, "int64"),
    ([1.0, 2.0], TypeError, "torch.Tensor"),
])
def test_bad_input_is_refused_clearly(bad, error, match):
    with pytest.raises(error, match=match):
        ops.preprocess(bad)


def test_bad_options_are_refused_clearly(device):
    with pytest.raises(ValueError, match="p must be"):
        ops.preprocess(torch.ones(2, device=device), p=0.0)
    with pytest.raises(ValueError, match="log_eps"):
        ops.preprocess(torch.ones(2, device=device), log_eps=-1.0)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.learnedopt.preprocess(torch.ones(2, dtype=torch.float16, device=device), 10.0, 0.0, False)


def test_torch_compile_runs_the_fused_op():
    x = random_values(1000, torch.float32, 9)
    compiled = torch.compile(lambda t: ops.preprocess(t) * 2, fullgraph=True)
    torch.testing.assert_close(compiled(x), reference.preprocess(x) * 2, rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", [dict(), dict(strict=True), dict(log_eps=1e-8), dict(p=5.0)])
def test_matches_reference_on_edge_and_random_values(dtype, options, device):
    x = torch.cat([edge_values(dtype), random_values(100_003, dtype, 10)]).to(device)
    (y, gx), (yr, gxr) = both(x, **options)
    torch.testing.assert_close(y, yr, equal_nan=True, **TOL[dtype])
    torch.testing.assert_close(gx, gxr, equal_nan=True, **TOL[dtype])
    torch.testing.assert_close(ops.preprocess(x, **options), y, rtol=0, atol=0, equal_nan=True)  # a re-run


def test_more_coordinates_than_one_grid(cuda_device):
    """The grid-stride loops going round several times: on a GPU with a million coordinates,
    emulated with a 1-SM GPU (grids of 32 blocks of 256)."""
    n = 30011 if cuda_device.emulated else 1_100_003
    with cuda_emulation.multiprocessors(1) if cuda_device.emulated else contextlib.nullcontext():
        for dtype in (torch.float32, torch.float64):
            (y, gx), (yr, gxr) = both(random_values(n, dtype, 14).to(cuda_device))
            torch.testing.assert_close(y, yr, **TOL[dtype])
            torch.testing.assert_close(gx, gxr, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_of_a_misaligned_grad_out(dtype, cuda_device):
    """A contiguous grad_out at an odd element offset: the CUDA kernel loads it as aligned pairs, so
    the glue copies it first (the emulator fails a misaligned pair load, as a GPU does)."""
    x = random_values(1001, dtype, 11)
    g = torch.randn(2 * x.numel() + 1, dtype=dtype, generator=torch.Generator().manual_seed(2))
    g_odd = g.to(cuda_device)[1:].view(x.numel(), 2)
    assert g_odd.is_contiguous() and g_odd.storage_offset() == 1
    got = torch.ops.learnedopt.preprocess_backward(g_odd, x.to(cuda_device), 10.0, 0.0, False)
    leaf = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(reference.preprocess(leaf), leaf, g[1:].view(x.numel(), 2))
    torch.testing.assert_close(got.cpu(), want, **TOL[dtype])
