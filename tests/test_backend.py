"""The backend choice: explicit, queryable, and never a silent fallback when "fused" is asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from learnedopt import ops, reference
from tests.conftest import REPO


def test_default_is_auto_and_use_backend_restores():
    assert ops.get_backend() == "auto"
    with ops.use_backend("reference"):
        assert ops.get_backend() == "reference"
        with ops.use_backend("fused"):
            assert ops.get_backend() == "fused"
        assert ops.get_backend() == "reference"
    assert ops.get_backend() == "auto"


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown learnedopt backend 'cuda'"):
        ops.set_backend("cuda")


def test_fused_without_a_kernel_for_the_device_raises():
    x = torch.ones(4, device="meta")
    with ops.use_backend("fused"), pytest.raises(RuntimeError, match="no fused kernel exists for device 'meta'"):
        ops.preprocess(x)


def test_reference_backend_runs_the_reference():
    x = torch.linspace(-3, 3, 11)
    with ops.use_backend("reference"):
        assert torch.equal(ops.preprocess(x), reference.preprocess(x))


def test_available_and_describe_report_the_build():
    line = ops.describe()
    assert line.startswith("backend=auto; fused kernels")
    for op in ("preprocess", "meta_lstm_step", "turtle_step"):
        assert isinstance(ops.available("cpu", op), bool)
    assert ops.available("meta") is False


def test_import_works_without_the_extension():
    """A CPU-only install whose _C is missing or broken still imports and runs the reference."""
    code = (
        "import sys; sys.modules['learnedopt._C'] = None\n"
        "import torch, learnedopt\n"
        "from learnedopt import ops\n"
        "print(ops.describe())\n"
        "print(ops.preprocess(torch.tensor([1.0, 0.0])).tolist())\n"
        "try:\n"
        "    ops.set_backend('fused'); ops.preprocess(torch.ones(1))\n"
        "except RuntimeError as e:\n"
        "    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert "fused kernels: none" in out
    assert "[[0.0, 1.0], [-1.0, 0.0]]" in out
    assert "refused: learnedopt.ops.preprocess: backend 'fused' was requested" in out
