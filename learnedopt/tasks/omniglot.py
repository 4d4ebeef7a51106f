"""Omniglot (Lake et al. 2015) N-way K-shot tasks with the standard class splits.

The data root holds the release: ``images_background.zip`` and ``images_evaluation.zip`` (or their
extracted folders), optionally the "minimal" ``images_background_small1/2`` and
``splits/vinyals/{train,val,test}.txt``. Each archive is decoded once (grayscale, LANCZOS-resized,
inverted so strokes are 1.0 as in MAML) into a uint8 tensor file in the cache folder.

Class splits (``split=``):
- "vinyals": the Vinyals et al. (2016) lists, 1028 / 172 / 423 characters, each with its four
  rotations as classes (4112 / 688 / 1692 classes).
- "maml": all 1623 characters in sorted order, shuffled with Python's ``random.Random(split_seed)``
  (MAML shuffles its folder list with ``random.seed(1)``; its order came from ``os.listdir`` and
  cannot be reproduced, so the membership differs from MAML's own run but the protocol is the
  same): the first ``train_characters`` (1200) are meta-training, of which the last
  ``val_characters`` (default 220, MetaLSTM++) are held out for validation; the other 423 are the
  meta-test characters.
- "lake": meta-train on the background set (or a "minimal" one via ``background=``), meta-test
  on the evaluation set. Validation: whole background alphabets held out (``val_alphabets``,
  default :data:`LAKE_VAL_ALPHABETS` for the full background set, none for the minimal ones), so
  validation tasks, like the test tasks, come from alphabets never meta-trained on; or instead
  ``val_characters`` of the shuffled background characters. Lake's own task is
  ``within_alphabet=True``, 20-way 1-shot, no rotations.
With ``rotations`` (default) every character also appears rotated by 90, 180 and 270 degrees as
three further classes.
"""

from __future__ import annotations

import os
import random
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from learnedopt.tasks import episodes
from learnedopt.tasks.base import TaskBatch
from learnedopt.tasks.episodes import ClassPool
from learnedopt.tasks.image_cache import (DecodeSpec, ImageRef, cache_key, default_cache_dir,
                                          load_or_decode)

BACKGROUND_SETS = ("images_background", "images_background_small1", "images_background_small2")
EVALUATION_SET = "images_evaluation"
SPLIT_SCHEMES = ("vinyals", "maml", "lake")
# The background alphabets the "lake" split holds out for validation: five of the 30, 167 of the
# 964 characters (17%), each with at least 20 characters so that within-alphabet 20-way
# validation tasks exist, from different script families (Indic, Cyrillic, invented, Semitic,
# Hangul). Our choice: Lake et al. define no validation set.
LAKE_VAL_ALPHABETS = ("Bengali", "Cyrillic", "Futurama", "Hebrew", "Korean")
_ROTATION_ENTRY = re.compile(r"^([^/]+/[^/]+)/rot(\d{3})$")


@dataclass
class OmniglotSet:
    """One decoded release archive: images (num_images, 1, S, S) uint8, characters as
    "Alphabet/characterNN" in sorted order, each owning ``counts[i]`` consecutive images."""
    name: str
    images: Tensor
    characters: list[str]
    counts: list[int]


def _list_zip(path: Path) -> tuple[list[ImageRef], list[str], list]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"Omniglot: {path} is not a readable zip archive: {exc}") from exc
    entries = []
    for info in infos:
        name = info.filename
        # Skips folders, non-images and macOS/hidden litter ("__MACOSX/...", "._x.png").
        if not name.lower().endswith(".png") or "__MACOSX" in name or name.startswith(".") or \
                "/." in name:
            continue
        parts = name.split("/")
        if len(parts) < 3:
            continue
        entries.append(("/".join(parts[-3:-1]), parts[-1], name, info.CRC, info.file_size))
    entries.sort()
    refs = [ImageRef(str(path), e[2]) for e in entries]
    fingerprint = [[e[2], e[3], e[4]] for e in entries]
    return refs, [e[0] for e in entries], fingerprint


def _list_folder(path: Path) -> tuple[list[ImageRef], list[str], list]:
    entries = []
    for alphabet in sorted(os.scandir(path), key=lambda e: e.name):
        if not alphabet.is_dir() or alphabet.name.startswith("."):
            continue
        for character in sorted(os.scandir(alphabet.path), key=lambda e: e.name):
            if not character.is_dir() or character.name.startswith("."):
                continue
            for drawing in sorted(os.scandir(character.path), key=lambda e: e.name):
                if drawing.name.lower().endswith(".png") and drawing.is_file():
                    st = drawing.stat()
                    entries.append((f"{alphabet.name}/{character.name}", drawing.name,
                                    drawing.path, st.st_size, st.st_mtime_ns))
    refs = [ImageRef(e[2]) for e in entries]
    fingerprint = [[f"{e[0]}/{e[1]}", e[3], e[4]] for e in entries]
    return refs, [e[0] for e in entries], fingerprint


def load_omniglot_set(data_root: str | Path, name: str, image_size: int = 28,
                      cache_dir: str | Path | None = None, workers: int | None = None,
                      use_cache: bool = True) -> OmniglotSet:
    """Decode (or read from the cache) the release archive ``name`` ("images_background", ...),
    from ``<data_root>/<name>.zip`` if present, else from the extracted ``<data_root>/<name>/``."""
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"Omniglot: data root {root} does not exist or is not a folder")
    if image_size < 1:
        raise ValueError(f"Omniglot: image_size must be >= 1, got {image_size}")
    zip_path, folder = root / f"{name}.zip", root / name
    if zip_path.is_file():
        refs, characters, fingerprint = _list_zip(zip_path)
        source = zip_path
    elif folder.is_dir():
        refs, characters, fingerprint = _list_folder(folder)
        source = folder
    else:
        raise FileNotFoundError(f"Omniglot: neither {zip_path} nor the extracted folder {folder} "
                                f"exists (expected the Omniglot release in {root})")
    if not refs:
        raise ValueError(f"Omniglot: {source} holds no PNG drawings in the layout "
                         f"<Alphabet>/<characterNN>/<drawing>.png")
    counts: dict[str, int] = {}
    for c in characters:
        counts[c] = counts.get(c, 0) + 1
    spec = DecodeSpec(mode="L", size=image_size, invert=True)
    cache_file = None
    if use_cache:
        folder_for_cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(root)
        key = cache_key(f"omniglot/{name}", spec, fingerprint)
        cache_file = folder_for_cache / f"omniglot-{name}-{image_size}px-{key}.pt"
    images, _ = load_or_decode(cache_file, refs, spec, {"characters": list(counts)}, workers)
    return OmniglotSet(name, images, list(counts), list(counts.values()))


class _Characters:
    """Every character of the loaded archives: images (num_images, 1, S, S), where each
    character's drawings start, how many there are, and its alphabet's index."""

    def __init__(self, sets: list[OmniglotSet]):
        names = [c for s in sets for c in s.characters]
        if len(set(names)) != len(names):
            raise ValueError("Omniglot: the same character appears in two loaded archives "
                             f"({', '.join(s.name for s in sets)})")
        self.images = torch.cat([s.images for s in sets])
        counts = [n for s in sets for n in s.counts]
        starts = torch.cumsum(torch.tensor(counts), 0) - torch.tensor(counts)
        self.index = {c: i for i, c in enumerate(names)}
        self.range = {c: (int(starts[i]), counts[i]) for i, c in enumerate(names)}
        alphabets = sorted({c.split("/")[0] for c in names})
        self.alphabet = {c: alphabets.index(c.split("/")[0]) for c in names}

    def pool(self, entries: list[tuple[str, int]]) -> ClassPool:
        """The classes (character, quarter turns) as a pool; a rotated class holds rotated copies
        (counter-clockwise as displayed, like PIL's rotate(90 * turns)) of the drawings."""
        blocks = []
        for char, turns in entries:
            start, count = self.range[char]
            blocks.append(torch.rot90(self.images[start:start + count], turns, dims=(-2, -1)))
        return ClassPool.from_blocks(blocks, [f"{c}/rot{90 * r:03d}" for c, r in entries],
                                     [self.alphabet[c] for c, _ in entries])


def _read_vinyals(data_root: Path, split: str) -> list[tuple[str, int]]:
    path = data_root / "splits" / "vinyals" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"Omniglot: the Vinyals split file {path} does not exist "
                                f"(expected splits/vinyals/{{train,val,test}}.txt in the data root)")
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        m = _ROTATION_ENTRY.match(line)
        if m is None or int(m.group(2)) not in (0, 90, 180, 270):
            raise ValueError(f"Omniglot: {path}:{lineno}: expected 'Alphabet/characterNN/rotDDD' "
                             f"with DDD in 000/090/180/270, got {line!r}")
        out.append((m.group(1), int(m.group(2)) // 90))
    return out


class OmniglotTasks(episodes.PoolSampler):
    """N-way K-shot Omniglot tasks; see the module docstring for the splits.

    ``sample`` draws meta-training tasks; ``fixed_tasks("val"|"test", ...)`` the seeded evaluation
    tasks; ``sample_flat`` single images of the meta-training classes for the transfer baselines.
    """
    kind = "classification"

    def __init__(self, data_root: str | Path, ways: int = 5, shots: int = 1, queries: int = 15,
                 split: str = "vinyals", rotations: bool = True, image_size: int = 28,
                 train_characters: int = 1200, val_characters: int | None = None,
                 split_seed: int = 1, background: str = "images_background",
                 within_alphabet: bool = False, val_alphabets: tuple[str, ...] | None = None,
                 cache_dir: str | Path | None = None,
                 use_cache: bool = True, device: str | torch.device = "cpu",
                 workers: int | None = None):
        if split not in SPLIT_SCHEMES:
            raise ValueError(f"Omniglot: split must be one of {SPLIT_SCHEMES}, got {split!r}")
        if background not in BACKGROUND_SETS:
            raise ValueError(f"Omniglot: background must be one of {BACKGROUND_SETS}, "
                             f"got {background!r}")
        if split != "lake" and background != "images_background":
            raise ValueError(f"Omniglot: background={background!r} only applies to split='lake'")
        if split == "vinyals" and val_characters is not None:
            raise ValueError("Omniglot: the Vinyals split fixes its validation classes; "
                             "val_characters applies to split='maml' or 'lake'")
        if val_alphabets is not None and split != "lake":
            raise ValueError("Omniglot: val_alphabets applies to split='lake' only")
        if isinstance(val_alphabets, str):
            raise ValueError(f"Omniglot: val_alphabets must be a list of alphabet names, got the "
                             f"string {val_alphabets!r}")
        if split == "lake" and val_alphabets and val_characters:
            raise ValueError("Omniglot: give val_alphabets or val_characters, not both (the "
                             "'lake' validation classes are whole alphabets or random characters)")
        if split == "lake" and val_alphabets is None:
            default_alphabets = not val_characters and background == "images_background"
            val_alphabets = LAKE_VAL_ALPHABETS if default_alphabets else ()
        if val_characters is None:
            val_characters = {"vinyals": 0, "maml": 220, "lake": 0}[split]
        if val_characters < 0:
            raise ValueError(f"Omniglot: val_characters must be >= 0, got {val_characters}")
        self.data_root = Path(data_root)
        self.ways, self.shots, self.queries = ways, shots, queries
        self.split, self.rotations, self.image_size = split, rotations, image_size
        self.train_characters, self.val_characters = train_characters, val_characters
        self.split_seed, self.background = split_seed, background
        self.within_alphabet = within_alphabet
        self.val_alphabets = tuple(val_alphabets) if val_alphabets is not None else None
        self.device = torch.device(device)

        set_names = [background if split == "lake" else "images_background", EVALUATION_SET]
        sets = [load_omniglot_set(self.data_root, n, image_size, cache_dir, workers, use_cache)
                for n in set_names]
        characters = _Characters(sets)
        self._pools: dict[str, ClassPool] = {
            name: characters.pool(entries).to(self.device)
            for name, entries in self._split_characters(sets, characters.index).items() if entries}
        self.num_classes = ways
        # Training fails at construction; val/test when first asked for (a split may be too small
        # for the training protocol yet never be evaluated).
        self._checked: set[str] = set()
        self.pool("train")

    def _split_characters(self, sets: list[OmniglotSet], index_of: dict[str, int]
                          ) -> dict[str, list[tuple[str, int]]]:
        turns = range(4) if self.rotations else range(1)
        if self.split == "vinyals":
            out = {}
            for name in ("train", "val", "test"):
                entries = [(c, r) for c, r in _read_vinyals(self.data_root, name) if r in turns]
                missing = [c for c, _ in entries if c not in index_of]
                if missing:
                    raise ValueError(f"Omniglot: the Vinyals {name} split names characters not "
                                     f"in the archives, e.g. {missing[0]!r}")
                out[name] = entries
            return out
        if self.split == "maml":
            characters = sorted(index_of)
            if not 0 < self.train_characters < len(characters):
                raise ValueError(f"Omniglot: train_characters must be in 1..{len(characters) - 1} "
                                 f"(there are {len(characters)} characters), "
                                 f"got {self.train_characters}")
            if self.val_characters >= self.train_characters:
                raise ValueError(f"Omniglot: val_characters ({self.val_characters}) must be fewer "
                                 f"than train_characters ({self.train_characters})")
            random.Random(self.split_seed).shuffle(characters)
            n_train = self.train_characters - self.val_characters
            groups = {"train": characters[:n_train],
                      "val": characters[n_train:self.train_characters],
                      "test": characters[self.train_characters:]}
        else:  # lake
            background = list(sets[0].characters)
            if self.val_alphabets:
                present = sorted({c.split("/")[0] for c in background})
                missing = [a for a in self.val_alphabets if a not in present]
                if missing:
                    raise ValueError(f"Omniglot: validation alphabet(s) {missing} are not in "
                                     f"{self.background} (its alphabets: {', '.join(present)}); "
                                     f"pass val_alphabets=[...] or [] for none")
                held = set(self.val_alphabets)
                return {name: [(c, r) for c in chars for r in turns] for name, chars in {
                    "train": [c for c in background if c.split("/")[0] not in held],
                    "val": [c for c in background if c.split("/")[0] in held],
                    "test": list(sets[1].characters)}.items()}
            if self.val_characters >= len(background):
                raise ValueError(f"Omniglot: val_characters ({self.val_characters}) must be fewer "
                                 f"than the {len(background)} background characters")
            random.Random(self.split_seed).shuffle(background)
            n_train = len(background) - self.val_characters
            groups = {"train": sorted(background[:n_train]), "val": sorted(background[n_train:]),
                      "test": list(sets[1].characters)}
        return {name: [(c, r) for c in chars for r in turns] for name, chars in groups.items()}

    def pool(self, split: str) -> ClassPool:
        """The classes and images of "train", "val" or "test" on the sampler's device."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"Omniglot: split must be 'train', 'val' or 'test', got {split!r}")
        if split not in self._pools:
            hint = ("val_alphabets=[...] or val_characters > 0" if self.split == "lake" else
                    "val_characters > 0")
            raise ValueError(f"Omniglot: the {self.split!r} split has no {split!r} classes "
                             f"(set {hint} to hold some out)")
        pool = self._pools[split]
        if split not in self._checked:
            episodes.check_episode_shape(pool, self.ways, self.shots, self.queries,
                                         self.within_alphabet, split)
            self._checked.add(split)
        return pool

    def num_split_classes(self, split: str) -> int:
        return self._pools[split].num_classes if split in self._pools else 0

    def config(self) -> dict:
        config = {"task": "omniglot", "split": self.split, "image_size": self.image_size,
                  "ways": self.ways, "shots": self.shots, "queries": self.queries,
                  "rotations": self.rotations, "within_alphabet": self.within_alphabet,
                  "classes": {s: self.num_split_classes(s) for s in ("train", "val", "test")}}
        # Only the knobs that shaped this split, so two configs differ only where protocols do.
        if self.split != "vinyals":
            config.update(val_characters=self.val_characters, split_seed=self.split_seed)
        if self.split == "maml":
            config["train_characters"] = self.train_characters
        if self.split == "lake":
            config["background"] = self.background
            config["val_alphabets"] = list(self.val_alphabets or ())
        return config

    def _draw(self, pool: ClassPool, count: int, generator: torch.Generator) -> TaskBatch:
        return episodes.sample_episodes(pool, count, self.ways, self.shots, self.queries,
                                        generator, self.within_alphabet)

