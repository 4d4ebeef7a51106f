"""Peak memory of a block of code, in bytes above what was in use when it started.

CUDA: the caching allocator's own peak counter (exact for tensors). CPU: tracemalloc does not see
tensor storage, so the process's peak resident set (VmHWM) is reset through /proc/self/clear_refs
and read back; this counts every page touched, tensors or not, and misses memory the allocator
reuses from earlier frees, so it is an estimate. Where the reset is not possible the result is None.
"""

from __future__ import annotations

from pathlib import Path

import torch

METHOD = {"cuda": "torch.cuda.max_memory_allocated minus memory_allocated at the start",
          "cpu": "peak resident set (VmHWM, reset via /proc/self/clear_refs) minus resident set at the start"}


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_cpu_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.bytes`` (None where unmeasurable)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.bytes: int | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._ok = _reset_cpu_peak()
            self._start = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            peak = _status_kib("VmHWM")
            if self._ok and peak is not None and self._start is not None:
                self.bytes = max(0, peak - self._start) * 1024
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
