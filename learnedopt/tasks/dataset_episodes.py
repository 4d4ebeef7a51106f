"""N-way K-shot episodes over any map-style data set of ``(x, y)`` pairs.

    tasks = EpisodeTasks(train=train_set, val=val_set, test=test_set, ways=5, shots=1, queries=15)
    tasks = EpisodeTasks.from_class_split(dataset, val_classes=16, test_classes=20, ways=5)

Each split's labels are indexed once (:mod:`learnedopt.tasks.dataset_index`: ``dataset.targets``
when present, else one pass). An episode picks ``ways`` classes of its split and ``shots +
queries`` distinct items of each with :func:`~learnedopt.tasks.episodes.choose_classes` /
``choose_examples`` (the code of the built-in image tasks, so the same generator state gives the
same episodes), loads them with ``dataset[i]``, and relabels the classes 0..ways-1 in a random
order. Works on ``torchvision.datasets.ImageFolder`` (PIL images, ``.targets``) and on the
package's :class:`~learnedopt.tasks.folder_dataset.ImageFolderDataset`.
"""

from __future__ import annotations

import inspect
import random
import sys
from typing import Any, Callable, Hashable, Iterator

import numpy as np
import torch
from torch import Tensor

from learnedopt.tasks import episodes
from learnedopt.tasks.base import TaskBatch, fixed_task_batches
from learnedopt.tasks.dataset_index import (ClassIndex, dataset_labels, item_pair, plain_label,
                                            require_map_style, sorted_labels)

SPLITS = ("train", "val", "test")
# Pillow modes with a plain per-channel meaning after conversion to uint8; others are converted
# (palette, CMYK, ...) or refused (16-bit and float images: their scale is the data set's own).
_PIL_PLAIN_MODES = ("L", "LA", "RGB", "RGBA")
_PIL_CONVERT = {"1": "L", "P": "RGB", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB",
                "HSV": "RGB"}


def pil_to_tensor(image) -> Tensor:
    """A Pillow image as a float32 (C, H, W) tensor in [0, 1]."""
    mode = image.mode
    if mode not in _PIL_PLAIN_MODES:
        if mode not in _PIL_CONVERT:
            raise ValueError(f"cannot convert a Pillow image of mode {mode!r} (its value range is "
                             f"the data set's own); pass a transform that returns a tensor")
        target = "RGBA" if mode == "P" and "transparency" in image.info else _PIL_CONVERT[mode]
        image = image.convert(target)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
    if pixels.dim() == 2:
        pixels = pixels.unsqueeze(-1)
    return pixels.permute(2, 0, 1).to(torch.float32).div_(255.0)


def _is_pil_image(x: Any) -> bool:
    image_module = sys.modules.get("PIL.Image")  # a data set that returns PIL images imported it
    return image_module is not None and isinstance(x, image_module.Image)


def to_tensor(x: Any, where: str) -> Tensor:
    """An item's input as a tensor: tensors as they are, Pillow images as float32 (C, H, W) in
    [0, 1], arrays and numbers through ``torch.as_tensor``."""
    if isinstance(x, Tensor):
        return x
    if _is_pil_image(x):
        return pil_to_tensor(x)
    try:
        return torch.as_tensor(np.asarray(x) if hasattr(x, "__array__") else x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{where}: cannot turn a {type(x).__name__} into a tensor ({exc}); pass "
                        f"transform= to convert the items") from None


class EpisodeTasks:
    """N-way K-shot classification tasks over map-style data sets: ``train`` for ``sample`` and
    ``sample_flat``, ``val`` / ``test`` (optional) for ``fixed_tasks``.

    ``transform`` (optional) is applied to every item's x before conversion (e.g. to resize PIL
    images); it should be deterministic, since a random transform draws from the global RNG and
    the tasks would no longer follow the generator. Floating-point inputs are cast to ``dtype``
    (float32; None keeps them), integer inputs (token ids) are kept. Guarantees: x_* (B,
    ways*shots | ways*queries, *item shape) grouped by class, y_* int64 labels 0..ways-1 assigned
    per task in a random order; items of one episode are distinct; the same generator state gives
    the same episodes; every item of a split has the same shape (else a ValueError names it).
    """

    kind = "classification"

    def __init__(self, train, val=None, test=None, *, ways: int = 5, shots: int = 1,
                 queries: int = 15, transform: Callable[[Any], Any] | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = torch.float32,
                 name: str | None = None):
        splits = {}
        for split, dataset in (("train", train), ("val", val), ("test", test)):
            if dataset is not None:
                require_map_style(dataset, f"EpisodeTasks {split!r} split")
                splits[split] = (dataset, ClassIndex.build(dataset_labels(dataset)))
        self._setup(splits, ways, shots, queries, transform, device, dtype,
                    name or type(train).__name__, class_split=None)

    @classmethod
    def from_class_split(cls, dataset, *, val_classes: int | list = 0,
                         test_classes: int | list = 0, split_seed: int = 0,
                         **options) -> "EpisodeTasks":
        """Episodes over disjoint class subsets of one data set: ``val_classes`` /
        ``test_classes`` are counts (drawn from the sorted labels shuffled with Python's
        ``random.Random(split_seed)``) or explicit label lists; the remaining classes train.
        The data set is indexed once. ``options`` are those of the constructor."""
        require_map_style(dataset, "EpisodeTasks.from_class_split")
        labels = dataset_labels(dataset)
        classes = sorted_labels(labels)
        known = set(classes)
        chosen: dict[str, list[Hashable]] = {}
        for split, spec in (("test", test_classes), ("val", val_classes)):
            if isinstance(spec, bool) or not isinstance(spec, (int, list, tuple)):
                raise TypeError(f"EpisodeTasks.from_class_split: {split}_classes must be a count "
                                f"or a list of labels, got {type(spec).__name__}")
            if not isinstance(spec, int):
                listed = [plain_label(v, f"{split}_classes") for v in spec]
                unknown = [v for v in listed if v not in known]
                if unknown:
                    raise ValueError(f"EpisodeTasks.from_class_split: {split}_classes names labels "
                                     f"the data set does not have: {unknown[:5]!r}")
                chosen[split] = listed
        if len(set(chosen.get("val", [])) | set(chosen.get("test", []))) != \
                len(chosen.get("val", [])) + len(chosen.get("test", [])):
            raise ValueError("EpisodeTasks.from_class_split: val_classes and test_classes overlap "
                             "or repeat a label")
        taken = {v for listed in chosen.values() for v in listed}
        free = [c for c in classes if c not in taken]
        random.Random(split_seed).shuffle(free)
        for split, spec in (("test", test_classes), ("val", val_classes)):
            if isinstance(spec, int):
                if spec < 0 or spec > len(free):
                    raise ValueError(f"EpisodeTasks.from_class_split: {split}_classes={spec}, but "
                                     f"only {len(free)} classes are left to draw from")
                chosen[split], free = free[:spec], free[spec:]
        chosen["train"] = sorted_labels(free) if free else []
        splits = {}
        for split in SPLITS:
            if chosen.get(split):
                splits[split] = (dataset, ClassIndex.build(labels, sorted_labels(chosen[split])))
        if "train" not in splits:
            raise ValueError("EpisodeTasks.from_class_split: no classes are left for training")
        defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                    if p.kind is p.KEYWORD_ONLY}
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise TypeError(f"EpisodeTasks.from_class_split: unknown options {unknown}; valid: "
                            f"{sorted(defaults)}")
        options = {**defaults, "name": type(dataset).__name__, **options}
        record = {"split_seed": split_seed,
                  **{f"{s}_classes": [_json_label(v) for v in splits[s][1].labels]
                     for s in ("val", "test") if s in splits}}
        tasks = cls.__new__(cls)
        tasks._setup(splits, class_split=record, **options)
        return tasks

    def _setup(self, splits: dict[str, tuple[Any, ClassIndex]], ways: int, shots: int,
               queries: int, transform, device, dtype, name: str, class_split) -> None:
        for option, value, least in (("ways", ways, 1), ("shots", shots, 1), ("queries", queries, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"EpisodeTasks: {option} must be an int >= {least}, got {value!r}")
        if "train" not in splits:
            raise ValueError("EpisodeTasks: the train split is required")
        self.ways, self.shots, self.queries = ways, shots, queries
        self.num_classes = ways
        self.transform, self.dtype, self.name = transform, dtype, name
        self.device = torch.device(device)
        self.class_split = class_split
        self._splits = splits
        self._item_shape: tuple[int, ...] | None = None
        for split, (dataset, index) in splits.items():
            self._check_episode_shape(split, dataset, index)

    def _check_episode_shape(self, split: str, dataset, index: ClassIndex) -> None:
        if self.ways > index.num_classes:
            raise ValueError(f"EpisodeTasks: {self.ways}-way episodes need at least {self.ways} "
                             f"classes, the {split!r} split has {index.num_classes}")
        need = self.shots + self.queries
        small = (index.class_count < need).nonzero().flatten().tolist()
        if small:
            worst = min(small, key=lambda i: int(index.class_count[i]))
            raise ValueError(f"EpisodeTasks: shots + queries = {need} examples per class, but in "
                             f"the {split!r} split the class "
                             f"{_describe_class(dataset, index.labels[worst])} has only "
                             f"{int(index.class_count[worst])}"
                             + (f" ({len(small)} classes have fewer than {need})"
                                if len(small) > 1 else "")
                             + "; lower shots / queries or leave those classes out")

    # ---- the protocol ------------------------------------------------------------------------
    def sample(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        """``batch_size`` episodes of the training classes drawn with ``generator``."""
        return self.episodes("train", batch_size, generator)

    def fixed_tasks(self, split: str, num_tasks: int, batch_size: int, seed: int
                    ) -> Iterator[TaskBatch]:
        self._split(split)  # a missing split fails here, not at the first next()
        return fixed_task_batches(lambda count, generator: self.episodes(split, count, generator),
                                  split, num_tasks, batch_size, seed)

    def sample_flat(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, int]:
        """``batch_size`` training items drawn uniformly, with their class index among the
        training classes (in sorted label order): the transfer baselines' pre-training data."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        dataset, index = self._split("train")
        u = episodes._uniform((batch_size,), generator, index.device)
        position = (u * index.num_items).long().clamp_(max=index.num_items - 1)
        cls = torch.searchsorted(index.class_start, position, right=True) - 1
        x = self._load(dataset, index, index.items[position].tolist(), cls.tolist(), "train")
        return x.to(self.device), cls.to(self.device), index.num_classes

    def config(self) -> dict:
        transform = self.transform
        return {"task": "episodes", "dataset": self.name, "ways": self.ways,
                "shots": self.shots, "queries": self.queries,
                "classes": {s: index.num_classes for s, (_, index) in self._splits.items()},
                "examples": {s: index.num_items for s, (_, index) in self._splits.items()},
                "class_split": self.class_split,
                "transform": None if transform is None else
                getattr(transform, "__qualname__", type(transform).__qualname__)}

    # ---- episodes ----------------------------------------------------------------------------
    def num_split_classes(self, split: str) -> int:
        return self._split(split)[1].num_classes

    def episodes(self, split: str, count: int, generator: torch.Generator) -> TaskBatch:
        """``count`` episodes of ``split`` drawn with ``generator``."""
        if count < 1:
            raise ValueError(f"the number of tasks must be >= 1, got {count}")
        dataset, index = self._split(split)
        per_class = self.shots + self.queries
        classes = episodes.choose_classes(index, count, self.ways, generator)
        position = episodes.choose_examples(index, classes, per_class, generator)
        owner = classes[..., None].expand_as(position)
        x = self._load(dataset, index, index.items[position].flatten().tolist(),
                       owner.flatten().tolist(), split)
        x = x.view(count, self.ways, per_class, *x.shape[1:])
        labels = torch.arange(self.ways)
        shots, queries = self.shots, self.queries
        batch = TaskBatch(x[:, :, :shots].reshape(count, self.ways * shots, *x.shape[3:]),
                          labels.repeat_interleave(shots).expand(count, -1).contiguous(),
                          x[:, :, shots:].reshape(count, self.ways * queries, *x.shape[3:]),
                          labels.repeat_interleave(queries).expand(count, -1).contiguous())
        return batch.to(self.device)

    def _split(self, split: str) -> tuple[Any, ClassIndex]:
        if split not in SPLITS:
            raise ValueError(f"EpisodeTasks: split must be one of {SPLITS}, got {split!r}")
        if split not in self._splits:
            raise ValueError(f"EpisodeTasks has no {split!r} split: pass {split}=<data set> or "
                             f"build it with EpisodeTasks.from_class_split(..., "
                             f"{split}_classes=...)")
        return self._splits[split]

    def _load(self, dataset, index: ClassIndex, items: list[int], classes: list[int],
              split: str) -> Tensor:
        """dataset[i] for each of ``items`` (of class positions ``classes``), stacked."""
        loaded = []
        for item, cls in zip(items, classes):
            x, label = item_pair(dataset[item], item)
            expected = index.labels[cls]
            if plain_label(label, f"{split} dataset[{item}]") != expected:
                raise ValueError(f"EpisodeTasks: the {split} dataset[{item}] has label {label!r} "
                                 f"but its targets say {expected!r} (targets out of date, or a "
                                 f"target_transform?)")
            where = f"the {split} dataset[{item}] (class {expected!r})"
            x = to_tensor(self.transform(x) if self.transform is not None else x, where)
            if self._item_shape is None:
                self._item_shape = tuple(x.shape)
            elif tuple(x.shape) != self._item_shape:
                raise ValueError(f"EpisodeTasks: {where} has shape {tuple(x.shape)} but earlier "
                                 f"items have {self._item_shape}; every item needs the same "
                                 f"shape (resize them with transform=...)")
            loaded.append(x)
        x = torch.stack(loaded)
        if x.is_floating_point() and self.dtype is not None:
            x = x.to(self.dtype)
        return x


def _json_label(label: Hashable):
    return label if isinstance(label, (int, str, float, bool)) else repr(label)


def _describe_class(dataset, label: Hashable) -> str:
    """``label`` for a message, with its name when the data set lists names (``classes``, as
    torchvision's data sets do)."""
    names = getattr(dataset, "classes", None)
    if isinstance(label, int) and isinstance(names, (list, tuple)) and 0 <= label < len(names):
        return f"{label!r} ({names[label]!r})"
    return repr(label)
