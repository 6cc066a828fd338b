"""The distinctiveness-pruning paper's baseline CNN, and a variant sized for 28x28 inputs.

Paper: conv (nine 9x9 kernels, zero padding, stride 1) -> max pool 9 -> conv (nine 9x9 kernels)
-> max pool 9 -> flatten -> FC 126 (ReLU) -> FC 42 (ReLU) -> FC classes. The paper names no
nonlinearity after the convs; we put a ReLU after each (``conv_activation="none"`` drops it), so a
kernel's activation is ``relu(conv(x))``. "Zero padding" is read as size-preserving zero padding
(``padding=kernel_size // 2``); ``padding=0`` gives the other reading.
"""

from __future__ import annotations

import torch
from torch import nn

from . import register_model

__all__ = ["SmallCNN", "small_cnn", "small_cnn_mnist"]


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if len(v) != 2:
        raise ValueError(f"input_size must be an int or (height, width), not {v!r}")
    return (int(v[0]), int(v[1]))


class SmallCNN(nn.Module):
    """Two conv layers of ``kernels`` kernels, max pooling, FC 126 / 42 / classes.

    Modules are named ``conv1, act1, pool1, conv2, act2, pool2, flatten, fc1, act3, fc2, act4, fc3``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 7,
        input_size: int | tuple[int, int] = (576, 720),
        kernels: int = 9,
        kernel_size: int = 9,
        pool: int = 9,
        padding: int | None = None,
        conv_activation: str = "relu",
    ) -> None:
        super().__init__()
        if conv_activation not in ("relu", "none"):
            raise ValueError("conv_activation must be 'relu' or 'none'")
        h, w = _pair(input_size)
        pad = kernel_size // 2 if padding is None else padding
        act = nn.ReLU if conv_activation == "relu" else nn.Identity
        self.conv1 = nn.Conv2d(in_channels, kernels, kernel_size, padding=pad)
        self.act1 = act()
        self.pool1 = nn.MaxPool2d(pool)
        self.conv2 = nn.Conv2d(kernels, kernels, kernel_size, padding=pad)
        self.act2 = act()
        self.pool2 = nn.MaxPool2d(pool)
        for _ in range(2):
            h, w = (h + 2 * pad - kernel_size + 1) // pool, (w + 2 * pad - kernel_size + 1) // pool
            if h < 1 or w < 1:
                raise ValueError(f"input_size {input_size} is too small for kernel {kernel_size} and pool {pool}")
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(kernels * h * w, 126)
        self.act3 = nn.ReLU()
        self.fc2 = nn.Linear(126, 42)
        self.act4 = nn.ReLU()
        self.fc3 = nn.Linear(42, num_classes)
        self.input_shape = (in_channels, *_pair(input_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        x = self.act3(self.fc1(self.flatten(x)))
        return self.fc3(self.act4(self.fc2(x)))


small_cnn = register_model("small_cnn")(SmallCNN)
"""The paper's baseline (SFEW: 3x576x720 inputs, 7 classes); every size is a parameter.

Example:
    >>> m = small_cnn(input_size=(96, 120))
    >>> m.conv1.out_channels, m.fc1.out_features
    (9, 126)
"""


@register_model("small_cnn_mnist")
def small_cnn_mnist(in_channels: int = 1, num_classes: int = 10, input_size: int = 28, kernels: int = 9,
                    kernel_size: int = 9, pool: int = 2, conv_activation: str = "relu") -> SmallCNN:
    """The baseline sized for 28x28 data: same convs (nine 9x9 kernels), max pool 2 instead of 9."""
    return SmallCNN(in_channels, num_classes, input_size, kernels, kernel_size, pool, None, conv_activation)
