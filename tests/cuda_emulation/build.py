"""Builds the emulated CUDA library: csrc/cuda's kernels and torch glue on HIP-CPU, for CPU tensors,
registered as the ``learnedopt_emulated`` op namespace (README.md in this folder says what that
verifies). Test-only: it is not part of the installed package.

    python -m tests.cuda_emulation.build        # build (or find) it, with compiler progress

The library is cached in ``.cache/cuda-emulation/<hash>/`` by a hash of everything it is made of:
csrc/, this folder's sources, the HIP-CPU headers, the torch and Python versions and the compiler;
an up-to-date build is found without compiling anything. Nothing under csrc/ or HIP-CPU's folder is
ever written: the rewritten sources (rewrite.py) and the patched HIP-CPU copy live in the build
directory.

Environment: LEARNEDOPT_HIP_CPU (HIP-CPU's folder; default ../shared/third_party/hip-cpu next to
the repository), MAX_JOBS (parallel compile jobs), CXX (the compiler, default c++).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.cuda_emulation import rewrite

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = REPO / ".cache" / "cuda-emulation"
LIBRARY_NAME = "learnedopt_emulated"
# The parts of HIP-CPU that are compiled (its tests, examples and docs are not).
HIP_CPU_PARTS = ("include", "src/include", "external/libco")
EMULATION_SOURCES = ("runtime.cpp", "controls.cpp", "probes.cu")


class Unavailable(RuntimeError):
    """HIP-CPU, TBB or a compiler is missing: the emulated suite cannot run (the reason says which)."""


def hip_cpu_root() -> Path:
    return Path(os.environ.get("LEARNEDOPT_HIP_CPU", REPO.parent / "shared" / "third_party" / "hip-cpu"))


def compiler() -> str:
    return os.environ.get("CXX", "c++")


def _compiler_version() -> str:
    try:
        return subprocess.run([compiler(), "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise Unavailable(f"no C++ compiler ({compiler()}): {exc}") from None


def check_prerequisites() -> None:
    """Raises Unavailable unless HIP-CPU, a C++20 compiler and TBB (for the parallel algorithms
    HIP-CPU runs blocks with; Debian: libtbb-dev) are there."""
    root = hip_cpu_root()
    if not (root / "include" / "hip" / "hip_runtime.h").is_file():
        raise Unavailable(f"HIP-CPU not found at {root} (set LEARNEDOPT_HIP_CPU)")
    _compiler_version()
    probe = "#include <execution>\n#include <tbb/version.h>\nint main() { return TBB_VERSION_MAJOR > 0 ? 0 : 1; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "tbb.cpp"
        src.write_text(probe)
        result = subprocess.run([compiler(), "-std=c++20", str(src), "-ltbb", "-o", str(Path(tmp) / "tbb")],
                                capture_output=True, text=True)
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["?"])[0]
        raise Unavailable(f"TBB is missing (install libtbb-dev): {first}")


def _files(root: Path, parts=("",)) -> list[Path]:
    found = []
    for part in parts:
        base = root / part
        found += [p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return sorted(found)


def emulation_files() -> list[Path]:
    """This folder's files that go into the library (its tests and results do not)."""
    return [p for p in _files(HERE) if p.suffix in (".h", ".cpp", ".cu", ".py") and p.name != "mutants.py"]


def source_hash(csrc: Path) -> str:
    import torch

    h = hashlib.sha256()
    for tag, root, files in (("csrc", csrc, _files(csrc)), ("emulation", HERE, emulation_files()),
                             ("hip-cpu", hip_cpu_root(), _files(hip_cpu_root(), HIP_CPU_PARTS))):
        for path in files:
            h.update(f"{tag}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
            h.update(b"\0")
    h.update(f"torch {torch.__version__}\0python {sys.version}\0{_compiler_version()}".encode())
    return h.hexdigest()


def _write(path: Path, text: str) -> None:
    """Writes only when the content changes, so that ninja recompiles only what did."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def generate_sources(dest: Path, csrc: Path) -> list[Path]:
    """Writes the rewritten csrc copy and the patched HIP-CPU copy under ``dest``; returns the
    translation units to compile."""
    units = []
    for path in _files(csrc):
        rel = path.relative_to(csrc)
        shown = f"csrc/{rel.as_posix()}"
        text = path.read_text()
        if rel.parts[0] == "cuda" and path.suffix == ".cu":
            out = dest / "csrc" / rel.with_name(rel.name + ".cpp")
            _write(out, rewrite.rewrite_kernel_source(text, shown))
            units.append(out)
        elif rel.parts[0] == "cuda" and path.name.endswith("_cuda.cpp"):
            out = dest / "csrc" / rel
            _write(out, rewrite.rewrite_glue_source(text, shown))
            units.append(out)
        elif rel.as_posix() == "cuda/glue.h":
            _write(dest / "csrc" / rel, rewrite.rewrite_cuda_glue_header(text, shown))
        elif rel.parts[0] == "cuda" and path.suffix == ".h":
            _write(dest / "csrc" / rel, rewrite.rewrite_kernel_source(text, shown, prologue=False))
        elif rel.as_posix() == "schema.cpp":
            out = dest / "csrc" / rel
            _write(out, rewrite.rewrite_schema(text, shown))
            units.append(out)
        else:  # common/, cpu/, autograd/ and the rest: headers the CUDA files include, as they are
            _write(dest / "csrc" / rel, text)
    hip = hip_cpu_root()
    for path in _files(hip, HIP_CPU_PARTS):
        rel = path.relative_to(hip)
        if rel.as_posix() == "src/include/hip/detail/tile.hpp":
            _write(dest / "hip-cpu" / rel, rewrite.patch_fiber_stack(path.read_text(), "hip-cpu/" + rel.as_posix()))
        elif not (dest / "hip-cpu" / rel).is_file():
            (dest / "hip-cpu" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / "hip-cpu" / rel)
    for name in EMULATION_SOURCES:
        path = HERE / name
        if path.suffix == ".cu":
            out = dest / "emulation" / (name + ".cpp")
            _write(out, rewrite.rewrite_kernel_source(path.read_text(), f"tests/cuda_emulation/{name}"))
        else:
            out = dest / "emulation" / name
            _write(out, f'#line 1 "tests/cuda_emulation/{name}"\n' + path.read_text())
        units.append(out)
    return units


def library_path(build_dir: Path) -> Path:
    return build_dir / f"{LIBRARY_NAME}.so"


def build(*, verbose: bool = False, root: Path = CACHE, csrc: Path = REPO / "csrc",
          prune: bool = True) -> tuple[Path, bool]:
    """The emulated library for ``csrc``: (its path, whether this call loaded it into the process).
    A cached build is returned without compiling or loading; otherwise it is compiled (printing the
    compiler's progress when ``verbose``) and, as torch's extension builder does, loaded. With
    ``prune``, other builds under ``root`` (older versions of csrc/) are deleted afterwards."""
    if not (hip_cpu_root() / "include" / "hip" / "hip_runtime.h").is_file():
        raise Unavailable(f"HIP-CPU not found at {hip_cpu_root()} (set LEARNEDOPT_HIP_CPU)")
    out = root / source_hash(csrc)[:16]
    lib = library_path(out / "build")
    if lib.is_file():
        return lib, False
    compile_into(out, csrc, verbose)
    if prune:
        for other in root.iterdir():
            if other.is_dir() and other != out:
                shutil.rmtree(other, ignore_errors=True)
    return lib, True


@contextlib.contextmanager
def exclusive_build(build_dir: Path):
    """Holds an exclusive lock on ``build_dir`` for one compile, and clears a stale torch baton.

    torch's extension builder guards a build folder with a ``lock`` file that only the builder
    itself deletes: a build that was killed (Ctrl-C, a CI timeout) leaves it behind, and every
    later build there then waits for it forever. Every build of ours first takes this flock
    (released by the kernel when its holder dies, however it dies), so whoever holds it knows that
    any ``lock`` file is left from a dead build and removes it."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / "build.flock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (build_dir / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def compile_into(out: Path, csrc: Path, verbose: bool) -> Path:
    """Generates the sources under ``out/src`` and compiles them in ``out/build`` (ninja: only what
    changed since the last build there); loads the library into this process and returns its path."""
    check_prerequisites()
    from torch.utils import cpp_extension

    units = generate_sources(out / "src", csrc)
    (out / "build").mkdir(parents=True, exist_ok=True)
    if verbose:
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count()))
        print(f"building the CUDA emulation library in {out} ({len(units)} files, {jobs} jobs; "
              "about 2 minutes on 2 cores)", flush=True)
    src = out / "src"
    with exclusive_build(out / "build"):
        load_library(cpp_extension, units, src, out, verbose)
    lib = library_path(out / "build")
    if not lib.is_file():
        raise RuntimeError(f"the emulated build finished without {lib}")
    return lib


def load_library(cpp_extension, units, src: Path, out: Path, verbose: bool) -> None:
    cpp_extension.load(
        name=LIBRARY_NAME, sources=[str(u) for u in units],
        extra_include_paths=[str(HERE / "include"), str(HERE), str(src / "csrc"), str(src / "hip-cpu" / "include")],
        # -O2: the emulated kernels run the suite's large cases, so they must be optimised.
        extra_cflags=["-O2", "-Wno-unknown-pragmas", "-Wno-attributes", "-Wno-psabi"], extra_ldflags=["-ltbb"],
        build_directory=str(out / "build"), verbose=verbose, is_python_module=False)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--require", action="store_true",
                        help="exit 1 when HIP-CPU or TBB is missing (CI) instead of saying so and exiting 0")
    parser.add_argument("--csrc", type=Path, help="build these sources instead of csrc/ (mutants.py)")
    parser.add_argument("--out", type=Path, help="build in this folder, uncached (ninja rebuilds what changed)")
    args = parser.parse_args(argv)
    try:
        if args.out:
            lib, built = compile_into(args.out, args.csrc or REPO / "csrc", verbose=True), True
        else:
            lib, built = build(verbose=True, csrc=args.csrc or REPO / "csrc")
    except Unavailable as exc:
        print(f"CUDA emulation unavailable: {exc}", file=sys.stderr)
        return 1 if args.require else 0
    print(f"CUDA emulation library {'built' if built else 'up to date'}: {lib}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
