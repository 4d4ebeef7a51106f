"""Where the meta-learner LSTM kernel's time goes, phase by phase (issue 15 item 1). Compiles
bench/lstm_phases/phases.cpp once per instruction set this CPU has, with the extension's flags, and
runs it on one thread: the kernel itself (forward and backward, hidden 20, input 4, float) and each of
its phases alone over the same n coordinates — the (n, 20) rows through the transposes, the gradient
preprocessing, the gates' mat-vec, the sigmoids and tanhs, the cells and layer 2, and in the
backward the cells' reverse, the transposed mat-vec and the weight-gradient outer products. The
phases chained on one group reproduce the kernel's outputs bit for bit (checked every run). A phase
timed alone cannot overlap with its neighbours, so the phases may add up to more than the kernel.

    python3 -m bench.lstm_phases [--n 10000] [--budget 0.5] [--capabilities avx2,avx512] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.machine import REPO_ROOT, cpu_model, git_commit, host_simd_path, load_average
from bench.ops import meta_lstm_forward_flop
from bench.results import RESULTS_DIR, write_json

SOURCE = REPO_ROOT / "bench" / "lstm_phases" / "phases.cpp"
# The flags the extension's kernels are compiled with: Python's own (-fwrapv -DNDEBUG, which the
# build of a torch extension adds) and setup.py's; no -march (LO_CAPABILITY sets the ISA).
FLAGS = ["-fwrapv", "-DNDEBUG", "-O3", "-std=c++20", "-fopenmp", "-ffp-contract=fast", "-Wno-psabi"]
CAPABILITIES = ("baseline", "avx2", "avx512")
H, G = 20, 2
# Counted FLOP per coordinate of the mat-vec phases (one multiply-add = 2): the gates' 4H rows of
# G + H inputs, the same products transposed, and the packed weight-gradient products.
PHASE_FLOP = {("forward", "gates"): 2 * 4 * H * (G + H),
              ("backward", "gates_backward"): 2 * 4 * H * (G + H),
              ("backward", "weight_terms"): 2 * (4 * H * H + 4 * H * G + 4 * H + 2 * (H + 3))}


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise SystemExit("bench.lstm_phases needs a C++ compiler (set CXX, or install g++)")
    return cxx


def build(capability: str, folder: Path) -> Path:
    binary = folder / f"lstm_phases_{capability}"
    cmd = [compiler(), *FLAGS, f"-DLO_CAPABILITY={capability}", f"-I{REPO_ROOT / 'csrc'}",
           str(SOURCE), "-o", str(binary)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"compiling {SOURCE.name} for {capability} failed:\n{done.stderr[-4000:]}")
    return binary


def run(binary: Path, n: int, budget: float) -> dict:
    done = subprocess.run([str(binary), str(n), str(budget)], capture_output=True, text=True)
    if done.returncode not in (0, 3) or not done.stdout.strip():
        raise SystemExit(f"{binary.name} {n} failed (exit {done.returncode}): {done.stderr.strip()}")
    record = json.loads(done.stdout)
    if not record["phases_match_kernel"]:
        raise SystemExit(f"{binary.name}: the phases chained on a group no longer give the kernel's "
                         "outputs bit for bit: phases.cpp is out of step with meta_lstm_kernel.h")
    return record


def summarise(record: dict) -> dict:
    """Per phase: ns per coordinate, share of its pass's kernel time, and for the mat-vecs their
    counted FLOP rate as a fraction of the one-thread FMA probe."""
    n, probe = record["n"], record["fma_probe_flop_per_s"]
    whole = {"forward": record["forward_seconds"], "backward": record["backward_seconds"]}
    for phase in record["phases"]:
        phase["ns_per_coordinate"] = phase["seconds"] / n * 1e9
        phase["share_of_kernel"] = phase["seconds"] / whole[phase["pass"]]
        flop = PHASE_FLOP.get((phase["pass"], phase["name"]))
        phase["probe_fraction"] = flop * n / phase["seconds"] / probe if flop else None
    record["forward_probe_fraction"] = meta_lstm_forward_flop(H, 4) * n / whole["forward"] / probe
    for p in ("forward", "backward"):
        record[f"{p}_phase_sum_seconds"] = sum(x["seconds"] for x in record["phases"] if x["pass"] == p)
    return record


def table(records: list[dict]) -> str:
    lines = ["| ISA | pass | phase | ns / coordinate | share of the kernel | mat-vec, % of the probe |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in records:
        for p in ("forward", "backward"):
            lines.append(f"| {r['capability']} | {p} | **kernel** | {r[f'{p}_seconds'] / r['n'] * 1e9:.1f} | 100 % "
                         + (f"| {100 * r['forward_probe_fraction']:.1f} % (counted FLOP) |" if p == "forward" else "| |"))
            for x in (x for x in r["phases"] if x["pass"] == p):
                frac = f"{100 * x['probe_fraction']:.1f} %" if x["probe_fraction"] is not None else ""
                lines.append(f"| {r['capability']} | {p} | {x['name']} | {x['ns_per_coordinate']:.1f} "
                             f"| {100 * x['share_of_kernel']:.0f} % | {frac} |")
            lines.append(f"| {r['capability']} | {p} | (phases added) | "
                         f"{r[f'{p}_phase_sum_seconds'] / r['n'] * 1e9:.1f} | "
                         f"{100 * r[f'{p}_phase_sum_seconds'] / r[f'{p}_seconds']:.0f} % | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10000, help="coordinates (a multiple of 16)")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument("--capabilities", help="comma-separated, of baseline, avx2, avx512 "
                        "(default: avx2 and avx512 as far as this CPU has them)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.n < 32 or args.n % 16:
        parser.error(f"--n {args.n}: expected a multiple of 16, at least 32")
    if args.budget <= 0:
        parser.error("--budget must be > 0")
    host = host_simd_path()
    if host not in CAPABILITIES:
        raise SystemExit(f"cannot tell this CPU's instruction sets: {host}")
    allowed = CAPABILITIES[:CAPABILITIES.index(host) + 1]
    wanted = args.capabilities.split(",") if args.capabilities else [c for c in allowed if c != "baseline"] or ["baseline"]
    for cap in wanted:
        if cap not in CAPABILITIES:
            parser.error(f"--capabilities: {cap!r} is not one of {', '.join(CAPABILITIES)}")
        if cap not in allowed:
            parser.error(f"--capabilities: this CPU has no {cap} (best: {host})")
    with tempfile.TemporaryDirectory(prefix="lstm_phases_") as folder:
        records = [summarise(run(build(cap, Path(folder)), args.n, args.budget)) for cap in wanted]
    print(table(records))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    version = subprocess.run([compiler(), "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    record = {"benchmark": "lstm_phases", "date": stamp,
              "command": "python3 -m bench.lstm_phases " + " ".join(sys.argv[1:] if argv is None else argv),
              "git_commit": git_commit(), "cpu_model": cpu_model(), "host_simd_path": host,
              "load_average": load_average(), "compiler": version, "flags": FLAGS, "results": records}
    path = write_json(record, args.out or RESULTS_DIR / "ab" / f"lstm_phases-{stamp}.json")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
