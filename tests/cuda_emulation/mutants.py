"""The mutation check: proof that the emulated suite can fail. Each mutant is csrc/ with one
deliberate CUDA bug (a removed __syncthreads(), an off-by-one in a grid-stride or tile loop, a
missing shared-memory opt-in, the glue's alignment copy gone); it is built as the emulated library
and the emulated tests of its op are run against it. Every mutant must be killed (some test fails).

    python -m tests.cuda_emulation.mutants              # all mutants (about a minute each on 2 cores, 16 minutes in all)
    python -m tests.cuda_emulation.mutants --only NAME  # one of them
    python -m tests.cuda_emulation.mutants --list

It writes tests/cuda_emulation/mutation-results.txt (committed: the last full run) and exits 1 if a
mutant survives or no longer applies to csrc/. The mutants build incrementally in
.cache/cuda-emulation-mutants/ (one translation unit and the link per mutant); csrc/ is never written.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.cuda_emulation import LIBRARY_VARIABLE, build

REPO = build.REPO
WORK = REPO / ".cache" / "cuda-emulation-mutants"
RESULTS = build.HERE / "mutation-results.txt"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str         # under csrc/
    original: str     # must occur exactly once in the file
    mutated: str
    tests: str        # the test file whose emulated tests must kill it
    why: str


MUTANTS = [
    Mutant("turtle-backward-no-barrier-after-staging", "cuda/turtle_kernel.cu",
           "    for_n<kIn>(in, [&](int i) { stage_in[tid * kStride + i] = active ? in_act[i] : S(0); });\n"
           "    __syncthreads();\n",
           "    for_n<kIn>(in, [&](int i) { stage_in[tid * kStride + i] = active ? in_act[i] : S(0); });\n",
           "tests/test_turtle_op.py", "the weight-gradient sums read other threads' rows before they are staged"),
    Mutant("turtle-backward-no-barrier-before-restaging", "cuda/turtle_kernel.cu",
           "    __syncthreads();  // the next layer overwrites the stage\n", "",
           "tests/test_turtle_op.py", "a thread restages the next layer while others still sum this one"),
    Mutant("turtle-no-barrier-after-loading-params", "cuda/turtle_kernel.cu",
           "    __syncthreads();\n    return shared;\n", "    return shared;\n",
           "tests/test_turtle_op.py", "threads read the MLP's parameters from shared memory before they are loaded"),
    Mutant("turtle-forward-grid-stride-off-by-one", "cuda/turtle_kernel.cu",
           "j < a.n; j += stride) {\n    S theta_new, m_new;",
           "j < a.n; j += stride + 1) {\n    S theta_new, m_new;",
           "tests/test_turtle_op.py", "the forward's grid-stride loop skips a coordinate per extra round"),
    Mutant("turtle-backward-tile-loop-off-by-one", "cuda/turtle_kernel.cu",
           "for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {",
           "for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x + 1) {",
           "tests/test_turtle_op.py", "the backward's tile loop skips tiles past the first 1024 blocks"),
    Mutant("turtle-layer-lookup-off-by-one", "cuda/turtle_kernel.cu",
           "while (k + 1 < net.layers && p >= net.offset[k + 1]) ++k;",
           "while (k + 1 < net.layers && p > net.offset[k + 1]) ++k;",
           "tests/test_turtle_op.py", "each layer's first weight gradient is written into the previous layer's bias"),
    Mutant("meta-lstm-no-barrier-after-staging-weights", "cuda/meta_lstm_kernel.cu",
           "  __syncthreads();\n  return P;\n", "  return P;\n",
           "tests/test_meta_lstm_op.py", "threads read the staged weights before every thread has written its share"),
    Mutant("meta-lstm-backward-no-barrier-before-sums", "cuda/meta_lstm_kernel.cu",
           "      for (int k = 0; k < NI; ++k) my_inputs[k] = S(0);\n    }\n    __syncthreads();\n",
           "      for (int k = 0; k < NI; ++k) my_inputs[k] = S(0);\n    }\n",
           "tests/test_meta_lstm_op.py", "the tile sums read other threads' factors before they are written"),
    Mutant("meta-lstm-forward-grid-stride-stops-short", "cuda/meta_lstm_kernel.cu",
           "threadIdx.x; j < a.n; j += stride) {\n    // Keeps",
           "threadIdx.x; j < a.n - 1; j += stride) {\n    // Keeps",
           "tests/test_meta_lstm_op.py", "the forward's grid-stride loop leaves the last coordinate unwritten"),
    Mutant("meta-lstm-backward-tile-loop-off-by-one", "cuda/meta_lstm_kernel.cu",
           "for (int64_t tile = blockIdx.x; tile * B < a.n; tile += gridDim.x) {",
           "for (int64_t tile = blockIdx.x; tile * B < a.n; tile += gridDim.x + 1) {",
           "tests/test_meta_lstm_op.py", "the backward's tile loop skips tiles past the first 1024 blocks"),
    Mutant("meta-lstm-no-shared-memory-opt-in", "cuda/meta_lstm_kernel.cu",
           "  if (bytes <= 48 * 1024) return Status::kOk;\n",
           "  return Status::kOk;\n",
           "tests/test_meta_lstm_op.py", "kernels above 48 KiB of shared memory are launched without opting in"),
    Mutant("preprocess-forward-grid-stride-off-by-one", "cuda/preprocess_kernel.cu",
           "j < n; j += stride) {\n    P r;", "j < n; j += stride + 1) {\n    P r;",
           "tests/test_preprocess_op.py", "the forward's grid-stride loop skips a coordinate per extra round"),
    Mutant("preprocess-backward-misaligned-grad-out", "cuda/preprocess_cuda.cpp",
           "  if (reinterpret_cast<std::uintptr_t>(gc.data_ptr()) % (2 * gc.element_size()) != 0) gc = gc.clone();\n",
           "", "tests/test_preprocess_op.py", "the glue hands the kernel a grad_out it reads as misaligned pairs"),
]


def mutate(mutant: Mutant, dest: Path) -> None:
    """csrc/ copied to ``dest`` with the mutant's change; files whose content is unchanged keep their
    modification times, so that the mutant build recompiles one translation unit."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted((REPO / "csrc").rglob("*")):
        if path.is_file():
            target = dest / path.relative_to(REPO / "csrc")
            target.parent.mkdir(parents=True, exist_ok=True)
            text = path.read_text()
            if path.relative_to(REPO / "csrc").as_posix() == mutant.file:
                if text.count(mutant.original) != 1:
                    raise LookupError(f"{mutant.name}: its original text occurs {text.count(mutant.original)} "
                                      f"times in csrc/{mutant.file}; update the mutant to the new source")
                text = text.replace(mutant.original, mutant.mutated)
            if not target.exists() or target.read_text() != text:
                target.write_text(text)


def run_tests(library: Path, tests: list[str]) -> tuple[str, str, float]:
    """("passed" | "failed" | "crashed" | "error", the first failing test or pytest's complaint,
    seconds) for the emulated tests of ``tests``; "error" when pytest could not run them at all."""
    env = {**os.environ, LIBRARY_VARIABLE: str(library), "PYTHONPATH": str(REPO)}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "emulated",
                             *tests], cwd=REPO, env=env, capture_output=True, text=True)
    failed = [line.split(" ", 2)[1] for line in result.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    seconds = time.monotonic() - start
    if result.returncode == 0:
        return "passed", "", seconds
    if result.returncode == 1 and failed:
        return "failed", failed[0], seconds
    if result.returncode < 0:  # killed by a signal: the mutant's bug crashed the tests (an abort on
        # the heap it corrupted, a segfault), which the suite has caught as surely as a failure
        last = (result.stdout + result.stderr).strip().splitlines()[-1:]
        return "crashed", f"pytest killed by signal {-result.returncode}: {' '.join(last)[:200]}", seconds
    last = (result.stdout + result.stderr).strip().splitlines()[-1:]
    return "error", f"pytest exit {result.returncode}: {' '.join(last)}", seconds


def build_mutant(csrc: Path) -> Path | None:
    out = WORK / "build"
    result = subprocess.run([sys.executable, "-m", "tests.cuda_emulation.build", "--csrc", str(csrc), "--out", str(out)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
        return None
    return build.library_path(out / "build")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run only this mutant (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            print(f"{m.name}: csrc/{m.file}: {m.why}")
        return 0
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.only and len(chosen) != len(args.only):
        raise SystemExit(f"unknown mutant among {args.only}; --list shows them")
    build.check_prerequisites()
    lines = [f"# Mutation check of the emulated CUDA suite: python -m tests.cuda_emulation.mutants",
             f"# {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}, commit "
             f"{subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True, text=True).stdout.strip()}"
             f"{' (with uncommitted changes)' if subprocess.run(['git', 'status', '--porcelain', 'csrc', 'tests', f':!{RESULTS.relative_to(REPO)}'], cwd=REPO, capture_output=True, text=True).stdout.strip() else ''}",
             "# mutant | csrc file | result | first failing test | test time"]
    csrc = WORK / "csrc"
    ok = True
    baseline, _ = build.build(verbose=False)  # the unmutated library: its suite must pass first
    outcome, failing, seconds = run_tests(baseline, sorted({m.tests for m in chosen}))
    lines.append(f"unmutated | - | {'passes' if outcome == 'passed' else 'FAILS'} | {failing or '-'} | {seconds:.0f} s")
    print(lines[-1], flush=True)
    ok = outcome == "passed"
    for mutant in chosen:
        try:
            mutate(mutant, csrc)
        except LookupError as exc:
            lines.append(f"{mutant.name} | csrc/{mutant.file} | DOES NOT APPLY | {exc} | -")
            print(lines[-1], flush=True)
            ok = False
            continue
        library = build_mutant(csrc)
        if library is None:
            lines.append(f"{mutant.name} | csrc/{mutant.file} | DOES NOT BUILD | - | -")
            ok = False
        else:
            outcome, failing, seconds = run_tests(library, [mutant.tests])
            result = {"passed": "SURVIVED", "failed": "killed", "crashed": "killed (crashed)",
                      "error": "TESTS DID NOT RUN"}[outcome]
            lines.append(f"{mutant.name} | csrc/{mutant.file} | {result} | {failing or '-'} | {seconds:.0f} s")
            ok &= outcome in ("failed", "crashed")
        print(lines[-1], flush=True)
    shutil.rmtree(csrc, ignore_errors=True)
    if not args.only:
        RESULTS.write_text("\n".join(lines) + "\n")
        print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
