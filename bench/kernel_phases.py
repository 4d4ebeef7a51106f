"""Where the fused CPU kernels' time goes, phase by phase (issue 15 items 0 and 1). Compiles a
driver per op (bench/kernel_phases/<op>.cpp) once per instruction set this CPU has, with the
extension's flags, from the kernel headers themselves, and runs it on one thread: the kernel
(forward and backward) and each of its phases alone over the same n coordinates.

- meta_lstm (hidden 20, input 4): the (n, 20) rows through the transposes, the gradient
  preprocessing, the gates' mat-vec, the sigmoids and tanhs, the cells and layer 2; in the backward
  the cells' reverse, the transposed mat-vec and the weight-gradient outer products.
- turtle (the paper's 3 -> 5 x 20 -> 1 MLP, t = 1): the loads/clamp/momentum/update/stores, the MLP,
  one hidden 20 x 20 layer alone; in the backward the weight-gradient outer products.

The phases chained on every group reproduce the kernel's outputs bit for bit (checked every run;
a mismatch is refused). A phase timed alone cannot overlap with its neighbours, so the phases may
add up to more, or less, than the kernel.

    python3 -m bench.kernel_phases [--ops meta_lstm,turtle] [--n 10000] [--budget 0.5]
                                   [--capabilities avx2,avx512] [--out FILE]
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
from bench.ops import meta_lstm_forward_flop, turtle_forward_flop
from bench.results import RESULTS_DIR, write_json

SOURCES = {op: REPO_ROOT / "bench" / "kernel_phases" / f"{op}.cpp" for op in ("meta_lstm", "turtle")}
# The flags the extension's kernels are compiled with: Python's own (-fwrapv -DNDEBUG, which the
# build of a torch extension adds) and setup.py's; no -march (LO_CAPABILITY sets the ISA).
FLAGS = ["-fwrapv", "-DNDEBUG", "-O3", "-std=c++20", "-fopenmp", "-ffp-contract=fast", "-Wno-psabi"]
CAPABILITIES = ("baseline", "avx2", "avx512")
H, G = 20, 2
TURTLE_SIZES = [3, 20, 20, 20, 20, 20, 1]
# Counted FLOP per coordinate (one multiply-add = 2) of each kernel's forward and of the phases
# that are multiply-adds: the LSTM gates' 4H rows of G + H inputs, the same products transposed,
# the packed weight-gradient products; TURTLE's MLP (2·20 + 4·400 + 20), one hidden layer, and its
# weight-gradient products (one per weight and bias).
FORWARD_FLOP = {"meta_lstm": meta_lstm_forward_flop(H, 4), "turtle": turtle_forward_flop(TURTLE_SIZES)}
PHASE_FLOP = {("meta_lstm", "forward", "gates"): 2 * 4 * H * (G + H),
              ("meta_lstm", "backward", "gates_backward"): 2 * 4 * H * (G + H),
              ("meta_lstm", "backward", "weight_terms"): 2 * (4 * H * H + 4 * H * G + 4 * H + 2 * (H + 3)),
              ("turtle", "forward", "mlp"): 2 * (2 * 20 + 4 * 400 + 20),
              ("turtle", "forward", "dense_hidden"): 2 * 400,
              ("turtle", "backward", "weight_terms"): 2 * (2 * 20 + 20 + 4 * 420 + 21)}


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise SystemExit("bench.kernel_phases needs a C++ compiler (set CXX, or install g++)")
    return cxx


def build(source: Path, capability: str, folder: Path) -> Path:
    binary = folder / f"{source.stem}_{capability}"
    cmd = [compiler(), *FLAGS, f"-DLO_CAPABILITY={capability}", f"-I{REPO_ROOT / 'csrc'}",
           str(source), "-o", str(binary)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"compiling {source.name} for {capability} failed:\n{done.stderr[-4000:]}")
    return binary


def run(binary: Path, n: int, budget: float) -> dict:
    done = subprocess.run([str(binary), str(n), str(budget)], capture_output=True, text=True)
    if done.returncode not in (0, 3) or not done.stdout.strip():
        raise SystemExit(f"{binary.name} {n} failed (exit {done.returncode}): {done.stderr.strip()}")
    record = json.loads(done.stdout)
    if not record["phases_match_kernel"]:
        raise SystemExit(f"{binary.name}: the phases chained on a group no longer give the kernel's "
                         "outputs bit for bit: the driver is out of step with the kernel header")
    return record


def summarise(record: dict) -> dict:
    """Per phase: ns per coordinate, share of its pass's kernel time, and for the multiply-add
    phases their counted FLOP rate as a fraction of the one-thread FMA probe."""
    op, n, probe = record["op"], record["n"], record["fma_probe_flop_per_s"]
    whole = {"forward": record["forward_seconds"], "backward": record["backward_seconds"]}
    for phase in record["phases"]:
        phase["ns_per_coordinate"] = phase["seconds"] / n * 1e9
        phase["share_of_kernel"] = phase["seconds"] / whole[phase["pass"]]
        flop = PHASE_FLOP.get((op, phase["pass"], phase["name"]))
        phase["probe_fraction"] = flop * n / phase["seconds"] / probe if flop else None
    record["forward_probe_fraction"] = FORWARD_FLOP[op] * n / whole["forward"] / probe
    return record


def table(records: list[dict]) -> str:
    lines = ["| op | ISA | pass | phase | ns / coordinate | share of the kernel | FLOP rate, % of the probe |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        for p in ("forward", "backward"):
            head = f"| {r['op']} | {r['capability']} | {p}"
            frac = f"{100 * r['forward_probe_fraction']:.1f} % (counted FLOP)" if p == "forward" else ""
            lines.append(f"{head} | **kernel** | {r[f'{p}_seconds'] / r['n'] * 1e9:.1f} | 100 % | {frac} |")
            for x in (x for x in r["phases"] if x["pass"] == p):
                frac = f"{100 * x['probe_fraction']:.1f} %" if x["probe_fraction"] is not None else ""
                lines.append(f"{head} | {x['name']} | {x['ns_per_coordinate']:.1f} "
                             f"| {100 * x['share_of_kernel']:.0f} % | {frac} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", default="meta_lstm,turtle", help="comma-separated, of meta_lstm, turtle")
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
    ops = args.ops.split(",")
    for op in ops:
        if op not in SOURCES:
            parser.error(f"--ops: {op!r} is not one of {', '.join(SOURCES)}")
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
    with tempfile.TemporaryDirectory(prefix="kernel_phases_") as folder:
        records = [summarise(run(build(SOURCES[op], cap, Path(folder)), args.n, args.budget))
                   for op in ops for cap in wanted]
    print(table(records))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    version = subprocess.run([compiler(), "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    record = {"benchmark": "kernel_phases", "date": stamp,
              "command": "python3 -m bench.kernel_phases " + " ".join(sys.argv[1:] if argv is None else argv),
              "git_commit": git_commit(), "cpu_model": cpu_model(), "host_simd_path": host,
              "load_average": load_average(), "compiler": version, "flags": FLAGS, "results": records}
    path = write_json(record, args.out or RESULTS_DIR / "ab" / f"kernel_phases-{stamp}.json")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
