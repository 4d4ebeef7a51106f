"""A duck-typed stand-in for ``torchvision.datasets.ImageFolder`` (torchvision is not installed in
CI and does not match its CPU torch): the same interface an episode builder sees —
``dataset[i] -> (PIL image, class index)`` after the optional ``transform``, ``.targets``,
``.classes``, ``.class_to_idx``, ``.samples`` — and the same listing (sorted class folders, sorted
files). It counts ``__getitem__`` calls so tests can tell whether labels came from ``targets``."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class FakeImageFolder:
    def __init__(self, root, transform=None, target_transform=None):
        from PIL import Image  # noqa: F401 (the real one needs Pillow too)
        root = Path(root)
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(str(path), self.class_to_idx[c]) for c in self.classes
                        for path in sorted((root / c).iterdir())
                        if path.suffix.lower() in IMAGE_SUFFIXES]
        self.targets = [t for _, t in self.samples]
        self.transform, self.target_transform = transform, target_transform
        self.loads = 0

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        from PIL import Image
        self.loads += 1
        path, target = self.samples[index]
        with open(path, "rb") as f:
            image = Image.open(f).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target
