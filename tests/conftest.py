"""Shared test fixtures and helpers."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

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


_GPU_WORDS = ("cuda", "gpu")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With LEARNEDOPT_NO_CPU_SKIPS=1 (CI), a skip whose reason is not a missing GPU fails the test:
    a CPU test must never be skipped silently because, say, the extension did not build."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("LEARNEDOPT_NO_CPU_SKIPS") != "1" or not report.skipped:
        return
    reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
    if not any(word in reason.lower() for word in _GPU_WORDS):
        report.outcome = "failed"
        report.longrepr = f"CPU test skipped under LEARNEDOPT_NO_CPU_SKIPS=1: {reason}"
