"""The drop-in optimizers' memory stays flat over many steps (a bounded run of
scripts/optimizer_memory.py, whose 10,000-step output is committed in results/reliability/),
and the measurement catches a leak when there is one."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import optimizer_memory  # noqa: E402

STEPS, WARMUP = 600, 200
# Looser than the script's 1 % because this process also holds everything the other tests
# left behind; a leak of one state buffer per step of the LSTM (h and c, 2 x 20 floats per
# coordinate) would add 16 MiB over these steps.
MAX_GROWTH = 0.02


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the script runs: on a shared machine two spinning OpenMP threads per
    step make the run many times slower without changing what it measures."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(optimizer_memory.OPTIMIZERS))
def test_memory_stays_flat_over_many_steps(name):
    result = optimizer_memory.measure(optimizer_memory.OPTIMIZERS[name], STEPS, WARMUP,
                                      sample_every=200)
    assert result["python_objects_growth"] <= 0, result["samples"]
    assert result["tensors_growth"] <= 0, result["samples"]
    assert result["rss_growth_fraction"] < MAX_GROWTH, result["samples"]
    assert optimizer_memory.passes(result, MAX_GROWTH)


def test_the_measurement_catches_a_leak():
    kept = []

    def leaky_hook(optimizer, args, kwargs):  # a per-step cache that never empties
        kept.append(torch.ones(64 * 1024))  # 256 KiB per step

    result = optimizer_memory.measure(optimizer_memory.MetaSGD, 300, 100, sample_every=100,
                                      step_hook=leaky_hook)
    assert result["tensors_growth"] == 200
    assert result["rss_growth_fraction"] > MAX_GROWTH
    assert not optimizer_memory.passes(result, MAX_GROWTH)
