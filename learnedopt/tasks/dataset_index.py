"""Which items of a map-style data set of ``(x, y)`` pairs belong to which class, found once.

The labels come from ``dataset.targets`` when it has one (torchvision data sets, the package's
:class:`~learnedopt.tasks.folder_dataset.ImageFolderDataset`), from the parent's ``targets`` for a
``torch.utils.data.Subset``, and otherwise from one pass over ``dataset[i][1]`` (which loads every
item once). A :class:`ClassIndex` then lists, class by class, the item indices: the bookkeeping
learn2learn's ``MetaDataset`` keeps as ``labels_to_indices``, held as tensors so that
:func:`learnedopt.tasks.episodes.choose_classes` / ``choose_examples`` draw episodes from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import torch
from torch import Tensor


def require_map_style(dataset: Any, what: str) -> None:
    """Raise a TypeError unless ``dataset`` can be indexed and measured."""
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise TypeError(f"{what}: needs a map-style data set (with __len__ and __getitem__ "
                        f"returning (x, y)); got {type(dataset).__name__}" +
                        (" (an IterableDataset cannot be indexed)"
                         if isinstance(dataset, torch.utils.data.IterableDataset) else ""))
    if len(dataset) < 1:
        raise ValueError(f"{what}: the data set is empty")


def plain_label(label: Any, where: str) -> Hashable:
    """A class label as a plain hashable value: one-element tensors and NumPy scalars become
    Python numbers; anything unhashable is refused."""
    if isinstance(label, Tensor):
        if label.numel() != 1:
            raise ValueError(f"{where}: a class label must be a single value, got a tensor of "
                             f"shape {tuple(label.shape)}")
        return label.item()
    if hasattr(label, "item") and getattr(label, "shape", None) == ():
        return label.item()  # NumPy scalar or 0-d array
    try:
        hash(label)
    except TypeError:
        raise ValueError(f"{where}: a class label must be hashable (an int or a string), got "
                         f"{type(label).__name__}") from None
    return label


def item_pair(item: Any, index: int) -> tuple[Any, Any]:
    """``(x, y)`` of the item ``dataset[index]`` (a tuple or list whose first two entries are
    the input and the label, as torchvision's data sets return)."""
    if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) < 2:
        raise ValueError(f"dataset[{index}] must be an (x, y) pair, got {type(item).__name__}")
    return item[0], item[1]


def item_label(item: Any, index: int) -> Hashable:
    """The label of the item ``dataset[index]``."""
    return plain_label(item_pair(item, index)[1], f"dataset[{index}]")


def _targets(dataset: Any) -> list | None:
    """The per-item labels a data set declares without loading its items, or None."""
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        values = targets.tolist() if hasattr(targets, "tolist") else list(targets)
        if len(values) != len(dataset):
            raise ValueError(f"{type(dataset).__name__}.targets holds {len(values)} labels for "
                             f"{len(dataset)} items")
        return [plain_label(v, f"{type(dataset).__name__}.targets[{i}]")
                for i, v in enumerate(values)]
    if isinstance(dataset, torch.utils.data.Subset):
        parent = _targets(dataset.dataset)
        if parent is not None:
            return [parent[int(i)] for i in dataset.indices]
    return None


def dataset_labels(dataset: Any) -> list[Hashable]:
    """One label per item of ``dataset``, from ``targets`` when available, else one pass."""
    labels = _targets(dataset)
    if labels is None:
        labels = [item_label(dataset[i], i) for i in range(len(dataset))]
    return labels


def sorted_labels(labels) -> list[Hashable]:
    """Distinct labels in sorted order (by type name, then repr, when they do not compare)."""
    distinct = set(labels)
    try:
        return sorted(distinct)
    except TypeError:
        return sorted(distinct, key=lambda v: (type(v).__name__, repr(v)))


@dataclass
class ClassIndex:
    """The items of some classes of a data set: ``items`` (int64) holds the data-set indices
    grouped by class in the order of ``labels`` (within a class, in data-set order); class i owns
    ``items[class_start[i] : class_start[i] + class_count[i]]``.

    It has the fields :func:`~learnedopt.tasks.episodes.choose_classes` and
    ``choose_examples`` read from a ClassPool (``num_classes``, ``class_count``,
    ``class_start``, ``max_count``, ``min_count``, ``device``), so episodes are drawn from it
    with the same code, positions into ``items`` coming back.
    """
    labels: list[Hashable]
    items: Tensor
    class_start: Tensor
    class_count: Tensor

    @classmethod
    def build(cls, item_labels: list[Hashable], classes: list[Hashable] | None = None
              ) -> "ClassIndex":
        """The index of ``classes`` (default: every label present, sorted) over items whose
        labels are ``item_labels``. Every class must have at least one item."""
        if classes is None:
            classes = sorted_labels(item_labels)
        if not classes:
            raise ValueError("ClassIndex: no classes")
        position = {label: i for i, label in enumerate(classes)}
        if len(position) != len(classes):
            raise ValueError("ClassIndex: the class list holds duplicates")
        slot = torch.tensor([position.get(label, -1) for label in item_labels], dtype=torch.int64)
        counts = torch.bincount(slot[slot >= 0], minlength=len(classes))
        empty = [classes[i] for i in (counts == 0).nonzero().flatten().tolist()]
        if empty:
            raise ValueError(f"ClassIndex: no items of the classes {empty[:5]!r}"
                             + (f" and {len(empty) - 5} more" if len(empty) > 5 else ""))
        member = (slot >= 0).nonzero().flatten()
        items = member[torch.argsort(slot[member], stable=True)]
        return cls(list(classes), items, torch.cumsum(counts, 0) - counts, counts)

    def __post_init__(self):
        self.max_count = int(self.class_count.max())
        self.min_count = int(self.class_count.min())

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def num_items(self) -> int:
        return self.items.numel()

    @property
    def device(self) -> torch.device:
        return self.items.device
