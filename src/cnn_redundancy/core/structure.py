"""The structure of a CNN: residual blocks, feature decomposition layers, layer blocks.

Shared by zero-ablation (which units to ablate), branch removal (what can be removed) and
``analyze``. A *residual block* follows torchvision's convention (``conv1``, a ``downsample``
shortcut, a ``relu`` after the addition); *feature decomposition layers* are the convs that change
the channel count plus every conv in a residual shortcut; *layer blocks* are the paper's "continuous
layers with the same channel number" (a ResNet stage).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .layers import conv_layers, get_module

__all__ = [
    "is_residual_block",
    "residual_blocks",
    "shortcut_convs",
    "decomposition_layers",
    "layer_blocks",
    "block_of",
    "stage_of",
    "shortcut_output",
]


def is_residual_block(module: nn.Module) -> bool:
    """A residual block in torchvision's convention: ``conv1``, a ``downsample`` shortcut attribute
    (``None`` for the identity) and a ``relu`` applied after the addition (torchvision
    ``BasicBlock``/``Bottleneck``, this package's CIFAR ResNet blocks)."""
    return (
        hasattr(module, "downsample")
        and isinstance(getattr(module, "conv1", None), nn.Conv2d)
        and isinstance(getattr(module, "relu", None), nn.Module)
    )


def residual_blocks(model: nn.Module) -> list[str]:
    """Dotted names of the residual blocks of ``model`` in registration order.

    Example:
        >>> from cnn_redundancy.models import get_model
        >>> residual_blocks(get_model("resnet20"))[:2]
        ['layer1.0', 'layer1.1']
    """
    return [n for n, m in model.named_modules() if n and is_residual_block(m)]


def shortcut_convs(model: nn.Module) -> list[str]:
    """Convs inside a residual block's shortcut (the paper's ``w^{1*1}`` projection layers)."""
    out = []
    for b in residual_blocks(model):
        ds = get_module(model, b).downsample
        if ds is not None:
            out += [f"{b}.downsample{'.' + n if n else ''}" for n, m in ds.named_modules() if isinstance(m, nn.Conv2d)]
    return out


def decomposition_layers(model: nn.Module) -> list[str]:
    """Feature decomposition layers: convs whose output channel count differs from their input's,
    plus every conv in a residual shortcut (1x1 projections), in registration order.

    Example:
        >>> from cnn_redundancy.models import get_model
        >>> decomposition_layers(get_model("resnet20", in_channels=1))
        ['conv1', 'layer2.0.conv1', 'layer2.0.downsample.0', 'layer3.0.conv1', 'layer3.0.downsample.0']
    """
    short = set(shortcut_convs(model))
    return [
        n for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and (m.in_channels != m.out_channels or n in short)
    ]  # fmt: skip


def block_of(name: str, blocks: Sequence[str]) -> str | None:
    for b in blocks:
        if name.startswith(b + "."):
            return b
    return None


def stage_of(block: str) -> str:
    return block.rpartition(".")[0] or block


def layer_blocks(model: nn.Module, *, order: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Layer blocks: the paper's "continuous layers with the same channel number".

    For a ResNet, each stage (the module holding a run of residual blocks, e.g. ``layer2``) is a
    block holding the convs of its residual blocks; convs outside every stage (the stem, a head)
    belong to none. For a network without residual blocks, each run of consecutive convs (in
    ``order``, default registration order) with the same output channel count is a block
    (``block1``, ``block2``...).
    """
    order = list(order) if order is not None else conv_layers(model)
    blocks = residual_blocks(model)
    out: dict[str, list[str]] = {}
    if blocks:
        for n in order:
            b = block_of(n, blocks)
            if b is not None:
                out.setdefault(stage_of(b), []).append(n)
        return out
    prev = None
    for n in order:
        c = get_module(model, n).out_channels
        if c != prev:
            out[f"block{len(out) + 1}"] = []
            prev = c
        out[f"block{len(out)}"].append(n)
    return out


def _non_inplace(act: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if getattr(act, "inplace", False):
        act = copy.copy(act)
        act.inplace = False
    return act


def shortcut_output(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A residual block's output with its branch removed: ``act(shortcut(x))``."""
    ds = block.downsample
    return _non_inplace(block.relu)(x if ds is None else ds(x))
