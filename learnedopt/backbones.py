"""Standard few-shot backbones written as ordinary ``nn.Module``s, for ``from_module``.

They are what a user would bring: nothing here is special to learnedopt, and the algorithms see
them only through :func:`learnedopt.learners.from_module`::

    learner = from_module(resnet12(ways=5), head="head", task_family="images")
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

__all__ = ["ResNet12", "resnet12"]


def _conv_bn(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_channels)]


class _ResidualBlock(nn.Module):
    """Three 3×3 conv + batch norm (leaky ReLU 0.1 after the first two), a 1×1 conv + batch-norm
    shortcut, leaky ReLU, then 2×2 max-pooling: the block of Oreshkin et al. (TADAM) and Lee et
    al. (MetaOptNet), without DropBlock."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(in_channels, out_channels, 3), nn.LeakyReLU(0.1),
            *_conv_bn(out_channels, out_channels, 3), nn.LeakyReLU(0.1),
            *_conv_bn(out_channels, out_channels, 3))
        self.shortcut = nn.Sequential(*_conv_bn(in_channels, out_channels, 1))
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(nn.Module):
    """ResNet-12 for 84×84 RGB few-shot images: four residual blocks (``channels``, default
    64-128-256-512: about 8.0 M parameters with a 5-way head; 64-160-320-640 is the wider
    variant), global average pooling, and a linear head ``self.head`` to ``ways`` classes."""

    def __init__(self, ways: int = 5, channels: Sequence[int] = (64, 128, 256, 512),
                 in_channels: int = 3):
        super().__init__()
        if ways < 1 or len(channels) != 4 or min(channels) < 1:
            raise ValueError(f"ResNet12: needs ways >= 1 and four positive channel counts, got "
                             f"ways={ways}, channels={tuple(channels)}")
        blocks, previous = [], in_channels
        for width in channels:
            blocks.append(_ResidualBlock(previous, width))
            previous = width
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(previous, ways)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def resnet12(ways: int = 5, channels: Sequence[int] = (64, 128, 256, 512),
             in_channels: int = 3) -> ResNet12:
    """A :class:`ResNet12` (a factory for ``--model learnedopt.backbones:resnet12``)."""
    return ResNet12(ways, channels, in_channels)
