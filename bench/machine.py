"""What a result was measured on (recorded in every JSON file), and the two ceilings of the
roofline measured on the same device in the same run: memory bandwidth and the FP32 rate."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import torch

from bench.timing import measure

REPO_ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """HEAD of this checkout, with "+dirty" when tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True,
                              timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git not available)"


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: a busy machine makes every timing here slower and noisier."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def setup_device(name: str, threads: int | None) -> torch.device:
    """The device to benchmark, with torch's CPU thread count set (default: every usable core)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"--device {name!r}: expected cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {name}: expected cpu or cuda")
    torch.set_num_threads(threads or usable_cores())
    return device


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def describe_machine(device: torch.device) -> dict:
    info = {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu_model": None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": load_average(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu_model"] = props.name
        info["gpu_memory_bytes"] = props.total_memory
        info["gpu_capability"] = f"{props.major}.{props.minor}"
    return info


def run_header(benchmark: str, device: torch.device, argv: list[str] | None = None) -> dict:
    """The fields every result file starts with."""
    from learnedopt import ops
    # The equivalent command line, whether the script ran as a file, as -m, or from main(argv).
    argv = sys.argv[1:] if argv is None else list(argv)
    info = describe_machine(device)
    load, cores = info["load_average"], usable_cores()
    if load and load[0] > 0.5 * cores:
        print(f"# warning: load average {load[0]} on {cores} cores: other processes are running, "
              f"timings will be slow and noisy", file=sys.stderr)
    return {
        "schema": "learnedopt-bench/1",
        "benchmark": benchmark,
        "device": device.type,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in ["python3", "-m", f"bench.{benchmark}", *argv]),
        "git_commit": git_commit(),
        "backend": ops.describe(),
        "machine": info,
    }


def measure_bandwidth(device: torch.device, nbytes: int, budget_s: float) -> float:
    """Bytes per second of a large float32 tensor copy, counting the read and the write."""
    n = nbytes // 4
    src = torch.empty(n, device=device).uniform_()
    dst = torch.empty_like(src)
    t = measure(lambda _: dst.copy_(src), device, budget_s=budget_s, min_samples=3)
    return 2 * n * 4 / t.median_s


def measure_fp32_rate(device: torch.device, size: int, budget_s: float) -> float:
    """FLOP per second of a float32 square matmul (2·size³ per product), TF32 switched off so that
    it is the true FP32 rate the fused kernels compete with."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    out = torch.empty_like(a)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        t = measure(lambda _: torch.mm(a, b, out=out), device, budget_s=budget_s, min_samples=3)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * size ** 3 / t.median_s


def measure_ceilings(device: torch.device, quick: bool) -> dict:
    """Memory bandwidth and FP32 rate of this device now, with how they were obtained."""
    if device.type == "cuda":
        nbytes, size = 1 << 30, 8192
    else:
        nbytes, size = (256 << 20), (1024 if quick else 2048)
    budget = 0.3 if quick else 1.0
    bandwidth = measure_bandwidth(device, nbytes, budget)
    rate = measure_fp32_rate(device, size, budget)
    return {
        "bandwidth_bytes_per_s": bandwidth,
        "fp32_flop_per_s": rate,
        "how": (f"bandwidth: median of torch copy_ of a {nbytes >> 20} MiB float32 tensor, "
                f"read + write counted; FP32 rate: median of torch.mm {size}x{size} float32 "
                f"(TF32 off), 2*{size}^3 FLOP; threads={torch.get_num_threads()}"),
    }
