"""A map-style data set over a folder of class sub-folders, decoded once into the image cache.

``ImageFolderDataset("data/birds")`` reads ``data/birds/<class>/*.jpg|jpeg|png``;
``ImageFolderDataset("data/mini", split="train")`` reads a split of the layouts
:class:`~learnedopt.tasks.image_folder.ImageFolderTasks` knows (``<root>/<split>/<class>/`` or
Ravi's ``<root>/images/`` + ``<root>/<split>.csv``). It has the interface of
``torchvision.datasets.ImageFolder`` that episode builders use — ``dataset[i] -> (x, class
index)``, ``targets``, ``classes``, ``class_to_idx`` — without torchvision: the images are decoded
once (RGB, resized to ``image_size`` squared) by :func:`learnedopt.tasks.image_folder.load_split`
into a uint8 tensor file, and an item is a float32 (3, S, S) tensor in [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from learnedopt.tasks.episodes import to_float
from learnedopt.tasks.image_cache import default_cache_dir
from learnedopt.tasks.image_folder import load_split


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images of class sub-folders: ``images`` uint8 (num_images, 3, S, S) in class order,
    ``targets`` (one class index per image), ``classes`` (the sorted folder names),
    ``class_to_idx``. ``transform`` (optional) is applied to each item's float tensor."""

    def __init__(self, root: str | Path, split: str | None = None, image_size: int = 84,
                 transform: Callable[[Tensor], Any] | None = None,
                 cache_dir: str | Path | None = None, use_cache: bool = True,
                 workers: int | None = None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"ImageFolderDataset: {root} does not exist or is not a folder")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"ImageFolderDataset: image_size must be an int >= 1, got {image_size!r}")
        # A bare folder of classes is decoded as the split named after it, of its parent
        # (resolved, so that "." has a name).
        folder = root.resolve() if split is None else None
        data_root, split_name = (folder.parent, folder.name) if split is None else (root, split)
        if cache_dir is None and use_cache:
            # The cache folder's name starts with ".", so the class listing skips it.
            cache_dir = default_cache_dir(root)
        pool = load_split(data_root, split_name, image_size, Path(cache_dir) if use_cache else None,
                          folder, workers)
        self.root, self.split, self.image_size, self.transform = root, split, image_size, transform
        self.images = pool.images
        self.classes = list(pool.class_names)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.targets = torch.repeat_interleave(torch.arange(len(self.classes)),
                                               pool.class_count).tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        x = to_float(self.images[index])
        return (self.transform(x) if self.transform is not None else x), self.targets[index]

    def __repr__(self) -> str:
        where = self.root if self.split is None else f"{self.root} [{self.split}]"
        return (f"ImageFolderDataset({where}: {len(self)} images of {len(self.classes)} classes, "
                f"{self.image_size}x{self.image_size})")
