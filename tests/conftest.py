"""Shared test fixtures and helpers."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

from tests import cuda_emulation

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CPU_CAPABILITIES = ("baseline", "avx2", "avx512")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@contextlib.contextmanager
def cpu_capability(name: str):
    """Run the fused CPU kernels on one SIMD path (the extension reads this per call)."""
    previous = os.environ.get("LEARNEDOPT_CPU_CAPABILITY")
    os.environ["LEARNEDOPT_CPU_CAPABILITY"] = name
    try:
        yield
    finally:
        if previous is None:
            del os.environ["LEARNEDOPT_CPU_CAPABILITY"]
        else:
            os.environ["LEARNEDOPT_CPU_CAPABILITY"] = previous


class KernelDevice(str):
    """The device a fused-kernel test runs on, usable wherever torch takes a device string: "cpu",
    "cuda" (a GPU), or "cpu" with the CUDA kernels emulated (name "emulated", see
    tests/cuda_emulation): the fused ops on CPU tensors then run csrc/cuda's kernels and glue."""

    name: str
    emulated: bool

    def __new__(cls, name: str):
        self = super().__new__(cls, "cuda" if name == "cuda" else "cpu")
        self.name, self.emulated = name, name == "emulated"
        return self


def _kernel_device(request):
    name = request.param
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU")
        from learnedopt import ops
        if not ops.available("cuda"):
            pytest.skip("no CUDA kernels in this build (bash bench/gpu_all.sh builds them on a GPU machine)")
        yield KernelDevice(name)
    elif name == "emulated":
        reason = cuda_emulation.unavailable_reason()
        if reason:
            pytest.skip(reason)
        with cuda_emulation.emulated_kernels():
            yield KernelDevice(name)
    else:
        yield KernelDevice(name)


# One test body for every device with fused kernels: parametrise by taking `device` (CPU, GPU,
# emulated GPU) or `cuda_device` (the CUDA kernels only: GPU and emulated).
device = pytest.fixture(params=("cpu", "cuda", "emulated"))(_kernel_device)
cuda_device = pytest.fixture(params=("cuda", "emulated"))(_kernel_device)


_GPU_WORDS = ("cuda", "gpu")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With LEARNEDOPT_NO_CPU_SKIPS=1 (CI), a skip whose reason is not a missing GPU fails the test:
    a CPU test must never be skipped silently because, say, the extension did not build. A skip for
    want of the CUDA emulation (HIP-CPU or TBB missing) fails under LEARNEDOPT_REQUIRE_EMULATION=1
    (CI) and is let through otherwise, its reason shown by -rs."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped:
        return
    reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
    if cuda_emulation.SKIP_PREFIX in reason:
        if os.environ.get(cuda_emulation.REQUIRE_VARIABLE) == "1":
            report.outcome = "failed"
            report.longrepr = f"emulated CUDA test skipped under {cuda_emulation.REQUIRE_VARIABLE}=1: {reason}"
        return
    if os.environ.get("LEARNEDOPT_NO_CPU_SKIPS") != "1":
        return
    if not any(word in reason.lower() for word in _GPU_WORDS):
        report.outcome = "failed"
        report.longrepr = f"CPU test skipped under LEARNEDOPT_NO_CPU_SKIPS=1: {reason}"
