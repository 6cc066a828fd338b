"""Our pruning criteria as Torch-Pruning importances (``tp.pruner.MetaPruner(..., importance=...)``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...analyses.distinctiveness import CENTERINGS, activation_stats

__all__ = ["DistinctivenessImportance", "SeededRandomImportance"]


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
