"""N-way K-shot tasks from any image data set laid out one folder per class (miniImageNet, CUB).

Layouts, per split ("train", "val", "test"):
- ``<root>/<split>/<class>/*.jpg|jpeg|png`` (CUB and most miniImageNet copies), or
- Ravi & Larochelle's miniImageNet release: ``<root>/images/*.jpg`` with ``<root>/<split>.csv``
  rows ``filename,label``.
``split_dirs`` points a split elsewhere, e.g. {"test": "/data/CUB/novel"} to meta-train on
miniImageNet and meta-test on CUB. Images are decoded once per split (RGB, LANCZOS-resized to
``image_size`` squared) into a uint8 tensor file in the cache folder; the training split is
loaded at construction, the others on first use.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch

from learnedopt.tasks import episodes
from learnedopt.tasks.episodes import ClassPool
from learnedopt.tasks.image_cache import (IMAGE_SUFFIXES, DecodeSpec, ImageRef, cache_key,
                                          default_cache_dir, load_or_decode)

SPLITS = ("train", "val", "test")


def _list_class_folders(folder: Path) -> tuple[list[str], list[list[str]]]:
    classes, files = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        images = sorted(f.path for f in os.scandir(entry.path)
                        if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES))
        if images:
            classes.append(entry.name)
            files.append(images)
    return classes, files


def _list_csv(csv_path: Path, image_dir: Path) -> tuple[list[str], list[list[str]]]:
    by_class: dict[str, list[str]] = {}
    with open(csv_path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or (lineno == 1 and row[0].strip().lower() == "filename"):
                continue
            if len(row) != 2:
                raise ValueError(f"image folder: {csv_path}:{lineno}: expected 'filename,label', "
                                 f"got {row!r}")
            by_class.setdefault(row[1].strip(), []).append(str(image_dir / row[0].strip()))
    classes = sorted(by_class)
    return classes, [sorted(by_class[c]) for c in classes]


def list_split(root: Path, split: str, folder: Path | None = None
               ) -> tuple[list[str], list[list[str]]]:
    """Class names (sorted) and, per class, its image files (sorted) for one split."""
    folder = folder if folder is not None else root / split
    csv_path = root / f"{split}.csv"
    if folder.is_dir():
        classes, files = _list_class_folders(folder)
        where = folder
    elif csv_path.is_file() and (root / "images").is_dir():
        classes, files = _list_csv(csv_path, root / "images")
        where = csv_path
    else:
        raise FileNotFoundError(f"image folder: no {split!r} split: expected the folder {folder} "
                                f"(<class>/<image>.jpg|png) or {csv_path} with {root / 'images'}")
    if not classes:
        raise ValueError(f"image folder: {where} holds no classes with "
                         f"{'/'.join(IMAGE_SUFFIXES)} images")
    return classes, files


def load_split(root: Path, split: str, image_size: int, cache_dir: Path | None,
               folder: Path | None = None, workers: int | None = None) -> ClassPool:
    """The decoded images of one split as a CPU ClassPool (read from the cache when valid)."""
    classes, files = list_split(root, split, folder)
    flat = [p for per_class in files for p in per_class]
    fingerprint = []
    for path in flat:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise FileNotFoundError(f"image folder: cannot read {path}: {exc}") from exc
        fingerprint.append([os.path.relpath(path, root), st.st_size, st.st_mtime_ns])
    spec = DecodeSpec(mode="RGB", size=image_size)
    cache_file = None
    if cache_dir is not None:
        key = cache_key(f"image_folder/{split}", spec, fingerprint)
        cache_file = cache_dir / f"imagefolder-{root.name}-{split}-{image_size}px-{key}.pt"
    images, _ = load_or_decode(cache_file, [ImageRef(p) for p in flat], spec,
                               {"classes": classes}, workers)
    counts = torch.tensor([len(f) for f in files], dtype=torch.int64)
    return ClassPool(images, torch.cumsum(counts, 0) - counts, counts, classes)


class ImageFolderTasks(episodes.PoolSampler):
    """N-way K-shot tasks over the classes of an image-folder data set (see the module docstring).

    ``sample`` draws meta-training tasks from the "train" split, ``fixed_tasks`` seeded "val" /
    "test" tasks, ``sample_flat`` single training images with their class index.
    """
    kind = "classification"

    def __init__(self, data_root: str | Path, ways: int = 5, shots: int = 1, queries: int = 15,
                 image_size: int = 84, split_dirs: dict[str, str | Path] | None = None,
                 cache_dir: str | Path | None = None, use_cache: bool = True,
                 device: str | torch.device = "cpu", workers: int | None = None,
                 name: str | None = None):
        self.data_root = Path(data_root)
        if not self.data_root.is_dir():
            raise FileNotFoundError(f"image folder: data root {self.data_root} does not exist or "
                                    f"is not a folder")
        if image_size < 1:
            raise ValueError(f"image folder: image_size must be >= 1, got {image_size}")
        unknown = set(split_dirs or {}) - set(SPLITS)
        if unknown:
            raise ValueError(f"image folder: split_dirs keys must be among {SPLITS}, "
                             f"got {sorted(unknown)}")
        self.split_dirs = {k: Path(v) for k, v in (split_dirs or {}).items()}
        self.ways, self.shots, self.queries = ways, shots, queries
        self.num_classes = ways
        self.image_size = image_size
        self.name = name or self.data_root.name
        self.device = torch.device(device)
        self.workers = workers
        self.cache_dir = None if not use_cache else (
            Path(cache_dir) if cache_dir is not None else default_cache_dir(self.data_root))
        self._pools: dict[str, ClassPool] = {}
        self.pool("train")

    def pool(self, split: str) -> ClassPool:
        """The classes and images of "train", "val" or "test" on the sampler's device (decoded or
        read from the cache on first use)."""
        if split not in SPLITS:
            raise ValueError(f"image folder: split must be one of {SPLITS}, got {split!r}")
        if split not in self._pools:
            pool = load_split(self.data_root, split, self.image_size, self.cache_dir,
                              self.split_dirs.get(split), self.workers)
            episodes.check_episode_shape(pool, self.ways, self.shots, self.queries, split=split)
            self._pools[split] = pool.to(self.device)
        return self._pools[split]

    def config(self) -> dict:
        return {"task": "image_folder", "dataset": self.name, "image_size": self.image_size,
                "ways": self.ways, "shots": self.shots, "queries": self.queries,
                "rotations": False,
                "split_dirs": {k: str(v) for k, v in sorted(self.split_dirs.items())},
                "classes": {s: p.num_classes for s, p in self._pools.items()}}

