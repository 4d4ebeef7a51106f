"""N-way K-shot episodes drawn from a pool of classes by tensor indexing on the pool's device.

A ``ClassPool`` holds every image of one split as ONE uint8 tensor plus, per class, where its
consecutive images start and how many there are (a rotated Omniglot character is a class of its
own with its own rotated copies, so sampling never rotates). A whole batch of episodes is a
handful of tensor ops: random keys + top-k choose the classes and, per class, the examples; one
gather reads the pixels; one conversion makes them float. No Python loop over tasks, no decoding
per episode; the same generator state gives the same episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from learnedopt.tasks.base import TaskBatch, fixed_task_batches


@dataclass
class ClassPool:
    """images: uint8 (num_images, C, H, W); class_start / class_count: int64 (num_classes,), the
    first image and number of images of each class (class i owns the block after class i-1's);
    class_group: int64 (num_classes,) or None, a
    grouping (Omniglot alphabet) for within-group episodes."""
    images: Tensor
    class_start: Tensor
    class_count: Tensor
    class_names: list[str]
    class_group: Tensor | None = None

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"ClassPool: images must be uint8 (num_images, C, H, W), got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        n = len(self.class_names)
        if n == 0:
            raise ValueError("ClassPool: no classes")
        fields = [("class_start", self.class_start), ("class_count", self.class_count)]
        if self.class_group is not None:
            fields.append(("class_group", self.class_group))
        for name, t in fields:
            if t.dtype != torch.int64 or t.shape != (n,):
                raise ValueError(f"ClassPool: {name} must be int64 of shape ({n},), got "
                                 f"{t.dtype} {tuple(t.shape)}")
        if bool((self.class_count < 1).any()):
            raise ValueError("ClassPool: every class needs at least one image")
        ends = torch.cumsum(self.class_count, 0)
        if not torch.equal(self.class_start, ends - self.class_count) or \
                int(ends[-1]) != self.images.shape[0]:
            raise ValueError("ClassPool: classes must own consecutive blocks of images, in class "
                             "order, covering the image tensor")
        self.max_count = int(self.class_count.max())
        self.min_count = int(self.class_count.min())

    @classmethod
    def from_blocks(cls, blocks: list[Tensor], names: list[str], groups: list[int] | None = None
                    ) -> "ClassPool":
        """A pool whose class i owns the uint8 images ``blocks[i]`` (count_i, C, H, W)."""
        counts = torch.tensor([len(b) for b in blocks], dtype=torch.int64)
        group = None if groups is None else torch.tensor(groups, dtype=torch.int64)
        return cls(torch.cat(blocks), torch.cumsum(counts, 0) - counts, counts, names, group)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def class_images(self, i: int) -> Tensor:
        start = int(self.class_start[i])
        return self.images[start:start + int(self.class_count[i])]

    def to(self, device: torch.device | str) -> "ClassPool":
        group = None if self.class_group is None else self.class_group.to(device)
        return ClassPool(self.images.to(device), self.class_start.to(device),
                         self.class_count.to(device), self.class_names, group)


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    # Drawn on the generator's device so a CPU generator gives the same episodes for any target
    # device; a generator on the target device avoids the copy.
    u = torch.rand(shape, generator=generator, device=generator.device)
    return u.to(device, non_blocking=True)


def choose_classes(pool: ClassPool, batch_size: int, ways: int, generator: torch.Generator,
                   within_group: bool = False) -> Tensor:
    """(B, ways) distinct class indices per task, uniformly at random (optionally all from one
    group, the group drawn uniformly among those with at least ``ways`` classes)."""
    device = pool.device
    if not within_group:
        keys = _uniform((batch_size, pool.num_classes), generator, device)
        return keys.topk(ways, dim=1).indices
    group = pool.class_group
    num_groups = int(group.max()) + 1
    sizes = torch.bincount(group, minlength=num_groups)
    eligible = (sizes >= ways).nonzero().squeeze(1)
    pick = (_uniform((batch_size,), generator, device) * len(eligible)).long()
    pick = pick.clamp_(max=len(eligible) - 1)
    chosen_group = eligible[pick]
    keys = _uniform((batch_size, pool.num_classes), generator, device)
    keys = keys.masked_fill(group[None, :] != chosen_group[:, None], -1.0)
    return keys.topk(ways, dim=1).indices


def choose_examples(pool: ClassPool, classes: Tensor, per_class: int,
                    generator: torch.Generator) -> Tensor:
    """(B, N, per_class) image indices: distinct examples of each chosen class, random order."""
    b, n = classes.shape
    count = pool.class_count[classes]
    keys = _uniform((b, n, pool.max_count), generator, pool.device)
    if pool.min_count < pool.max_count:
        # Slots past a class's own count get keys above any real one, so top-k never picks them.
        slot = torch.arange(pool.max_count, device=pool.device)
        keys = keys.masked_fill(slot >= count[..., None], 2.0)
    pick = keys.topk(per_class, dim=-1, largest=False).indices
    return pool.class_start[classes][..., None] + pick


def to_float(x: Tensor) -> Tensor:
    return x.to(torch.float32).mul_(1.0 / 255.0)


def sample_episodes(pool: ClassPool, batch_size: int, ways: int, shots: int, queries: int,
                    generator: torch.Generator, within_group: bool = False) -> TaskBatch:
    """B tasks of ``ways`` classes with ``shots`` support and ``queries`` query images each.

    x_* are float32 (B, ways*shots|ways*queries, C, H, W) in [0, 1], grouped by class
    (label 0's images first); y_* are int64 labels 0..ways-1, the position of the class in a
    random order, so labels carry no meaning across tasks.
    """
    check_episode_shape(pool, ways, shots, queries, within_group)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    classes = choose_classes(pool, batch_size, ways, generator, within_group)
    index = choose_examples(pool, classes, shots + queries, generator)
    x = to_float(pool.images[index])
    shape = x.shape[-3:]
    labels = torch.arange(ways, device=pool.device)
    y_support = labels.repeat_interleave(shots).expand(batch_size, -1)
    y_query = labels.repeat_interleave(queries).expand(batch_size, -1)
    return TaskBatch(x[:, :, :shots].reshape(batch_size, ways * shots, *shape),
                     y_support.contiguous(),
                     x[:, :, shots:].reshape(batch_size, ways * queries, *shape),
                     y_query.contiguous())


def sample_flat(pool: ClassPool, batch_size: int, generator: torch.Generator
                ) -> tuple[Tensor, Tensor, int]:
    """``batch_size`` images drawn uniformly over all images of the pool, with their global class
    index: the non-episodic data of the transfer baselines."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    num_images = pool.images.shape[0]
    image = (_uniform((batch_size,), generator, pool.device) * num_images).long()
    image = image.clamp_(max=num_images - 1)
    # Classes tile the images in order, so an image's class is the last start at or before it.
    cls = torch.searchsorted(pool.class_start, image, right=True) - 1
    return to_float(pool.images[image]), cls, pool.num_classes


def check_episode_shape(pool: ClassPool, ways: int, shots: int, queries: int,
                        within_group: bool = False, split: str = "") -> None:
    """Raise a ValueError naming the problem when ``pool`` cannot serve these episodes."""
    where = f"the {split!r} split" if split else "the split"
    if ways < 1 or shots < 1 or queries < 0:
        raise ValueError(f"need ways >= 1, shots >= 1, queries >= 0; got ways={ways}, "
                         f"shots={shots}, queries={queries}")
    if ways > pool.num_classes:
        raise ValueError(f"{ways}-way episodes need at least {ways} classes, {where} has "
                         f"{pool.num_classes}")
    if shots + queries > pool.min_count:
        raise ValueError(f"shots + queries = {shots + queries} images per class, but the "
                         f"smallest class of {where} has only {pool.min_count}")
    if within_group:
        if pool.class_group is None:
            raise ValueError("within-group episodes need class groups (e.g. Omniglot alphabets)")
        sizes = torch.bincount(pool.class_group)
        if int(sizes.max()) < ways:
            raise ValueError(f"within-group {ways}-way episodes: no group of {where} has {ways} "
                             f"classes (largest has {int(sizes.max())})")


class PoolSampler:
    """sample / fixed_tasks / sample_flat of a TaskSampler whose splits are ClassPools: a subclass
    provides ``pool(split)`` and the episode shape (``ways``, ``shots``, ``queries``), and may
    override ``_draw`` to pass sampler-specific options to :func:`sample_episodes`."""

    def _draw(self, pool: ClassPool, count: int, generator: torch.Generator) -> TaskBatch:
        return sample_episodes(pool, count, self.ways, self.shots, self.queries, generator)

    def sample(self, batch_size: int, generator: torch.Generator) -> TaskBatch:
        return self._draw(self.pool("train"), batch_size, generator)

    def fixed_tasks(self, split: str, num_tasks: int, batch_size: int, seed: int
                    ) -> Iterator[TaskBatch]:
        pool = self.pool(split)  # bad split names fail here, not at the first next()
        return fixed_task_batches(lambda count, generator: self._draw(pool, count, generator),
                                  split, num_tasks, batch_size, seed)

    def sample_flat(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, int]:
        return sample_flat(self.pool("train"), batch_size, generator)
