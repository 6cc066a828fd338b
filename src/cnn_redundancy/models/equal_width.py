"""The layer-skipping paper's CNN 1 (``equal_width_cnn``) and a small router CNN (``router_cnn``).

``equal_width_cnn``: conv layers that all keep the input's height and width (same padding, stride 1,
no pooling), each followed by its activation, then one dense layer. Because every conv layer outputs
the same ``[C, H, W]`` when the channel counts are equal, the one dense layer can read the output of
*any* conv layer: that is what lets :class:`cnn_redundancy.skipnet.SkipNetwork` stop after conv 1 or
conv 2 and still classify (``head="shared"``). With unequal channel counts pass ``head="per_exit"``:
each exit then has its own dense layer (``exit_fc.<k>``; the last exit uses ``fc``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import register_model

__all__ = ["EqualWidthCNN", "RouterCNN", "equal_width_cnn", "router_cnn"]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
HEADS = ("shared", "per_exit")


class EqualWidthCNN(nn.Module):
    """``conv1 -> act1 -> conv2 -> act2 -> ... -> flatten -> fc``; every conv keeps height and width.

    Args:
        channels: feature maps of each conv layer (its length is the number of conv layers); an int
            means three conv layers of that width.
        in_channels, num_classes, input_size: image channels, classes, image side.
        kernel_size: odd kernel side (same padding).
        activation: ``"relu"`` (the paper's) or ``"tanh"``.
        head: ``"shared"`` (one dense layer reads every exit; needs equal channel counts) or
            ``"per_exit"`` (one dense layer per exit).

    The skip protocol used by :class:`~cnn_redundancy.skipnet.SkipNetwork`: ``depth``,
    ``stage(i)`` (conv ``i`` and its activation) and ``exit_head(k)`` (features after conv ``k``
    -> logits).

    Example:
        >>> m = EqualWidthCNN((8, 8, 8))
        >>> m(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        channels: Sequence[int] = (16, 16, 16),
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 28,
        kernel_size: int = 3,
        activation: str = "relu",
        head: str = "shared",
    ) -> None:
        super().__init__()
        channels = [int(c) for c in ([channels] * 3 if isinstance(channels, int) else channels)]
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive integers, got {channels}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer (same padding), got {kernel_size}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, not {activation!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, not {head!r}")
        if head == "shared" and len(set(channels)) > 1:
            raise ValueError(
                f"head='shared' needs the same number of feature maps in every conv layer (got {channels}): "
                "one dense layer can only read exits of equal size; pass head='per_exit' for unequal widths"
            )
        self.channels = channels
        self.head = head
        self.input_shape = (in_channels, input_size, input_size)
        prev = in_channels
        for i, c in enumerate(channels, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(prev, c, kernel_size, padding=kernel_size // 2))
            setattr(self, f"act{i}", _ACTIVATIONS[activation]())
            prev = c
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels[-1] * input_size * input_size, num_classes)
        if head == "per_exit":
            self.exit_fc = nn.ModuleList(nn.Linear(c * input_size * input_size, num_classes) for c in channels[:-1])

    @property
    def depth(self) -> int:
        """Number of conv layers (= number of exits)."""
        return len(self.channels)

    def stage(self, i: int) -> nn.Sequential:
        """Conv layer ``i`` (0-based) followed by its activation (modules shared with the model)."""
        if not 0 <= i < self.depth:
            raise ValueError(f"stage index must be in 0..{self.depth - 1}, got {i}")
        return nn.Sequential(getattr(self, f"conv{i + 1}"), getattr(self, f"act{i + 1}"))

    def exit_head(self, k: int) -> nn.Module:
        """The dense layer classifying the features after conv ``k`` (0-based)."""
        if not 0 <= k < self.depth:
            raise ValueError(f"exit must be in 0..{self.depth - 1}, got {k}")
        fc = self.fc if self.head == "shared" or k == self.depth - 1 else self.exit_fc[k]
        return nn.Sequential(self.flatten, fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.depth + 1):
            x = getattr(self, f"act{i}")(getattr(self, f"conv{i}")(x))
        return self.fc(self.flatten(x))


class RouterCNN(nn.Module):
    """A small, cheap CNN (CNN 2) predicting the exit: conv 3x3 -> ReLU -> maxpool, twice, then a dense layer.

    The paper does not describe CNN 2; this one costs a small fraction of CNN 1's MACs so the
    router does not eat the savings it is meant to bring.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 3, input_size: int = 28, width: int = 8) -> None:
        super().__init__()
        if input_size < 4:
            raise ValueError(f"input_size must be at least 4, got {input_size}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width * (input_size // 4) ** 2, num_classes)
        self.input_shape = (in_channels, input_size, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return self.fc(self.flatten(x))


#: The layer-skipping paper's CNN 1: equal-size conv layers (no pooling) and one dense layer.
equal_width_cnn = register_model("equal_width_cnn")(EqualWidthCNN)
#: A small CNN routing each image to an exit (the paper's CNN 2).
router_cnn = register_model("router_cnn")(RouterCNN)
