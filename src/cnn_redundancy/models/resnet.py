"""CIFAR-style ResNets (ResNet-20/32/56, ResNet-34 for 32x32 input) with 1x1 projection shortcuts.

The blocks use torchvision's attribute names (``conv1``, ``bn1``, ``relu``, ``conv2``, ``bn2``,
``downsample``), so layer names read the same as in torchvision ResNets
(``layer2.0.downsample.0`` is the 1x1 projection conv, the zero-ablation paper's ``w^{1*1}``).
A block computes ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, where the shortcut is the
identity, or ``BN(conv1x1(x))`` where the channel count or the resolution changes (option B of
He et al.).

Example:
    >>> m = resnet20(in_channels=1)
    >>> m.layer2[0].downsample[0]
    Conv2d(16, 32, kernel_size=(1, 1), stride=(2, 2), bias=False)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import register_model

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet56", "resnet34_cifar", "make_stage"]


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN, a residual shortcut and a ReLU after the addition."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def make_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` basic blocks; the first one changes channels / resolution."""
    layers = [BasicBlock(in_channels, out_channels, stride)]
    layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CifarResNet(nn.Module):
    """A stem conv (3x3, stride 1) then basic-block stages, global average pooling and a linear layer.

    Args:
        depths: blocks per stage, e.g. ``(3, 3, 3)`` for ResNet-20, ``(3, 4, 6, 3)`` for ResNet-34.
        widths: channels per stage (the stem has ``widths[0]``); stages after the first halve the
            resolution.
        in_channels: input channels (1 for MNIST, 3 for CIFAR).
        num_classes: output classes.
        input_size: side of the (square) input, stored as ``input_shape``.
    """

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int],
        *,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        if len(depths) != len(widths) or not depths:
            raise ValueError(f"depths and widths must have the same non-zero length, got {depths} and {widths}")
        if any(d < 1 for d in depths) or any(w < 1 for w in widths):
            raise ValueError("every stage needs at least one block and one channel")
        if in_channels < 1 or num_classes < 1:
            raise ValueError("in_channels and num_classes must be positive")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        prev = widths[0]
        for i, (d, w) in enumerate(zip(depths, widths)):
            setattr(self, f"layer{i + 1}", make_stage(prev, w, d, 1 if i == 0 else 2))
            prev = w
        self.n_stages = len(depths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(prev, num_classes)
        self.input_shape = (in_channels, input_size, input_size)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.flatten(self.avgpool(x)))


def _cifar(depth_per_stage: int, width: int, **kw) -> CifarResNet:
    return CifarResNet([depth_per_stage] * 3, [width, 2 * width, 4 * width], **kw)


@register_model("resnet20")
def resnet20(in_channels: int = 3, num_classes: int = 10, width: int = 16, input_size: int = 32) -> CifarResNet:
    """ResNet-20 (He et al. 2016, CIFAR): 3 stages of 3 basic blocks, 16/32/64 channels."""
    return _cifar(3, width, in_channels=in_channels, num_classes=num_classes, input_size=input_size)


@register_model("resnet32")
def resnet32(in_channels: int = 3, num_classes: int = 10, width: int = 16, input_size: int = 32) -> CifarResNet:
    """ResNet-32: 3 stages of 5 basic blocks."""
    return _cifar(5, width, in_channels=in_channels, num_classes=num_classes, input_size=input_size)


@register_model("resnet56")
def resnet56(in_channels: int = 3, num_classes: int = 10, width: int = 16, input_size: int = 32) -> CifarResNet:
    """ResNet-56: 3 stages of 9 basic blocks."""
    return _cifar(9, width, in_channels=in_channels, num_classes=num_classes, input_size=input_size)


@register_model("resnet34_cifar")
def resnet34_cifar(in_channels: int = 3, num_classes: int = 10, width: int = 64, input_size: int = 32) -> CifarResNet:
    """ResNet-34's stages (3, 4, 6, 3 basic blocks; 64/128/256/512 channels) with a 3x3 stride-1 stem for 32x32 input."""
    return CifarResNet((3, 4, 6, 3), (width, 2 * width, 4 * width, 8 * width), in_channels=in_channels,
                       num_classes=num_classes, input_size=input_size)
