"""LeNet-5 with a width multiplier (``width=10`` is the impulse-response paper's LeNet-5x10)."""

from __future__ import annotations

import torch
from torch import nn

from . import register_model

__all__ = ["LeNet5", "lenet5"]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class LeNet5(nn.Module):
    """LeNet-5: conv 5x5 (pad 2) -> act -> maxpool 2 -> conv 5x5 -> act -> maxpool 2 -> FC x3.

    With ``width=w`` every layer is ``w`` times wider: 6w and 16w channels, FC 120w / 84w.
    Activations are separate named modules (``act1``, ``act2``...) so the activation
    ``A_i = f(conv_i(A_{i-1}))`` can be observed by name.
    """

    def __init__(
        self,
        width: int = 1,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 28,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}")
        if width < 1:
            raise ValueError("width must be a positive integer")
        act = _ACTIVATIONS[activation]
        c1, c2 = 6 * width, 16 * width
        self.conv1 = nn.Conv2d(in_channels, c1, 5, padding=2)
        self.act1 = act()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.act2 = act()
        self.pool2 = nn.MaxPool2d(2)
        side = (input_size // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"input_size {input_size} is too small for LeNet-5 (needs at least 12)")
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c2 * side * side, 120 * width)
        self.act3 = act()
        self.fc2 = nn.Linear(120 * width, 84 * width)
        self.act4 = act()
        self.fc3 = nn.Linear(84 * width, num_classes)
        self.input_shape = (in_channels, input_size, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        x = self.act3(self.fc1(self.flatten(x)))
        x = self.act4(self.fc2(x))
        return self.fc3(x)


@register_model("lenet5")
def lenet5(width: int = 1, in_channels: int = 1, num_classes: int = 10, input_size: int = 28, activation: str = "relu") -> LeNet5:
    """LeNet-5 (``width=1``: 6/16 channels) or LeNet-5xW."""
    return LeNet5(width, in_channels, num_classes, input_size, activation)
