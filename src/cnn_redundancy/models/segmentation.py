"""A segmentation network in the spirit of PSPNet-ResNet34: a ResNet encoder and a pyramid-pooling head.

The encoder is a CIFAR-style ResNet (basic blocks, 1x1 projection shortcuts where the channel
count changes; stages ``encoder.layer1`` ... ``encoder.layer4``) whose last stage keeps the
resolution, as PSPNet's dilated backbone does. The pyramid pooling module averages the features
over 1x1, 2x2 and 4x4 bins, reduces each with a 1x1 conv, upsamples and concatenates them with the
features; a 3x3 conv and a 1x1 classifier give per-pixel logits at the input resolution.

Example:
    >>> import torch
    >>> m = pspnet_resnet(in_channels=1, num_classes=3, depths=(1, 1, 1, 1), width=4).eval()
    >>> tuple(m(torch.zeros(2, 1, 32, 32)).shape)
    (2, 3, 32, 32)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from . import register_model
from .resnet import make_stage

__all__ = ["ResNetEncoder", "PyramidPooling", "PSPNet", "pspnet_resnet"]


class ResNetEncoder(nn.Module):
    """Stem conv + basic-block stages; stage ``i > 0`` halves the resolution except the last (stride 1)."""

    def __init__(self, in_channels: int, depths: Sequence[int], widths: Sequence[int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        prev = widths[0]
        n = len(depths)
        for i, (d, w) in enumerate(zip(depths, widths)):
            stride = 1 if i == 0 or i == n - 1 else 2
            setattr(self, f"layer{i + 1}", make_stage(prev, w, d, stride))
            prev = w
        self.n_stages = n
        self.out_channels = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: pooled context at several bin sizes, concatenated with the features."""

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        red = max(1, in_channels // len(bins))
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_channels, red, 1, bias=False), nn.BatchNorm2d(red), nn.ReLU())
            for b in self.bins
        )
        self.out_channels = in_channels + red * len(self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(s(x), size=size, mode="bilinear", align_corners=False) for s in self.stages]
        return torch.cat([x, *pooled], 1)


class PSPNet(nn.Module):
    """ResNet encoder -> pyramid pooling -> 3x3 conv -> 1x1 classifier -> bilinear upsampling to the input size."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        depths: Sequence[int] = (3, 4, 6, 3),
        widths: Sequence[int] = (16, 32, 64, 128),
        input_size: int = 32,
    ) -> None:
        super().__init__()
        if len(depths) != len(widths) or len(depths) < 2:
            raise ValueError(f"depths and widths must have the same length (at least 2), got {depths} and {widths}")
        if num_classes < 2:
            raise ValueError("num_classes counts the background too: at least 2")
        self.encoder = ResNetEncoder(in_channels, depths, widths)
        self.ppm = PyramidPooling(self.encoder.out_channels)
        mid = widths[-1] // 2
        self.head = nn.Sequential(
            nn.Conv2d(self.ppm.out_channels, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU()
        )
        self.classifier = nn.Conv2d(mid, num_classes, 1)
        self.input_shape = (in_channels, input_size, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        y = self.classifier(self.head(self.ppm(self.encoder(x))))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


@register_model("pspnet_resnet")
def pspnet_resnet(
    in_channels: int = 1,
    num_classes: int = 2,
    depths: Sequence[int] = (3, 4, 6, 3),
    width: int = 16,
    input_size: int = 32,
) -> PSPNet:
    """PSPNet with a ResNet-34-layout encoder (``depths`` basic blocks per stage, ``width * (1, 2, 4, 8)`` channels)."""
    widths = [width * 2**i for i in range(len(depths))]
    return PSPNet(in_channels, num_classes, tuple(depths), widths, input_size)
