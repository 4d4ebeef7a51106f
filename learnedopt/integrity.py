"""Content checksums for the files learnedopt writes (checkpoints, rule files, the image cache).

torch's zip reader does not check the CRCs of tensor data, so flipped bytes inside a tensor load
without a word. Each file learnedopt writes is therefore a dict that carries, under the key
``"checksum"``, the SHA-256 of everything else it holds::

    {"...": ..., "checksum": {"algorithm": "sha256", "digest": "<64 hex digits>"}}

The digest is over a canonical encoding of the dict's content (:func:`content_digest`): every
key and value in order, with type tags, and for a tensor its dtype, shape and raw bytes. It is
computed on the objects, not on the file's bytes, so it survives ``map_location`` (a CPU file
loaded onto a GPU) and zip re-packing, and it is verified after ``torch.load(weights_only=True)``
(which never runs code) and before anything is built from the content.

Files written before checksums existed have no ``"checksum"`` key; :func:`verify` reports them
as ``"absent"`` and the callers load them with a note.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from typing import Any

import torch

KEY = "checksum"
ALGORITHM = "sha256"


class IntegrityError(ValueError):
    """The content of a file does not match the checksum stored in it (corrupt or edited)."""


def content_digest(data: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``data`` without its ``"checksum"`` entry."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in data.items() if k != KEY})
    return h.hexdigest()


def seal(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` (a dict) with its checksum added (replacing any previous one)."""
    sealed = {k: v for k, v in data.items() if k != KEY}
    sealed[KEY] = {"algorithm": ALGORITHM, "digest": content_digest(sealed)}
    return sealed


def verify(data: Any, source: str, what: str = "file") -> str:
    """Check the checksum stored in ``data``: ``"ok"``, or ``"absent"`` for a file written
    before checksums (or not a dict). Raises :class:`IntegrityError` naming ``source`` when the
    content does not match."""
    if not isinstance(data, Mapping) or KEY not in data:
        return "absent"
    stored = data[KEY]
    if not isinstance(stored, Mapping) or stored.get("algorithm") != ALGORITHM or \
            not isinstance(stored.get("digest"), str):
        raise IntegrityError(f"{source!r}: its checksum entry is malformed ({stored!r}); the {what} "
                             f"is corrupt or was not written by learnedopt")
    actual = content_digest(data)
    if actual != stored["digest"]:
        raise IntegrityError(
            f"{source!r} is corrupt: the SHA-256 of its content is {actual[:16]}..., but the "
            f"{what} records {stored['digest'][:16]}... (bytes changed on disk or in transfer); "
            f"refusing to use it")
    return "ok"


def _feed(h, value: Any) -> None:
    """Feed a type-tagged, length-prefixed encoding of ``value`` (so that distinct contents never
    encode alike: "ab" + "c" differs from "a" + "bc", 1 from 1.0 from True)."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.layout != torch.strided:
            raise TypeError(f"cannot checksum a {t.layout} tensor")
        t = t.cpu().contiguous().reshape(-1)
        _tag(h, b"T", f"{t.dtype}|{tuple(value.shape)}".encode())
        raw = t.view(torch.uint8) if t.dtype != torch.uint8 else t
        h.update(struct.pack("<Q", raw.numel()))
        if raw.numel():
            h.update(raw.numpy().tobytes())
    elif isinstance(value, Mapping):
        h.update(b"D" + struct.pack("<Q", len(value)))
        for key, item in value.items():
            _feed(h, key)
            _feed(h, item)
    elif isinstance(value, (list, tuple)):
        h.update((b"L" if isinstance(value, list) else b"U") + struct.pack("<Q", len(value)))
        for item in value:
            _feed(h, item)
    elif value is None:
        h.update(b"N")
    elif isinstance(value, bool):
        h.update(b"B1" if value else b"B0")
    elif isinstance(value, int):
        _tag(h, b"I", str(value).encode())
    elif isinstance(value, float):
        _tag(h, b"F", value.hex().encode())  # exact, and distinguishes NaN / -0.0
    elif isinstance(value, str):
        _tag(h, b"S", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, bytes):
        _tag(h, b"Y", value)
    elif isinstance(value, (torch.dtype, torch.device, torch.Size)):
        _tag(h, b"O", f"{type(value).__name__}:{value}".encode())
    else:
        raise TypeError(f"cannot checksum a {type(value).__name__} ({value!r})")


def _tag(h, tag: bytes, payload: bytes) -> None:
    h.update(tag + struct.pack("<Q", len(payload)) + payload)
