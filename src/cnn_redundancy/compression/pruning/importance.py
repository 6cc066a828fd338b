"""Our pruning criteria as Torch-Pruning importances (``tp.pruner.MetaPruner(..., importance=...)``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...analyses.distinctiveness import CENTERINGS, activation_stats

__all__ = ["DistinctivenessImportance", "FPGMImportance", "SeededRandomImportance"]


class DistinctivenessImportance:
    """Distinctiveness as a Torch-Pruning importance: a kernel's score is its smallest angle to another kernel.

    Plug into any Torch-Pruning pruner (``tp.pruner.MetaPruner(model, x, importance=...)``). The
    weaker kernel of each pair gets a score a hair lower, so pruning one kernel of the least
    distinct pair first, as the paper does. Scores are in degrees (not normalized).

    Args:
        data: the data over which activation vectors are taken.
        center, observe, batch_size: as for :func:`cnn_redundancy.distinctiveness`.

    Example:
        >>> import torch_pruning as tp
        >>> from cnn_redundancy.testing import duplicated_kernels_net, random_images
        >>> m = duplicated_kernels_net()
        >>> dg = tp.DependencyGraph().build_dependency(m, torch.zeros(1, 1, 12, 12))
        >>> g = dg.get_pruning_group(m.conv1, tp.prune_conv_out_channels, [0, 1, 2, 3])
        >>> int(DistinctivenessImportance(random_images(16))(g).argmin()) in (0, 1)
        True
    """

    def __init__(self, data, *, center: str | None = None, observe: str | None = None, batch_size: int = 256) -> None:
        if center not in CENTERINGS:
            raise ValueError(f"center must be None, 'mean' or 'minmax', not {center!r}")
        self.data, self.center, self.observe, self.batch_size = data, center, observe, batch_size

    @torch.no_grad()
    def __call__(self, group, **kw) -> torch.Tensor | None:
        root = group[0].dep.target.module
        if not isinstance(root, nn.Conv2d):
            return None
        model = group._DG.model
        name = group._DG._module2name[root]
        idxs = list(group[0].root_idxs)
        obs = {name: self.observe} if self.observe else None
        stats = activation_stats(model, self.data, [name], observe=obs, batch_size=self.batch_size, progress=False)
        st = stats[name]
        ang, _ = st.angles(self.center)
        if self.center is not None:
            ang = torch.minimum(ang, 180.0 - ang)  # complementary pairs are redundant too
        dead = torch.isnan(ang.diagonal())
        ang = ang.nan_to_num(nan=math.inf)
        ang.fill_diagonal_(math.inf)
        score = torch.where(dead, torch.full_like(ang[0], -1.0), ang.min(1).values)  # degenerate kernels first
        mean_norm = st.sums / st.n
        tiebreak = 1e-6 * mean_norm / mean_norm.max().clamp_min(1e-300)
        return (score + tiebreak)[idxs].float()


class SeededRandomImportance:
    """Random importance from a seeded ``torch.Generator`` (Torch-Pruning's uses the global RNG)."""

    def __init__(self, seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, group, **kw) -> torch.Tensor:
        return torch.rand(len(group[0].idxs), generator=self.gen)


def input_rows(layer: nn.Module) -> torch.Tensor:
    """One row per input channel of a conv or linear layer: every weight that reads that channel.

    In a grouped conv (weight ``[out, in / groups, kh, kw]``), input channel ``c`` is read only by the
    kernels of its own group ``c // (in / groups)``, at position ``c % (in / groups)``: its row holds
    those ``out / groups`` kernels' slices, no other group's.
    """
    w = layer.weight.data
    if isinstance(layer, nn.Linear):
        return w.transpose(0, 1)
    if getattr(layer, "transposed", False):  # weight [in, out / groups, ...]: already one row per input channel
        return w.flatten(1)
    g = layer.groups
    per_out, per_in = w.shape[0] // g, w.shape[1]
    return w.reshape(g, per_out, per_in, -1).transpose(1, 2).reshape(g * per_in, -1)


class FPGMImportance:
    """FPGM (He et al., CVPR 2019) for a Torch-Pruning group: the one Torch-Pruning computes, grouped convs included.

    Every conv and linear of the group gives each channel the summed Euclidean distance of its
    ``|w|^p`` to those of the other channels (its output kernels, or the weights reading it as an
    input); a channel near the geometric median scores low. The scores are averaged over the group
    and divided by their mean, as ``torch_pruning.importance.FPGMImportance(p)`` does, so it ranks the
    same. Torch-Pruning's raises on the input channels of a grouped (not depthwise) conv (1.6.1: "Number of
    dimensions of repeat dims can not be smaller than number of dimensions of tensor"); here each input
    channel is read from its own group's kernels (:func:`input_rows`).

    Example:
        >>> import torch_pruning as tp
        >>> from cnn_redundancy.testing import grouped_conv_net
        >>> m = grouped_conv_net()
        >>> dg = tp.DependencyGraph().build_dependency(m, torch.zeros(1, 1, 12, 12))
        >>> FPGMImportance()(dg.get_pruning_group(m.conv1, tp.prune_conv_out_channels, list(range(8)))).shape
        torch.Size([8])
    """

    def __init__(self, p: float = 2) -> None:
        self.p = p

    @torch.no_grad()
    def __call__(self, group, **kw) -> torch.Tensor | None:
        import torch_pruning as tp

        outs = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
        ins = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
        total, n = None, 0
        for i, (dep, idxs) in enumerate(group):
            layer, fn, root = dep.layer, dep.pruning_fn, group[i].root_idxs
            if not isinstance(layer, nn.modules.conv._ConvNd | nn.Linear) or fn not in outs + ins:
                continue
            if fn in outs:
                w = layer.weight.data
                rows = (w.transpose(1, 0) if getattr(layer, "transposed", False) else w)[idxs].flatten(1)
            else:
                rows = input_rows(layer)[idxs]
            imp = rows.abs().pow(self.p)
            dist = torch.cdist(imp.unsqueeze(0), imp.unsqueeze(0), p=2).squeeze(0).abs().sum(0)
            if total is None:
                total = torch.zeros_like(dist, dtype=torch.float32)
            if any(r is None for r in root):
                continue
            total.scatter_add_(0, torch.tensor(root, device=dist.device), dist.to(total.device, torch.float32))
            n += 1
        if not n:
            return None
        total /= n
        return total / total.mean()
