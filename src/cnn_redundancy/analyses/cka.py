"""Linear CKA between the activations of every pair of conv layers: redundancy across depth.

Centered kernel alignment (Kornblith et al. 2019) with a linear kernel compares two layers'
representations of the same images; 1 means they are the same up to a rotation and scale. It is
computed over mini-batches with the unbiased HSIC estimator (Song et al. 2012), as Nguyen, Raghu
and Kornblith (2021) do for wide and deep networks:

``CKA(l, m) = sum_b HSIC_1(K_l, K_m) / sqrt(sum_b HSIC_1(K_l, K_l) * sum_b HSIC_1(K_m, K_m))``

where ``K_l = X_l X_l^T`` is the Gram matrix of a batch's flattened activations of layer ``l``. Only
the per-batch HSIC sums are kept, so memory is flat in the data size; a batch needs at least 4
samples (smaller ones, e.g. a last partial batch, are left out and counted). Blocks of layers with
CKA near 1 compute nearly the same representation: redundancy across depth.
"""

from __future__ import annotations

import dataclasses
import math
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..core.batches import BatchLoop, as_loader, forward_checked, resolve_device
from ..core.device import placed
from ..core.hooks import capture_after, preserved
from ..core.layers import LayerSpec, resolve_layers
from ..core.observe import ObserveSpec, resolve_observe
from ..core.progress import progress_bar
from ..core.registry import analysis
from ..core.results import Partials, Result, make_meta

__all__ = ["CKAResult", "cka", "hsic1"]


@dataclasses.dataclass(eq=False)
class CKAResult(Result):
    """Linear CKA between every pair of layers.

    Attributes:
        layers: the conv layers, in forward order. observed: layer -> the module read.
        matrix: ``matrix[i][j]`` is the CKA of ``layers[i]`` and ``layers[j]`` (symmetric, diagonal 1).
        n_samples: samples in the batches used. skipped_batches: batches of fewer than 4 samples.
    """

    layers: list[str] = dataclasses.field(default_factory=list)
    observed: dict[str, str] = dataclasses.field(default_factory=dict)
    matrix: list[list[float]] = dataclasses.field(default_factory=list)
    n_samples: int = 0
    skipped_batches: int = 0

    def similar_neighbours(self, threshold: float = 0.95) -> list[tuple[str, str, float]]:
        """Consecutive layers whose CKA is at least ``threshold``."""
        m = self.matrix
        return [(self.layers[i], self.layers[i + 1], m[i][i + 1]) for i in range(len(self.layers) - 1)
                if m[i][i + 1] >= threshold]  # fmt: skip

    def headline(self) -> list[str]:
        near = self.similar_neighbours()
        if not self.matrix:
            return []
        lines = [f"{len(near)} of {len(self.layers) - 1} consecutive layer pairs have CKA >= 0.95"]
        lines += [f"{a} ~ {b}: CKA {v:.3f}" for a, b, v in near[:10]]
        return lines

    def plot(self):
        """Layer x layer heat map of CKA (a block near 1: layers computing nearly the same representation)."""
        import matplotlib.pyplot as plt

        n = len(self.layers)
        size = min(12.0, max(4.5, 0.22 * n + 2.5))
        fig, ax = plt.subplots(figsize=(size + 1.2, size))
        im = ax.imshow(self.matrix, vmin=0, vmax=1, cmap="magma", interpolation="nearest")
        step = max(1, math.ceil(n / 40))
        ticks = list(range(0, n, step))
        ax.set_xticks(ticks, [self.layers[i] for i in ticks], rotation=90, fontsize=7 if n > 20 else 8)
        ax.set_yticks(ticks, [self.layers[i] for i in ticks], fontsize=7 if n > 20 else 8)
        ax.set_xlabel("conv layer")
        ax.set_ylabel("conv layer")
        ax.set_title(f"linear CKA between layers ({self.n_samples} samples)")
        fig.colorbar(im, ax=ax, label="CKA", fraction=0.046, pad=0.04)
        fig.tight_layout()
        return fig


def hsic1(grams: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC between every pair of Gram matrices ``grams [L, n, n]`` (their diagonals are ignored).

    Returns ``[L, L]``. Example:
        >>> x = torch.randn(8, 5, dtype=torch.float64)
        >>> g = torch.stack([x @ x.T, (2 * x) @ (2 * x).T])
        >>> h = hsic1(g)
        >>> round(float(h[0, 1] / (h[0, 0] * h[1, 1]).sqrt()), 12)
        1.0
    """
    n = grams.shape[-1]
    if n < 4:
        raise ValueError("the unbiased HSIC needs at least 4 samples")
    k = grams.clone()
    k.diagonal(dim1=-2, dim2=-1).zero_()
    flat = k.flatten(1)
    rows = k.sum(-1)
    total = k.sum((-2, -1))
    out = flat @ flat.T + torch.outer(total, total) / ((n - 1) * (n - 2)) - 2 * (rows @ rows.T) / (n - 2)
    return out / (n * (n - 3))


def _gram(name: str, t: torch.Tensor) -> torch.Tensor:
    x = t.detach().flatten(1)
    return (x @ x.T).double()


def _matrix(sums: torch.Tensor | None, n: int) -> list[list[float]]:
    if sums is None:
        return []
    d = sums.diagonal().clamp_min(0).sqrt()
    m = sums / torch.outer(d, d).clamp_min(1e-300)
    m = torch.where(torch.outer(d, d) > 0, m, torch.full_like(m, math.nan))
    m.fill_diagonal_(1.0)
    return m.clamp(-1.0, 1.0).cpu().tolist()


@analysis("cka", paper="toolkit", result=CKAResult)
def cka(
    model: nn.Module,
    data: Dataset | DataLoader,
    layers: LayerSpec = None,
    *,
    observe: ObserveSpec = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    partial: str | os.PathLike | None = None,
) -> CKAResult:
    """Linear CKA between the activations of every pair of conv layers (minibatch, unbiased HSIC).

    Args:
        model: the network (left exactly as found).
        data: a Dataset or DataLoader; one streamed pass; batches need at least 4 samples.
        layers: conv layers (default all); each layer's activation is read at ``observe``
            (default: after its nonlinearity).
        seed: recorded (nothing is drawn at random).

    Example:
        >>> from cnn_redundancy.testing import TinyCNN, random_images
        >>> res = cka(TinyCNN().eval(), random_images(32), batch_size=16)
        >>> res.matrix[0][0], 0.0 < res.matrix[0][1] < 1.0
        (1.0, True)
    """
    names = resolve_layers(model, layers)
    observed = resolve_observe(model, names, observe)
    loader = as_loader(data, batch_size)
    dev = resolve_device(device, model)
    sums: list[torch.Tensor | None] = [None]
    res = CKAResult(meta={**make_meta("cka", {"layers": names, "observe": observed}, seed), "complete": False},
                    layers=names, observed=observed)  # fmt: skip

    def snapshot() -> CKAResult:
        res.matrix = _matrix(sums[0], len(names))
        return res

    def add(batch: dict) -> None:  # in the global batch order, on every process (BatchLoop)
        if batch["hsic"] is None:
            res.skipped_batches += 1
            return
        sums[0] = batch["hsic"] if sums[0] is None else sums[0] + batch["hsic"]
        res.n_samples += batch["n"]

    write = (lambda: snapshot().save(partial)) if partial is not None else None
    loop = BatchLoop(loader, dev, add, model=model)
    with preserved(model), torch.no_grad(), placed(model, dev), capture_after(model, observed, fn=_gram) as store, \
            progress_bar(len(loop), "CKA", enabled=progress, unit="batch") as bar, Partials(write) as partials:  # fmt: skip
        model.eval()
        for b in loop:
            store.clear()
            forward_checked(model, b.x)
            enough = len(b.x) >= 4
            loop.add({"hsic": hsic1(torch.stack([store[n] for n in names])) if enough else None, "n": len(b.x)})
            partials.started = partials.started or enough
            bar.update(1)
            partials.maybe()
        res.meta["complete"] = True
    if sums[0] is None:
        raise ValueError("CKA needs batches of at least 4 samples; none was that large (raise batch_size)")
    return snapshot()
