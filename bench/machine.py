"""What a result was measured on (recorded in every JSON file), and the two ceilings of the
roofline measured on the same device in the same run: memory bandwidth and the FP32 rate.

On the CPU the FP32 rate is the higher of a torch.mm and the extension's FMA-throughput probe
(learnedopt._C.cpu_fp32_peak): a library matmul can fall far short of the hardware (on a 2-core AMD
EPYC with AVX-512, torch.mm reached about half the FP32 rate of the fused kernels themselves), and
a ceiling below the hardware's puts roofline fractions above 100 %."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
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


SIMD_ORDER = ("baseline", "avx2", "avx512")


def host_simd_path() -> str:
    """The best SIMD path this CPU's flags allow (baseline, avx2 or avx512), whatever
    LEARNEDOPT_CPU_CAPABILITY says: the AVX2 path of an AVX-512 host is not an AVX2-only host
    (other cores, other clocks), so records keep both."""
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    best = 2 if {"avx512f", "avx512dq"} <= flags else 1 if {"avx2", "fma"} <= flags else 0
    return SIMD_ORDER[best]


def cpu_simd_path() -> str:
    """The SIMD path the CPU kernels take here, by the rule of csrc/cpu/capability.cpp: the
    CPU's flags, lowered by LEARNEDOPT_CPU_CAPABILITY. Results of AVX2-only and AVX-512 hosts
    differ by several times, so every record names its path."""
    host = host_simd_path()
    if host not in SIMD_ORDER:
        return host
    wanted = os.environ.get("LEARNEDOPT_CPU_CAPABILITY")
    if wanted in SIMD_ORDER:
        return SIMD_ORDER[min(SIMD_ORDER.index(host), SIMD_ORDER.index(wanted))]
    return host


def git_commit(tree: Path = REPO_ROOT) -> str:
    """HEAD of this checkout (or of `tree`), with "+dirty" when tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True,
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


# Environment variables that change what a timing measures: glibc's malloc policy (whether freed
# blocks go back to the OS, so that the next fresh output page-faults them in again), torch's
# transparent-huge-page allocation, the thread pools' sizes, and this package's own switches.
PERFORMANCE_ENVIRONMENT_PREFIXES = ("MALLOC_", "GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE", "OMP_",
                                    "MKL_", "KMP_", "LD_PRELOAD", "LEARNEDOPT_")


def performance_environment(environ=None) -> dict[str, str]:
    """The variables of `environ` (default os.environ) that change timings, sorted by name."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in sorted(environ) if k.startswith(PERFORMANCE_ENVIRONMENT_PREFIXES)}


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
        "environment": performance_environment(),
    }
    if device.type == "cpu":
        # Ratios are the claims, but the ISA and the FMA peak say which kind of host gave them.
        info["simd_path"] = cpu_simd_path()
        info["host_simd_path"] = host_simd_path()
        peak, _ = measure_cpu_fma_peak(0.5)
        info["fp32_fma_peak_flop_per_s"] = peak
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


def measure_bandwidth(device: torch.device, nbytes: int, budget_s: float) -> tuple[float, str]:
    """(Bytes per second, how): the faster of a large float32 copy (read + write counted) and a
    large float32 sum (read only), each at its fastest sample. A ceiling is the best the memory
    system did; the median of a copy alone moved by almost 2x between runs on a shared VM and
    sat below what read-heavy kernels reach."""
    n = nbytes // 4
    src = torch.empty(n, device=device).uniform_()
    dst = torch.empty_like(src)
    copy = measure(lambda _: dst.copy_(src), device, budget_s=budget_s, min_samples=3)
    read = measure(lambda _: src.sum(), device, budget_s=budget_s, min_samples=3)
    copy_rate, read_rate = 2 * n * 4 / copy.min_s, n * 4 / read.min_s
    how = (f"bandwidth: the higher of torch copy_ ({copy_rate / 1e9:.1f} GB/s, read + write "
           f"counted) and torch sum ({read_rate / 1e9:.1f} GB/s, read only) of a {nbytes >> 20} MiB "
           f"float32 tensor, fastest sample of each")
    return max(copy_rate, read_rate), how


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


def measure_cpu_fma_peak(budget_s: float, repeats: int = 5) -> tuple[float | None, str]:
    """FLOP per second of the extension's FP32 FMA-throughput probe on torch's CPU threads (best of
    `repeats` runs of about budget_s / repeats seconds each: the loop touches no memory, so
    interference only slows it), with a note on how; None and the reason when the probe is not
    built."""
    from learnedopt import _extension
    if _extension._C is None:
        return None, _extension.LOAD_ERROR
    probe = getattr(_extension._C, "cpu_fp32_peak", None)
    if probe is None:
        return None, "learnedopt._C predates cpu_fp32_peak (rebuild the extension)"
    iterations = 100_000
    probe(iterations)  # starts the OpenMP threads
    start = time.perf_counter()
    probe(iterations)
    elapsed = time.perf_counter() - start
    iterations = max(iterations, int(iterations * budget_s / repeats / max(elapsed, 1e-6)))
    rate = max(probe(iterations) for _ in range(repeats))
    return rate, (f"learnedopt._C.cpu_fp32_peak({iterations}), best of {repeats}: independent "
                  f"register-resident FMA chains on every thread, on the SIMD path the fused "
                  f"kernels take")


def measure_ceilings(device: torch.device, quick: bool) -> dict:
    """Memory bandwidth and FP32 rate of this device now, with how they were obtained. On the CPU
    the FP32 rate is max(torch.mm, FMA probe); both are recorded (fp32_mm_flop_per_s,
    fp32_fma_peak_flop_per_s, None without the extension) and fp32_source names the one used."""
    if device.type == "cuda":
        nbytes, size = 1 << 30, 8192
    else:
        nbytes, size = (256 << 20), (1024 if quick else 2048)
    budget = 0.3 if quick else 1.0
    bandwidth, how_bandwidth = measure_bandwidth(device, nbytes, budget)
    mm_rate = measure_fp32_rate(device, size, budget)
    threads = f"threads={torch.get_num_threads()}"
    if device.type == "cuda":
        return {
            "bandwidth_bytes_per_s": bandwidth,
            "fp32_flop_per_s": mm_rate,
            "how": (f"{how_bandwidth}; FP32 rate: median of torch.mm {size}x{size} float32 "
                    f"(TF32 off), 2*{size}^3 FLOP; {threads}"),
        }
    how_mm = (f"median of torch.mm {size}x{size} float32, 2*{size}^3 FLOP "
              f"= {mm_rate / 1e9:.1f} GFLOP/s")
    peak, how_peak = measure_cpu_fma_peak(budget)
    if peak is None:
        source = "torch.mm"
        how_fp32 = (f"FP32 rate: {how_mm}, used because there is no FMA probe ({how_peak}); it "
                    f"may lie below the hardware's rate")
    else:
        source = "fma_peak" if peak >= mm_rate else "torch.mm"
        how_fp32 = (f"FP32 rate: the higher of {how_mm} and {how_peak}, 2 FLOP per lane per FMA "
                    f"= {peak / 1e9:.1f} GFLOP/s; used: {source} (a library matmul can fall short "
                    f"of the hardware's FMA rate)")
    return {
        "bandwidth_bytes_per_s": bandwidth,
        "fp32_flop_per_s": mm_rate if peak is None else max(mm_rate, peak),
        "fp32_mm_flop_per_s": mm_rate,
        "fp32_fma_peak_flop_per_s": peak,
        "fp32_source": source,
        "how": f"{how_bandwidth}; {how_fp32}; {threads}",
    }
