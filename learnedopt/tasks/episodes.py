"""N-way K-shot episodes drawn from a pool of classes by tensor indexing on the pool's device.

A ``ClassPool`` holds every image of one split as ONE uint8 tensor plus, per class, where its
images start, how many there are and how many quarter turns to rotate them by (rotated copies of
a character are separate classes that share images). A whole batch of episodes is a handful of
tensor ops: random keys + top-k choose the classes and, per class, the examples; one gather reads
the pixels; a second gather over pixel positions applies the rotations; then one conversion to
float. No Python loop over tasks, no decoding per episode; the same generator state gives the
same episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from learnedopt.tasks.base import TaskBatch


@dataclass
class ClassPool:
    """images: uint8 (num_images, C, H, W); class_start / class_count / class_rotation: int64
    (num_classes,), the classes' first image, number of images and quarter turns (0..3,
    counter-clockwise as displayed, like PIL's ``rotate(90 * k)``); class_group: int64
    (num_classes,) or None, a grouping (Omniglot alphabet) for within-group episodes."""
    images: Tensor
    class_start: Tensor
    class_count: Tensor
    class_rotation: Tensor
    class_names: list[str]
    class_group: Tensor | None = None

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"ClassPool: images must be uint8 (num_images, C, H, W), got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        n = len(self.class_names)
        for name in ("class_start", "class_count", "class_rotation"):
            t = getattr(self, name)
            if t.dtype != torch.int64 or t.shape != (n,):
                raise ValueError(f"ClassPool: {name} must be int64 of shape ({n},), got "
                                 f"{t.dtype} {tuple(t.shape)}")
        if n == 0:
            raise ValueError("ClassPool: no classes")
        if bool((self.class_count < 1).any()):
            raise ValueError("ClassPool: every class needs at least one image")
        if bool((self.class_start + self.class_count > self.images.shape[0]).any()) or \
                bool((self.class_start < 0).any()):
            raise ValueError("ClassPool: class image ranges run outside the image tensor")
        if bool(((self.class_rotation < 0) | (self.class_rotation > 3)).any()):
            raise ValueError("ClassPool: class_rotation must be in 0..3 quarter turns")
        h, w = self.images.shape[-2:]
        self.has_rotations = bool((self.class_rotation != 0).any())
        if self.has_rotations and h != w:
            raise ValueError(f"ClassPool: rotations need square images, got {h}x{w}")
        self.max_count = int(self.class_count.max())
        self.min_count = int(self.class_count.min())
        if self.has_rotations:
            self._rotation_index = _rotation_pixel_index(h).to(self.images.device)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def to(self, device: torch.device | str) -> "ClassPool":
        group = None if self.class_group is None else self.class_group.to(device)
        return ClassPool(self.images.to(device), self.class_start.to(device),
                         self.class_count.to(device), self.class_rotation.to(device),
                         self.class_names, group)

    def subset(self, classes: list[int]) -> "ClassPool":
        """A pool of the given classes only, sharing nothing with this one but the class records;
        the images are compacted so that a split keeps only its own pixels in memory."""
        idx = torch.tensor(classes, dtype=torch.int64, device=self.class_start.device)
        starts, counts = self.class_start[idx], self.class_count[idx]
        # Rotated copies share images: keep each distinct (start, count) block once.
        blocks = sorted(set(zip(starts.tolist(), counts.tolist())))
        new_start, pieces, offset = {}, [], 0
        for start, count in blocks:
            new_start[(start, count)] = offset
            pieces.append(torch.arange(start, start + count))
            offset += count
        images = self.images[torch.cat(pieces).to(self.images.device)]
        starts_new = torch.tensor([new_start[(s, c)] for s, c in zip(starts.tolist(),
                                                                     counts.tolist())],
                                  dtype=torch.int64, device=self.class_start.device)
        group = None if self.class_group is None else self.class_group[idx]
        return ClassPool(images, starts_new, counts.clone(), self.class_rotation[idx].clone(),
                         [self.class_names[i] for i in classes], group)


def _rotation_pixel_index(side: int) -> Tensor:
    """(4, side*side): entry [k, p] is the source pixel of output pixel p after k quarter turns."""
    grid = torch.arange(side * side).view(side, side)
    return torch.stack([torch.rot90(grid, k, dims=(0, 1)).reshape(-1) for k in range(4)])


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


def gather_images(pool: ClassPool, index: Tensor, rotation: Tensor) -> Tensor:
    """uint8 images at ``index`` (any shape S) -> (*S, C, H, W), each rotated by ``rotation``
    quarter turns (shape broadcastable to S)."""
    x = pool.images[index]
    if pool.has_rotations:
        c, h, w = x.shape[-3:]
        pixel = pool._rotation_index[rotation.expand(index.shape)]  # (*S, H*W)
        flat = x.reshape(*index.shape, c, h * w)
        pixel = pixel.unsqueeze(-2).expand(*index.shape, c, h * w)
        x = flat.gather(-1, pixel).view(*index.shape, c, h, w)
    return x


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
    x = to_float(gather_images(pool, index, pool.class_rotation[classes][..., None]))
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
    """``batch_size`` images drawn uniformly over (image, rotation) pairs of the pool, with their
    global class index: the non-episodic data of the transfer baselines."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = pool.device
    # Class by its share of all images, then an image uniformly within it.
    weights = pool.class_count.to(torch.float64).cumsum(0)
    u = _uniform((batch_size,), generator, device).to(torch.float64) * weights[-1]
    cls = torch.searchsorted(weights, u, right=True).clamp_(max=pool.num_classes - 1)
    within = (_uniform((batch_size,), generator, device) * pool.class_count[cls]).long()
    within = torch.minimum(within, pool.class_count[cls] - 1)
    x = to_float(gather_images(pool, pool.class_start[cls] + within, pool.class_rotation[cls]))
    return x, cls, pool.num_classes


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
