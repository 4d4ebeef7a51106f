"""Peak tensor memory of a block of code, in bytes above what was allocated when it started.

CUDA: the caching allocator's own peak counter. CPU: tracemalloc does not see tensor storage and
the resident set hides what the allocator reuses, so the block runs under torch.profiler with
profile_memory=True and the allocation/free records are summed in time order; the largest running
sum is the peak (tensors only, exact, at the price of the profiler's overhead on that one run).
"""

from __future__ import annotations

import gc
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

METHOD = {"cuda": "torch.cuda.max_memory_allocated minus memory_allocated at the start",
          "cpu": "largest running sum of torch.profiler's CPU allocation records (tensors only)"}


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.bytes``."""

    def __init__(self, device: torch.device):
        self.device = device
        self.bytes: int | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._profiler.__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._start
            return False
        self._profiler.__exit__(*exc)
        if exc[0] is None:
            records = [e for e in self._profiler.profiler.kineto_results.events()
                       if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
            running = peak = 0
            for e in sorted(records, key=lambda e: e.start_ns()):
                running += e.nbytes()  # negative for a free
                peak = max(peak, running)
            self.bytes = peak
        return False


def available_bytes(device: torch.device) -> int | None:
    """Memory a benchmark may still fill on ``device`` (None where unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---- leak probes (scripts/optimizer_memory.py, scripts/meta_training_memory.py) -----------------

def rss_bytes() -> int:
    """Current resident set size of this process (Linux: VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (this measurement needs Linux)")


def python_counts() -> tuple[int, int]:
    """(objects the garbage collector tracks, live tensors among them), after a full collection."""
    gc.collect()
    objects = gc.get_objects()
    # type(), not isinstance(): isinstance reads __class__, which some of torch's deprecated
    # module proxies answer with a warning.
    return len(objects), sum(1 for o in objects if issubclass(type(o), torch.Tensor))
