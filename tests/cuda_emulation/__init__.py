"""The CUDA kernels of csrc/cuda, executed on the CPU under HIP-CPU (README.md in this folder).

Tests reach them through :func:`emulated_kernels`: while it is active, the CPU kernels of the
``learnedopt`` ops are replaced by forwarders to the ``learnedopt_emulated`` ops — the CUDA torch
glue and kernels built for CPU tensors (build.py) — so that the package's whole path (Python
wrapper, C++ autograd, fake kernels, vmap rules) runs unchanged on top of the CUDA code.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

# A skip for want of the emulation starts with this; tests/conftest.py fails such a skip when
# LEARNEDOPT_REQUIRE_EMULATION=1 (CI), and lets it through elsewhere.
SKIP_PREFIX = "CUDA emulation unavailable"
REQUIRE_VARIABLE = "LEARNEDOPT_REQUIRE_EMULATION"
# A prebuilt library to load instead of building one (the mutation check's mutants).
LIBRARY_VARIABLE = "LEARNEDOPT_EMULATION_LIBRARY"
OPS = ("preprocess", "preprocess_backward", "meta_lstm_step", "meta_lstm_step_backward",
       "meta_lstm_step_inplace", "turtle_step",
       "turtle_step_backward")

_loaded: bool | None = None
_reason: str | None = None


def load() -> bool:
    """Builds (or finds) and loads the emulated library once per process; False, with
    :func:`unavailable_reason` saying why, when HIP-CPU or TBB is missing."""
    global _loaded, _reason
    if _loaded is not None:
        return _loaded
    from tests.cuda_emulation import build

    try:
        path = os.environ.get(LIBRARY_VARIABLE)
        loaded = False
        if not path:
            lib, loaded = build.build()
            path = str(lib)
        if not loaded:
            torch.ops.load_library(path)
        _loaded = True
    except build.Unavailable as exc:
        _loaded, _reason = False, f"{SKIP_PREFIX}: {exc}"
    except OSError as exc:  # built, but its TBB went missing since
        _loaded, _reason = False, f"{SKIP_PREFIX}: the emulated library does not load: {exc}"
    return _loaded


def unavailable_reason() -> str | None:
    return None if load() else _reason


def emulator():
    """The emulator's own ops (controls.cpp): launches, SM count, probes."""
    load()
    return torch.ops.learnedopt_emulated


def launches() -> tuple[int, int]:
    """(completed, failed) emulated kernel launches so far in this process."""
    completed, failed = emulator().emulator_launches()
    return completed, failed


@contextlib.contextmanager
def multiprocessors(count: int):
    """Emulates a GPU with ``count`` SMs for the block: grid-stride kernels get smaller grids, so
    their loops stride several times at sizes a test can afford."""
    previous = emulator().emulator_set_multiprocessors(count)
    try:
        yield
    finally:
        emulator().emulator_set_multiprocessors(previous)


@contextlib.contextmanager
def device(name: str):
    """Emulates another GPU for the block ("A100", "RTX 4090", "T4"; the default is "H100"): its
    SM count and shared-memory limits."""
    previous = emulator().emulator_set_device(name)
    try:
        yield
    finally:
        emulator().emulator_set_device(previous)


def _forwarder(op):
    def forward(*args, **kwargs):
        return op(*args, **kwargs)
    return forward


@contextlib.contextmanager
def emulated_kernels():
    """Within the block, the fused ops on CPU tensors run the emulated CUDA kernels (the CPU
    kernels are back afterwards)."""
    if not load():
        raise RuntimeError(_reason)
    library = torch.library.Library("learnedopt", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Oo]verrid")
            for name in OPS:
                library.impl(name, _forwarder(getattr(torch.ops.learnedopt_emulated, name).default), "CPU")
        yield
    finally:
        library._destroy()
