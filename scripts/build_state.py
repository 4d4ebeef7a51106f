"""Whether learnedopt's extension needs building, for scripts/setup.sh.

    python3 scripts/build_state.py check      # exit 0 if the installed build is up to date, else 1; says why
    python3 scripts/build_state.py record     # after a build: record what it was built from
    pip install -v ... | python3 scripts/build_state.py progress   # compile progress; full log in .cache/build.log

A build is up to date when ``import learnedopt`` finds this checkout, its ``learnedopt._C`` loads,
and .cache/build-stamp.json says that this very file was built from the same csrc/, setup.py,
pyproject.toml, torch, Python and build settings (LEARNEDOPT_CUDA, TORCH_CUDA_ARCH_LIST,
LEARNEDOPT_DEBUG) as now.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAMP = REPO / ".cache" / "build-stamp.json"
LOG = REPO / ".cache" / "build.log"
BUILD_SETTINGS = ("LEARNEDOPT_CUDA", "TORCH_CUDA_ARCH_LIST", "LEARNEDOPT_DEBUG")


def inputs_hash() -> str:
    import torch

    h = hashlib.sha256()
    files = sorted(p for p in (REPO / "csrc").rglob("*") if p.is_file())
    for path in files + [REPO / "setup.py", REPO / "pyproject.toml"]:
        h.update(f"{path.relative_to(REPO).as_posix()}\0".encode())
        h.update(path.read_bytes())
    h.update(f"torch {torch.__version__} cuda {torch.version.cuda}\0python {sys.version}\0".encode())
    for name in BUILD_SETTINGS:
        h.update(f"{name}={os.environ.get(name, '')}\0".encode())
    return h.hexdigest()


def extension() -> Path | None:
    found = sorted((REPO / "learnedopt").glob("_C*.so"))
    return found[0] if found else None


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def why_not_current() -> str | None:
    """None when the build can be reused, else the reason to build."""
    if not STAMP.is_file():
        return "no record of a previous build"
    try:
        stamp = json.loads(STAMP.read_text())
    except ValueError:
        return f"{STAMP} is unreadable"
    so = extension()
    if so is None or stamp.get("extension") != so.name or stamp.get("extension_sha256") != file_hash(so):
        return "the extension is not the one last built here"
    if stamp.get("inputs") != inputs_hash():
        return "csrc/, setup.py, pyproject.toml, torch, Python or the build settings changed since the last build"
    try:
        import learnedopt
        from learnedopt import _extension
    except ImportError as exc:
        return f"learnedopt does not import ({exc})"
    if Path(learnedopt.__file__).resolve().parent != REPO / "learnedopt":
        return f"the learnedopt Python imports is {learnedopt.__file__}, not this checkout's"
    if _extension._C is None:
        return f"the extension does not load: {_extension.LOAD_ERROR}"
    return None


def record() -> None:
    so = extension()
    if so is None:
        raise SystemExit("build_state: no learnedopt/_C*.so to record")
    STAMP.parent.mkdir(exist_ok=True)
    STAMP.write_text(json.dumps({"inputs": inputs_hash(), "extension": so.name,
                                 "extension_sha256": file_hash(so)}, indent=1) + "\n")


_STEP = re.compile(r"^\s*\[(\d+)/(\d+)\]\s")  # pip -v indents the build output
_SOURCE = re.compile(r"\s-c\s+(\S+\.(?:cpp|cu))\s")


def progress(lines, out=sys.stdout) -> None:
    """Prints one line per compile step ('[3/27] csrc/cpu/turtle_avx2.cpp') and every error, and
    counts the warnings; everything goes to .cache/build.log."""
    LOG.parent.mkdir(exist_ok=True)
    warnings = 0
    with LOG.open("w") as log:
        for line in lines:
            log.write(line)
            step = _STEP.match(line)
            if step:
                source = _SOURCE.search(line)
                what = os.path.relpath(source.group(1), REPO) if source else line[step.end():].split()[0]
                out.write(f"  [{step.group(1)}/{step.group(2)}] {what}\n")
                out.flush()
            elif re.search(r"\berror\b|\bError\b", line):
                out.write(line)
                out.flush()
            elif "warning:" in line:
                warnings += 1
    if warnings:
        out.write(f"  ({warnings} compiler warnings: see {os.path.relpath(LOG, REPO)})\n")


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    if command == "check":
        reason = why_not_current()
        if reason is None:
            print("learnedopt: the installed extension is up to date with this checkout; not rebuilding")
            return 0
        print(f"learnedopt: building the extension ({reason})")
        return 1
    if command == "record":
        record()
        return 0
    if command == "progress":
        progress(sys.stdin)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
