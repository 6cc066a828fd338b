"""The structure of a CNN: residual blocks, feature decomposition layers, layer blocks.

Shared by zero-ablation (which units to ablate), branch removal (what can be removed) and
``analyze``. A *residual block* follows torchvision's convention (``conv1``, a ``downsample``
shortcut, a ``relu`` after the addition); *feature decomposition layers* are the convs that change
the channel count plus every conv in a residual shortcut; *layer blocks* are the paper's "continuous
layers with the same channel number" (a ResNet stage).
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .graph import ACTIVATIONS, CHANNELWISE, Traced, applies_activation
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
    "ResidualAdd",
    "residual_adds",
    "consumer",
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


@dataclasses.dataclass(frozen=True)
class ResidualAdd:
    """A residual addition found in the traced graph: ``add(branch, bypass)`` where the bypass is the
    block's input (or a projection of it) and the branch computes from the same input through convs.

    Attributes:
        name: the block, i.e. the innermost module whose forward makes the addition (``"layer1.0"``
            in a torchvision ResNet; the addition's node name when it happens at the top level).
        node: the addition as a sweep point, ``"@<fx node name>"``.
        branch, bypass: which argument of the addition is which.
        convs: the convs on the branch (the bypass' projection convs are not listed).
    """

    name: str
    node: str
    branch: int
    bypass: int
    convs: tuple[str, ...]


_ADDS = {operator.add, operator.iadd, torch.add}


def _ancestors(order: list) -> dict:
    anc: dict = {}
    for n in order:
        s = {n}
        for a in n.all_input_nodes:
            s |= anc[a]
        anc[n] = s
    return anc


def residual_adds(traced: Traced) -> list[ResidualAdd]:
    """Every residual addition of the traced model, in forward order (see :class:`ResidualAdd`).

    An addition of two tensors is residual when one is an ancestor of the other (an identity
    shortcut) or, from their nearest common ancestor, one path runs through more convs than the
    other (a projection shortcut); additions of two equal-depth paths are not residual blocks.

    Example:
        >>> from cnn_redundancy.core.graph import Traced
        >>> from cnn_redundancy.models import get_model
        >>> [a.name for a in residual_adds(Traced(get_model("resnet20")))][:3]
        ['layer1.0', 'layer1.1', 'layer1.2']
    """
    anc = _ancestors(traced.order)
    pos = traced.pos
    convs = {n for n in traced.order if n.op == "call_module" and isinstance(traced.gm.get_submodule(n.target), nn.Conv2d)}
    out: list[ResidualAdd] = []
    for n in traced.order:
        is_add = (n.op == "call_function" and n.target in _ADDS) or (n.op == "call_method" and n.target in ("add", "add_"))
        args = [a for a in n.args[:2] if isinstance(a, torch.fx.Node)]
        if not is_add or len(args) != 2:
            continue
        a, b = args
        common = anc[a] & anc[b]
        if not common:
            continue
        root = max(common, key=lambda m: pos[m])
        on = [sorted((c for c in convs if c in anc[x] and c not in anc[root]), key=lambda m: pos[m]) for x in (a, b)]
        if len(on[0]) == len(on[1]):
            continue
        branch = 0 if len(on[0]) > len(on[1]) else 1
        stack = n.meta.get("nn_module_stack") or {}
        name = next(reversed(stack)) if stack else n.name
        out.append(ResidualAdd(name, "@" + n.name, branch, 1 - branch, tuple(str(c.target) for c in on[branch])))
    names = [r.name for r in out]
    return [r if names.count(r.name) == 1 else dataclasses.replace(r, name=f"{r.name}:{r.node[1:]}") for r in out]


_F = torch.nn.functional
_THROUGH = (*CHANNELWISE, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, *ACTIVATIONS)
# besides the activation functions (core.graph.applies_activation)
_THROUGH_FUNCTIONS = {_F.max_pool2d, _F.avg_pool2d, _F.adaptive_avg_pool2d, _F.adaptive_max_pool2d, _F.batch_norm,
                      _F.group_norm, _F.instance_norm, _F.dropout, _F.dropout2d}  # fmt: skip


# what reads a tensor's shape, type or place and not its values: no use of the channels
_META_METHODS = {"size", "dim", "ndimension", "numel", "nelement", "element_size", "get_device", "is_contiguous"}
_META_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "layout", "is_cuda", "requires_grad"}


def _reads_values(node: torch.fx.Node) -> bool:
    """Whether ``node`` reads the values of the tensors it takes (not only ``x.shape``, ``x.size(1)``, ...)."""
    if node.op == "call_method" and node.target in _META_METHODS:
        return False
    return not (node.op == "call_function" and node.target is getattr and len(node.args) > 1
                and node.args[1] in _META_ATTRIBUTES)  # fmt: skip


def consumer(traced: Traced, layer: str) -> str | None:
    """The conv that reads ``layer``'s output channels one to one (through batch, group or instance norm,
    activations, pooling, dropout), or ``None`` when the output branches, is added, concatenated or flattened.
    Reads of a value's shape, dtype or device along the way (``n = x.size(0)``) do not count as uses.

    Example:
        >>> from cnn_redundancy.core.graph import Traced
        >>> from cnn_redundancy.models import get_model
        >>> consumer(Traced(get_model("lenet5")), "conv1"), consumer(Traced(get_model("lenet5")), "conv2")
        ('conv2', None)
    """
    try:
        node = traced.node(layer)
    except Exception:
        return None
    while len(users := [u for u in node.users if _reads_values(u)]) == 1:
        node = users[0]
        if node.op == "call_module":
            mod = traced.gm.get_submodule(node.target)
            if isinstance(mod, nn.Conv2d):
                return str(node.target)
            if not isinstance(mod, _THROUGH):
                return None
        elif not (applies_activation(node) or node.op == "call_function" and node.target in _THROUGH_FUNCTIONS
                  or node.op == "call_method" and node.target == "contiguous"):  # fmt: skip
            return None
    return None
