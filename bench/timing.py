"""How every benchmark here times a callable: warm-up, then samples of back-to-back calls until a
time budget is spent, then the median and spread of the per-call time.

Each sample runs ``calls_per_sample`` calls and is closed by a device synchronisation, so a sample
measures throughput (launches queue back to back, as in a training loop) rather than launch
latency, and the timer's own cost is spread over many calls when one call is tiny. The callable
receives the call index, so that it can rotate over several pre-allocated input copies.

``measure_interleaved`` times several callables that are to be compared by taking their samples
in turn (A, B, A, B, ...): a change of machine speed during the run (other load, clock changes)
then shifts all of them alike instead of biasing the ratio. Switching between two different
workloads has a cost of its own that neither pays when it runs alone (caches, branch predictors
and the allocator's free lists hold the other's state): ``switch_warmup_calls`` untimed calls
after each switch keep it out of the samples.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass
class Timing:
    """Seconds per call over ``samples`` samples of ``calls_per_sample`` calls each."""
    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    max_s: float
    samples: int
    calls_per_sample: int

    def as_dict(self) -> dict:
        return asdict(self)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What makes the host wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def measure(fn: Callable[[int], object], device: torch.device, budget_s: float = 1.0,
            warmup_s: float = 0.1, min_samples: int = 5, max_samples: int = 2000,
            min_sample_s: float = 1e-3, warmup_calls: int = 2) -> Timing:
    """Time ``fn(call_index)``.

    Warm-up: at least ``warmup_calls`` calls and ``warmup_s`` seconds (JIT compilation, allocator
    growth and lazy initialisation land here, not in the samples). Then ``calls_per_sample`` is
    chosen so that one sample lasts at least ``min_sample_s``, and samples are taken until
    ``budget_s`` is spent (at least ``min_samples``, at most ``max_samples``; a slow call may
    exceed the budget).
    """
    sync = synchronizer(device)
    calls = 0
    start = time.perf_counter()
    while calls < warmup_calls or time.perf_counter() - start < warmup_s:
        fn(calls)
        sync()
        calls += 1
    per_call = (time.perf_counter() - start) / calls
    calls_per_sample = max(1, math.ceil(min_sample_s / max(per_call, 1e-9)))

    samples: list[float] = []
    spent = 0.0
    while len(samples) < max_samples and (len(samples) < min_samples or spent < budget_s):
        elapsed, calls = _sample(fn, calls, calls_per_sample, sync)
        spent += elapsed
        samples.append(elapsed / calls_per_sample)
    return _summary(samples, calls_per_sample)


def measure_interleaved(fns: dict[str, Callable[[int], object]], device: torch.device,
                        budget_s: float = 1.0, min_samples: int = 5, max_samples: int = 2000,
                        min_sample_s: float = 1e-3, warmup_calls: int = 2,
                        switch_warmup_calls: int = 0) -> dict[str, Timing]:
    """Time each ``fns[name](call_index)``, their samples taken in turn; ``budget_s`` is the
    time spent on samples of all of them together. Warm-up as in :func:`measure` (by calls),
    plus ``switch_warmup_calls`` untimed calls before every sample."""
    sync = synchronizer(device)
    calls, calls_per_sample = {}, {}
    for name, fn in fns.items():
        start = time.perf_counter()
        for k in range(warmup_calls):
            fn(k)
        sync()
        per_call = (time.perf_counter() - start) / max(warmup_calls, 1)
        calls[name] = warmup_calls
        calls_per_sample[name] = max(1, math.ceil(min_sample_s / max(per_call, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    spent = 0.0
    while True:
        taken = len(next(iter(samples.values())))
        if taken >= max_samples or (taken >= min_samples and spent >= budget_s):
            break
        for name, fn in fns.items():
            for _ in range(switch_warmup_calls):
                fn(calls[name])
                calls[name] += 1
            elapsed, calls[name] = _sample(fn, calls[name], calls_per_sample[name], sync)
            spent += elapsed
            samples[name].append(elapsed / calls_per_sample[name])
    return {name: _summary(samples[name], calls_per_sample[name]) for name in fns}


def _sample(fn, calls: int, calls_per_sample: int, sync) -> tuple[float, int]:
    """(Seconds for calls_per_sample calls of fn, the next call index)."""
    sync()
    t0 = time.perf_counter()
    for _ in range(calls_per_sample):
        fn(calls)
        calls += 1
    sync()
    return time.perf_counter() - t0, calls


def _summary(samples: list[float], calls_per_sample: int) -> Timing:
    samples = sorted(samples)
    if len(samples) >= 4:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1, q3 = samples[0], samples[-1]
    return Timing(statistics.median(samples), q1, q3, samples[0], samples[-1], len(samples),
                  calls_per_sample)
