"""Result files (JSON under bench/results/) and their Markdown rendering.

The scripts print the Markdown of the record they have just written, and report.py renders the
same Markdown from committed files, so a README table is always generated from a JSON result.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BENCHMARKS = ("ops", "meta_train", "optimizer", "byom", "distributed", "conv_learner")


def pick_cases(parser, text: str | None, cases, default=None) -> list:
    """The cases a benchmark's ``--cases`` names: comma-separated numbers 1..len(cases), or
    "all"; without one, ``default`` (every case when None). Anything else is a parser error."""
    cases = list(cases)
    if not text:
        return list(cases if default is None else default)
    if text == "all":
        return cases
    try:
        picked = [int(x) for x in text.split(",")]
        if any(not 1 <= k <= len(cases) for k in picked):
            raise ValueError
    except ValueError:
        parser.error(f"--cases: expected numbers 1..{len(cases)}, got {text!r}")
    return [cases[k - 1] for k in picked]


def default_path(record: dict, label: str | None = None) -> Path:
    """bench/results/<benchmark>-<device>[-<label>]-<UTC date-time>.json"""
    stamp = record["date"].replace(":", "").replace("-", "").replace("+0000", "Z")
    parts = [record["benchmark"], record["device"], *([label] if label else []), stamp]
    return RESULTS_DIR / ("-".join(parts) + ".json")


def write_json(record: dict, path: Path) -> Path:
    """Written atomically: a reader never sees half a file, a crash leaves no partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def load_json(path: Path) -> dict:
    record = json.loads(Path(path).read_text())
    if not isinstance(record, dict) or record.get("schema") != "learnedopt-bench/1":
        raise ValueError(f"{path}: not a learnedopt benchmark result (no schema 'learnedopt-bench/1')")
    for key in ("benchmark", "device", "machine", "results"):
        if key not in record:
            raise ValueError(f"{path}: result file lacks the field {key!r}")
    return record


# ----------------------------------------------------------------------------------- formatting

def seconds(s: float | None) -> str:
    if s is None:
        return "–"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def spread(timing: dict) -> str:
    """Median ± half the interquartile range, in percent of the median."""
    half_iqr = (timing["q3_s"] - timing["q1_s"]) / 2
    return f"{seconds(timing['median_s'])} ±{100 * half_iqr / timing['median_s']:.0f}%"


def count(x: float | None) -> str:
    if x is None:
        return "–"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def mebibytes(b: int | None) -> str:
    return "–" if b is None else f"{b / 2**20:.1f} MiB"


def ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(record: dict) -> str:
    m = record["machine"]
    where = m["gpu_model"] or m["cpu_model"]
    cuda = f", CUDA {m['cuda']}" if m.get("cuda") and record["device"] == "cuda" else ""
    label = f" — **{record['label']}**" if record.get("label") else ""
    load = f", load average {m['load_average'][0]} at the start" if m.get("load_average") else ""
    isa = f", {m['simd_path']} kernels" if m.get("simd_path") else ""
    if m.get("host_simd_path") and m["host_simd_path"] != m.get("simd_path"):
        isa += f" on an {m['host_simd_path'].upper().replace('512', '-512')} host"
    elif m.get("host_simd_path") == "avx2":
        isa += " on an AVX2-only host"
    peak = (f", FMA probe {m['fp32_fma_peak_flop_per_s'] / 1e9:.0f} GFLOP/s"
            if m.get("fp32_fma_peak_flop_per_s") else "")
    # A run with a tuned allocator or thread pool is not comparable with one without: say so.
    environment = m.get("environment") or {}
    tuned = (", with " + " ".join(f"`{k}={v}`" for k, v in environment.items())) if environment else ""
    return (f"{where} ({m['cpu_count']} CPU cores, {m['threads']} torch threads{isa}{peak}{load}{tuned}), "
            f"torch {m['torch']}{cuda}; {record['date']}, commit {_short_commit(record['git_commit'])}{label}")


def _short_commit(commit: str) -> str:
    sha, plus, dirty = commit.partition("+")
    return (sha[:12] + plus + dirty) if len(sha) == 40 else commit


def skipped_lines(record: dict) -> list[str]:
    """One line per distinct reason, naming every case it applies to."""
    by_reason: dict[tuple[str, str], list[str]] = {}
    for r in record["results"]:
        if r["status"] != "ok":
            cases = by_reason.setdefault((r["status"], r["reason"]), [])
            if r.get("what", "") not in cases:
                cases.append(r.get("what", ""))
    return [f"- {', '.join(cases)}: {status}: {reason}" for (status, reason), cases in by_reason.items()]


def render(record: dict) -> str:
    """The Markdown section of one result file."""
    # Each benchmark script knows its own table; the record names the script.
    if record["benchmark"] not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {record['benchmark']!r}: expected one of {BENCHMARKS}")
    module = importlib.import_module(f"bench.{record['benchmark']}")
    parts = [module.render_markdown(record)]
    if record.get("complete") is False:
        parts.append("*Incomplete: the run stopped (time limit or error) before every case ran.*")
    skips = skipped_lines(record)
    if skips:
        parts.append("Not measured:\n" + "\n".join(skips))
    parts.append(f"<sub>{machine_line(record)}; `{record['command']}`</sub>")
    return "\n\n".join(parts)
