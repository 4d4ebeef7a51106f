"""Decode a list of image files once, resize them, and keep the result as one uint8 tensor file.

Data sets hand over a list of ``ImageRef`` (where the bytes live: a plain file or a member of a zip
archive) and a cache key describing the source. ``load_or_decode`` returns the stacked uint8
images (num_images, C, H, W), reading the cache when it exists and decoding (in a process pool
for large sets) and writing it atomically otherwise. The cache file carries a SHA-256 of its
content (learnedopt.integrity), verified on every read: a corrupt cache is rebuilt, with a warning.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from learnedopt import integrity

log = logging.getLogger(__name__)

# Bump when the decoded content for the same source would change (resampling, inversion, layout).
CACHE_FORMAT = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Below this many images a process pool costs more to start than it saves.
_POOL_MIN_IMAGES = 2000


@dataclass(frozen=True)
class ImageRef:
    """An image file on disk (``member`` None) or the member ``member`` of the zip at ``path``."""
    path: str
    member: str | None = None

    def describe(self) -> str:
        return f"{self.path}:{self.member}" if self.member is not None else self.path


@dataclass(frozen=True)
class DecodeSpec:
    """How every image is turned into pixels: Pillow mode ("L" or "RGB"), square side, and whether
    to invert (Omniglot is stored ink-high so that strokes are 1.0 and paper 0.0, as MAML does)."""
    mode: str
    size: int
    invert: bool = False

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3


def _require_pillow():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("learnedopt image data sets need Pillow to decode images: "
                          "pip install Pillow") from exc
    return Image


def _decode_one(data: bytes, spec: DecodeSpec, where: str) -> bytes:
    Image = _require_pillow()
    try:
        with Image.open(io.BytesIO(data)) as img:
            # JPEG can decode straight at a reduced scale (still >= the target size): far faster
            # for large photographs, visually identical after the final resize.
            img.draft(spec.mode, (spec.size, spec.size))
            img = img.convert(spec.mode)
            if img.size != (spec.size, spec.size):
                img = img.resize((spec.size, spec.size), resample=Image.Resampling.LANCZOS)
            return img.tobytes()
    except Exception as exc:
        raise ValueError(f"cannot decode image {where}: {exc}") from exc


# Worker state: each process keeps its zip archives open across images instead of reopening them.
_open_zips: dict[str, zipfile.ZipFile] = {}


def _read(ref: ImageRef) -> bytes:
    if ref.member is None:
        with open(ref.path, "rb") as f:
            return f.read()
    archive = _open_zips.get(ref.path)
    if archive is None:
        archive = _open_zips[ref.path] = zipfile.ZipFile(ref.path)
    return archive.read(ref.member)


def _decode_ref(args: tuple[ImageRef, DecodeSpec]) -> bytes:
    ref, spec = args
    try:
        data = _read(ref)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read image {ref.describe()}: {exc}") from exc
    return _decode_one(data, spec, ref.describe())


def decode_images(refs: Sequence[ImageRef], spec: DecodeSpec, workers: int | None = None) -> Tensor:
    """Decode ``refs`` into a uint8 tensor (len(refs), C, size, size), in order."""
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    jobs = [(ref, spec) for ref in refs]
    # Filled image by image so that peak memory stays one copy of the data set.
    out = torch.empty((len(refs), spec.size, spec.size, spec.channels), dtype=torch.uint8)
    if workers > 1 and len(jobs) >= _POOL_MIN_IMAGES:
        # Workers read the files themselves: only the short references and the decoded pixels
        # cross the pipes.
        ctx = multiprocessing.get_context("spawn" if os.name == "nt" else "fork")
        with ctx.Pool(workers) as pool:
            for i, pixels in enumerate(pool.imap(_decode_ref, jobs, chunksize=256)):
                out[i] = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).view(out.shape[1:])
    else:
        try:
            for i, job in enumerate(jobs):
                out[i] = torch.frombuffer(bytearray(_decode_ref(job)),
                                          dtype=torch.uint8).view(out.shape[1:])
        finally:
            for archive in _open_zips.values():
                archive.close()
            _open_zips.clear()
    # Pillow's bytes are interleaved (H, W, C); the library convention is channels first.
    images = out.permute(0, 3, 1, 2).contiguous()
    return images.bitwise_not_() if spec.invert else images


def cache_key(kind: str, spec: DecodeSpec, source_fingerprint: list) -> str:
    """A short hash of everything that determines the decoded tensor."""
    blob = json.dumps({"format": CACHE_FORMAT, "kind": kind, "mode": spec.mode, "size": spec.size,
                       "invert": spec.invert, "source": source_fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir(data_root: Path) -> Path:
    """``<data_root>/.learnedopt-cache`` when writable, else the user's cache folder (data roots
    are often read-only shared mounts)."""
    preferred = data_root / ".learnedopt-cache"
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    fallback = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "learnedopt"
    log.warning("data root %s is not writable; caching decoded images in %s", data_root, fallback)
    return fallback


def save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        # mkstemp creates the file 0600; a shared cache should be readable like any other file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_or_decode(cache_file: Path | None, refs: Sequence[ImageRef], spec: DecodeSpec,
                   metadata: dict, workers: int | None = None) -> tuple[Tensor, dict]:
    """The decoded images of ``refs`` and the ``metadata`` stored with them.

    With ``cache_file`` set, a valid cache is read instead of decoding; a missing or unreadable one
    is (re)built. ``metadata`` must be weights_only-loadable (str, int, lists, dicts, tensors).
    """
    if cache_file is not None and cache_file.exists():
        try:
            blob = torch.load(cache_file, map_location="cpu", weights_only=True)
            # torch does not check the CRCs of tensor data: the stored SHA-256 does. A cache from
            # before checksums is rebuilt once (it is derived data; rebuilding loses nothing).
            if integrity.verify(blob, str(cache_file), "image cache") == "absent":
                raise integrity.IntegrityError("it has no content checksum (written by an older "
                                               "learnedopt), so its content cannot be verified")
            images = blob["images"]
            expected = (len(refs), spec.channels, spec.size, spec.size)
            if images.dtype == torch.uint8 and tuple(images.shape) == expected and \
                    blob["metadata"] == metadata:
                return images, blob["metadata"]
            log.warning("cache %s does not match its source (shape %s, expected %s); rebuilding",
                        cache_file, tuple(images.shape), expected)
        except Exception as exc:  # a truncated or foreign file is rebuilt, not trusted
            log.warning("cannot read cache %s (%s); rebuilding", cache_file, exc)
    images = decode_images(refs, spec, workers)
    if cache_file is not None:
        save_atomic(integrity.seal({"format": CACHE_FORMAT, "images": images, "metadata": metadata}),
                    cache_file)
    return images, metadata
