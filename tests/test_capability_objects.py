"""The per-ISA kernel objects share no out-of-line code.

Each CPU kernel is compiled three times (csrc/cpu/*_{baseline,avx2,avx512}.cpp), each with its own
instruction set, from the same math headers. A template instance or inline function emitted out of
line in two of those objects carries the same (weak) symbol in both, and the linker keeps one of
them: the AVX2 or baseline kernel could then call AVX-512 code and die with SIGILL on a CPU without
it, or run the baseline's code in the AVX-512 path. The sources avoid it by inlining the math
(LO_HD, LO_SIMD_INLINE) and by putting whatever stays out of line in the capability's own
namespace; this test checks the objects of the build (build/temp, which setup.py keeps) for it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OBJECTS = REPO / "build" / "temp" / "csrc" / "cpu"
CAPABILITIES = ("baseline", "avx2", "avx512")
# Emitted by the compiler into every object that may throw; not code.
HARMLESS = {"DW.ref.__gxx_personality_v0"}


def weak_symbols(obj: Path) -> set[str]:
    out = subprocess.run(["nm", "--defined-only", str(obj)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines()
            if len(line.split()) == 3 and line.split()[1] in ("W", "V", "u")}


def shared_weak_symbols(objects: list[Path]) -> dict[str, list[str]]:
    """Weak symbols defined by objects of more than one capability (named <kernel>_<capability>.o)."""
    owners = defaultdict(set)
    for obj in objects:
        for sym in weak_symbols(obj):
            owners[sym].add(obj.name)
    return {sym: sorted(objs) for sym, objs in owners.items()
            if sym not in HARMLESS and len({Path(o).stem.rsplit("_", 1)[1] for o in objs}) > 1}


def needs_nm():
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) is not installed")


def test_no_weak_symbol_is_defined_by_two_capability_objects():
    needs_nm()
    objects = sorted(p for cap in CAPABILITIES for p in OBJECTS.glob(f"*_{cap}.o"))
    if not objects:
        pytest.skip(f"no per-capability objects under {OBJECTS} (the extension was built elsewhere)")
    kernels = {p.name.rsplit("_", 1)[0] for p in objects}
    assert {"meta_lstm", "turtle", "preprocess"} <= kernels, kernels
    shared = shared_weak_symbols(objects)
    assert not shared, f"out-of-line code shared between instruction sets: {shared}"


def test_the_check_finds_an_inline_function_left_out_of_line(tmp_path):
    """Two objects of a toy kernel whose inline helper is not inlined (-O0): the check names it."""
    needs_nm()
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    source = tmp_path / "toy.cpp"
    source.write_text("inline int helper(int x) { return x + 1; }\n"
                      "int KERNEL(int x) { return helper(x); }\n")
    objects = []
    for cap in ("avx2", "avx512"):
        obj = tmp_path / f"toy_{cap}.o"
        subprocess.run(["g++", "-O0", "-c", f"-DKERNEL=kernel_{cap}", str(source), "-o", str(obj)], check=True)
        objects.append(obj)
    shared = shared_weak_symbols(objects)
    assert list(shared) == ["_Z6helperi"], shared
