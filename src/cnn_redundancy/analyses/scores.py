"""The standard per-kernel importance scores, for comparison with the papers' lenses.

- ``l1``: the L1 norm of each kernel's weights (Li et al. 2017; Torch-Pruning's magnitude importance).
- ``taylor``: the first-order Taylor estimate of the loss change when the kernel's activation is
  removed (Molchanov et al. 2017): per sample, ``|mean over positions of a * dL/da|`` of the conv's
  output channel, averaged over samples, with the cross-entropy loss on the data's labels.

Low scores mean "matters little": the kernels a magnitude or Taylor pruner would remove first. The
gradients are taken with respect to the activations only, so the model's parameters (their
``.grad`` and ``requires_grad``) are never touched; frozen layers are scored like the others.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..core.batches import BatchLoop, as_loader, forward_checked, resolve_device
from ..core.device import placed
from ..core.hooks import capture, preserved
from ..core.layers import LayerSpec, resolve_layers
from ..core.metrics import output_param, select_output
from ..core.plotting import height_for, per_layer_boxes
from ..core.progress import progress_bar
from ..core.registry import analysis, option
from ..core.results import Partials, Result, make_meta

__all__ = ["KernelScoresResult", "kernel_scores", "SCORES"]

SCORES = ("l1", "taylor")


@dataclasses.dataclass(eq=False)
class KernelScoresResult(Result):
    """Per-kernel importance scores by layer (lower: less important).

    Attributes:
        layers: the conv layers. l1: layer -> L1 norm of each kernel's weights.
        taylor: layer -> the Taylor importance of each kernel (empty without ``"taylor"``).
        n_samples: samples the Taylor scores average over.
    """

    layers: list[str] = dataclasses.field(default_factory=list)
    l1: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    taylor: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    n_samples: int = 0

    def headline(self) -> list[str]:
        lines = []
        for name, scores in (("L1", self.l1), ("Taylor", self.taylor)):
            if scores:
                low = min(((v, layer, k) for layer, vs in scores.items() for k, v in enumerate(vs)), default=None)
                if low is not None:
                    lines.append(f"lowest {name} score: {low[1]} kernel {low[2]} ({low[0]:.3g})")
        return lines

    def plot(self):
        """Per layer, the spread of each score (divided by the layer's largest), one row per layer."""
        import matplotlib.pyplot as plt

        kinds = [(k, v) for k, v in (("L1 norm", self.l1), ("Taylor", self.taylor)) if v]
        fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), height_for(len(self.layers))), squeeze=False)
        for ax, (label, scores) in zip(axes[0], kinds):
            vals = [[v / max(max(scores[layer]), 1e-30) for v in scores[layer]] for layer in self.layers]
            per_layer_boxes(self.layers, vals, ax=ax, xlabel=f"{label} / the layer's largest", xlim=(-0.02, 1.02),
                            title=f"{label} per kernel (each point a kernel)")  # fmt: skip
        return fig


def _taylor_batch(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor,
                  output: str | int | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per layer, the sum over the batch of ``|mean over positions of a * dL/da|`` per channel."""
    with torch.enable_grad(), capture(model, names, detach=False) as acts:
        out = select_output(forward_checked(model, x.detach().requires_grad_(True)), output, "taylor scores")
        if not isinstance(out, torch.Tensor) or out.dim() < 2:
            raise ValueError("taylor scores need class logits [batch, classes, ...] (or pass scores=('l1',))")
        loss = F.cross_entropy(out, y.long(), reduction="sum")
        grads = torch.autograd.grad(loss, [acts[n] for n in names], allow_unused=True)
    sums = {}
    for n, g in zip(names, grads):
        a = acts[n].detach()
        prod = torch.zeros_like(a) if g is None else a * g
        sums[n] = prod.flatten(2).mean(2).abs().double().sum(0)
    return sums


@analysis("kernel-scores", paper="toolkit", result=KernelScoresResult, options=[
    option("scores", "which scores", choices=SCORES, nargs="+"),
])  # fmt: skip
def kernel_scores(
    model: nn.Module,
    data: Dataset | DataLoader | None,
    layers: LayerSpec = None,
    *,
    scores: tuple[str, ...] | list[str] = SCORES,
    output: str | int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    partial: str | os.PathLike | None = None,
) -> KernelScoresResult:
    """L1 and Taylor importance of every kernel of the conv layers (see the module docstring).

    Args:
        data: ``(input, label)`` pairs for the Taylor scores (class labels, or per-pixel labels of a
            segmentation model); not needed for ``scores=("l1",)``.
        scores: ``"l1"`` and/or ``"taylor"``.
        output: for a model returning a dict or tuple, the key or index of the output the Taylor loss
            reads (the class logits).

    Example:
        >>> import torch
        >>> from cnn_redundancy.testing import TinyCNN, random_images
        >>> m = TinyCNN().eval()
        >>> with torch.no_grad():  # kernel 3 of conv2 outputs zero whatever the input
        ...     m.conv2.weight[3], m.conv2.bias[3] = 0.0, 0.0
        >>> res = kernel_scores(m, random_images(16))
        >>> res.l1["conv2"][3], res.taylor["conv2"][3]
        (0.0, 0.0)
    """
    scores = tuple(scores)
    bad = [s for s in scores if s not in SCORES]
    if bad or not scores:
        raise ValueError(f"scores must be among {', '.join(SCORES)}, not {list(scores)}")
    names = resolve_layers(model, layers)
    params = {"layers": names, "scores": list(scores), **output_param(output)}
    res = KernelScoresResult(meta={**make_meta("kernel_scores", params, seed),
                                   "complete": False}, layers=names)  # fmt: skip
    for n in names:
        res.l1[n] = model.get_submodule(n).weight.detach().abs().flatten(1).sum(1).double().tolist()
    if "l1" not in scores:
        res.l1 = {}
    if "taylor" in scores:
        if data is None:
            raise ValueError("taylor scores need data with labels")
        _taylor(model, data, names, res, batch_size, device, progress, partial, output)
    res.meta["complete"] = True
    if partial is not None and "taylor" not in scores:
        res.save(partial)
    return res


def _taylor(model, data, names, res: KernelScoresResult, batch_size, device, progress, partial, output) -> None:
    loader = as_loader(data, batch_size)
    dev = resolve_device(device, model)
    sums: dict[str, torch.Tensor] = {}

    def snapshot() -> None:
        res.taylor = {n: (s / max(res.n_samples, 1)).cpu().tolist() for n, s in sums.items()}

    def add(batch: dict) -> None:  # in the global batch order, on every process (BatchLoop)
        for n, s in batch["sums"].items():
            sums[n] = sums[n] + s if n in sums else s
        res.n_samples += batch["n"]

    write = (lambda: (snapshot(), res.save(partial))) if partial is not None else None
    loop = BatchLoop(loader, dev, add, model=model)
    with preserved(model), placed(model, dev), progress_bar(len(loop), "taylor scores", enabled=progress, unit="batch") as bar, \
            Partials(write) as partials:  # fmt: skip
        model.eval()
        for b in loop:
            if b.y is None:
                raise ValueError("taylor scores need labels: the data gives inputs only")
            loop.add({"sums": _taylor_batch(model, names, b.x, b.y, output), "n": len(b.x)})
            bar.update(1)
            partials.started = True
            partials.maybe()
        res.meta["complete"] = True
        snapshot()
