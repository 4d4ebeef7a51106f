"""Meta-training checkpoints: one dict, written atomically, loaded with ``weights_only=True``.

Layout (``FORMAT`` = "learnedopt-checkpoint/1")::

    {"format": FORMAT,
     "algorithm": "turtle",              # key of learnedopt.algorithms.ALGORITHMS
     "options": {...},                   # algorithm.options(): every hyper-parameter
     "learner": {...},                   # spec that rebuilds the learner (learnedopt.experiment)
     "task": {...},                      # spec that rebuilds the task sampler
     "protocol": {...},                  # sampler.config(): what the tasks were
     "config": {...},                    # the training configuration (learnedopt.train.TrainConfig)
     "state_dict": {...},                # algorithm.state_dict(): "rule.*", "alpha", "theta0", ...
     "optimizer": {...},                 # the outer Adam's state_dict
     "iteration": 1500,                  # meta-iterations completed
     "rng": {...},                       # torch + task-generator states (bitwise resume)
     "best": {"iteration", "metric", "value", "higher_is_better"},
     "metrics": [...],                   # every record of metrics.jsonl so far
     "window": {...},                    # train metrics summed since the last log record
     "elapsed_s": 12.5,                  # training wall time so far
     "versions": {"learnedopt", "torch"},
     "checksum": {"algorithm": "sha256", "digest": ...}}   # learnedopt.integrity: of all the rest

The checksum is verified on load: a file whose content changed is refused. A file written before
checksums (no "checksum" key) still loads, with a note on stderr.

``learnedopt.optim.*.from_pretrained`` reads only "format", "algorithm", "options" and
"state_dict", so those names are fixed.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from learnedopt import integrity

FORMAT = "learnedopt-checkpoint/1"
REQUIRED_KEYS = ("format", "algorithm", "options", "state_dict", "iteration")


class CheckpointError(ValueError):
    """The file is missing, unreadable, corrupt, or not a learnedopt meta-training checkpoint."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data`` so that a reader (or a crash) sees the old file or the new one,
    never a mixture: write a temporary file in the same directory, fsync it, os.replace it over
    the target, then fsync the directory so the rename itself survives a power loss."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Leave the previous file untouched and no stray temporary behind.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms (Windows) where directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Serialise ``checkpoint`` fully in memory first, so a failure while pickling cannot touch the
    file on disk, then write it atomically."""
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(f"refusing to save a checkpoint without {missing}")
    if checkpoint["format"] != FORMAT:
        raise CheckpointError(f"refusing to save format {checkpoint['format']!r}; expected {FORMAT!r}")
    try:
        sealed = integrity.seal(checkpoint)
    except TypeError as exc:  # content no checkpoint may hold: say what weights_only would refuse
        sealed, unsealable = checkpoint, exc
    else:
        unsealable = None
    buffer = io.BytesIO()
    torch.save(sealed, buffer)
    # Catch, at save time, content that weights_only loading would refuse (any Python object other
    # than tensors, containers and plain scalars), instead of writing a file nobody can load safely.
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"refusing to save a checkpoint that torch.load(weights_only=True) "
                              f"cannot read: {_reason(exc)}") from None
    if unsealable is not None:
        raise CheckpointError(f"refusing to save a checkpoint whose content cannot be "
                              f"checksummed: {unsealable}")
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Load and validate a checkpoint written by :func:`save_checkpoint` (never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    checkpoint = safe_load(path, map_location, CheckpointError, "checkpoint")
    checkpoint = validate_checkpoint(checkpoint, source=str(path))
    check_integrity(checkpoint, str(path), CheckpointError, "checkpoint")
    return checkpoint


def safe_load(path: Path, map_location: Any, error: type[Exception], what: str) -> Any:
    """``torch.load(weights_only=True)`` with the failures turned into ``error`` naming the file:
    a pickle that would import code is refused for safety, not offered a way around the check."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - random bytes raise IndexError, KeyError, ... too
        wanted = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if isinstance(exc, pickle.UnpicklingError) and wanted:
            raise error(f"{str(path)!r} is not a learnedopt {what}: it asks to import "
                        f"{wanted.group(1)}, which a learnedopt file never does; refused for "
                        f"safety (nothing in it was run)") from None
        raise error(
            f"{str(path)!r} is not a readable learnedopt {what} (truncated, corrupt, or not "
            f"written by torch.save / learnedopt): {_reason(exc)}") from exc


def check_integrity(data: Any, source: str, error: type[Exception], what: str) -> None:
    """Verify the content checksum (learnedopt.integrity): a mismatch raises ``error``; a file
    from before checksums gets a note on stderr and loads."""
    try:
        status = integrity.verify(data, source, what)
    except integrity.IntegrityError as exc:
        raise error(str(exc)) from None
    if status == "absent":
        print(f"learnedopt: note: {source!r} has no content checksum (written before learnedopt "
              f"recorded them), so corruption inside it cannot be detected; re-save it to add one",
              file=sys.stderr)


def require_keys(checkpoint: dict[str, Any], keys: tuple[str, ...], source: str, purpose: str
                 ) -> None:
    """Raise :class:`CheckpointError` naming the file and the missing keys that ``purpose`` needs."""
    missing = [k for k in keys if k not in checkpoint]
    if missing:
        raise CheckpointError(f"{source!r} lacks the key{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(repr(k) for k in missing)}, needed to {purpose}; it is "
                              f"not a complete checkpoint written by 'learnedopt train'")


def _reason(exc: BaseException) -> str:
    """The informative line of a torch.load error (its message is mostly generic advice)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            return line
    return lines[0] if lines else type(exc).__name__


def validate_checkpoint(checkpoint: Any, source: str = "checkpoint") -> dict[str, Any]:
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{source!r} holds a {type(checkpoint).__name__}, not a learnedopt "
                              f"checkpoint dict")
    fmt = checkpoint.get("format")
    if fmt != FORMAT:
        hint = (" (a learned-rule file: load it with learnedopt.optim.*.from_pretrained)"
                if isinstance(fmt, str) and fmt.startswith("learnedopt-rule/") else "")
        raise CheckpointError(f"{source!r} has format {fmt!r}; expected {FORMAT!r}{hint}")
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(f"{source!r} lacks the keys {missing}")
    if not isinstance(checkpoint["state_dict"], dict) or not all(
            isinstance(v, torch.Tensor) for v in checkpoint["state_dict"].values()):
        raise CheckpointError(f"{source!r}: 'state_dict' must map names to tensors")
    if not isinstance(checkpoint["options"], dict):
        raise CheckpointError(f"{source!r}: 'options' must be a dict")
    return checkpoint
