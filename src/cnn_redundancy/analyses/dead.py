"""Dead and constant kernels: output channels that carry nothing, whatever the input.

A kernel (conv output channel) is **dead** on the data when its observed activation (after the
nonlinearity, where the model makes that identifiable) never rises above a small threshold on any
sample and position: with a ReLU, it is exactly zero on every image. It is **constant** when its
activation takes the same value everywhere (a dead kernel is constant at zero; a constant non-zero
one is a bias in disguise). Kernels whose weights are all exactly zero are listed too. Removing a
dead kernel changes nothing downstream; a constant one can be folded into the next layer's bias.

One streamed pass: per batch and layer only the per-channel maximum of ``|a|``, minimum and maximum
are kept, so memory does not grow with the data set.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..core.batches import BatchLoop, as_loader, forward_checked, resolve_device
from ..core.device import placed
from ..core.hooks import capture_after, preserved
from ..core.layers import LayerSpec, not_called, resolve_layers
from ..core.observe import ObserveSpec, resolve_observe
from ..core.plotting import height_for
from ..core.progress import progress_bar
from ..core.registry import analysis, option
from ..core.results import Partials, Result, make_meta

__all__ = ["DeadResult", "dead_kernels"]


@dataclasses.dataclass(eq=False)
class DeadResult(Result):
    """Dead, constant and zero-weight kernels per conv layer.

    Attributes:
        layers: the conv layers. observed: layer -> the module whose output was read.
        threshold: a kernel is dead when its largest ``|activation|`` is at most ``threshold`` times
            the largest of its layer (so the test does not depend on the layer's scale).
        max_activation: layer -> per kernel, the largest ``|activation|`` over the data.
        dead: layer -> kernels never above the threshold on the data.
        constant: layer -> kernels whose activation spans at most the threshold (dead ones included).
        zero_weights: layer -> kernels whose weights are all exactly zero.
        n_samples: samples read.
    """

    layers: list[str] = dataclasses.field(default_factory=list)
    observed: dict[str, str] = dataclasses.field(default_factory=dict)
    threshold: float = 1e-6
    max_activation: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    dead: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    constant: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    zero_weights: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    n_samples: int = 0

    def fraction(self, layer: str) -> float:
        """Fraction of the layer's kernels that are dead."""
        return len(self.dead[layer]) / max(1, len(self.max_activation[layer]))

    def headline(self) -> list[str]:
        total = sum(len(v) for v in self.max_activation.values())
        n_dead = sum(len(v) for v in self.dead.values())
        lines = [f"{n_dead} of {total} kernels are dead (zero on every one of {self.n_samples} samples)"]
        lines += [f"{layer}: {len(self.dead[layer])} of {len(self.max_activation[layer])} dead"
                  + (f", {len(self.constant[layer]) - len(self.dead[layer])} constant" if len(self.constant[layer]) > len(self.dead[layer]) else "")
                  for layer in self.layers if self.constant[layer]]  # fmt: skip
        return lines

    def plot(self):
        """Per layer (one row each), the share of dead, constant (non-zero) and live kernels."""
        import matplotlib.pyplot as plt

        n = len(self.layers)
        fig, ax = plt.subplots(figsize=(7.5, height_for(n)))
        total = [max(1, len(self.max_activation.get(layer, []))) for layer in self.layers]
        dead = [len(self.dead.get(layer, [])) / t for layer, t in zip(self.layers, total)]
        const = [(len(self.constant.get(layer, [])) - len(self.dead.get(layer, []))) / t for layer, t in zip(self.layers, total)]
        ax.barh(range(n), dead, color="tab:red", label="dead (zero on every sample)")
        ax.barh(range(n), const, left=dead, color="tab:orange", label="constant, non-zero")
        for i, (d, t) in enumerate(zip(dead, total)):
            ax.text(1.0, i, f" {round(d * t)}/{t}", va="center", fontsize=7, transform=ax.get_yaxis_transform())
        ax.set_yticks(range(n), self.layers, fontsize=7 if n > 30 else 8)
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel("fraction of the layer's kernels")
        ax.set_ylabel("conv layer (forward order)")
        ax.set_title(f"dead and constant kernels ({self.n_samples} samples; right: dead / kernels)", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        return fig


def _reduce(name: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if t.dim() < 2:
        raise ValueError(f"{name!r} outputs shape {tuple(t.shape)}, not [batch, channels, ...]")
    flat = t.detach().transpose(0, 1).reshape(t.shape[1], -1).double()
    return flat.abs().amax(1), flat.amin(1), flat.amax(1)


class _Extremes:
    """Running per-channel max |a|, min and max of every layer."""

    def __init__(self) -> None:
        self.abs: dict[str, torch.Tensor] = {}
        self.lo: dict[str, torch.Tensor] = {}
        self.hi: dict[str, torch.Tensor] = {}
        self.n = 0

    def update(self, layer: str, values: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        a, lo, hi = values
        if layer not in self.abs:
            self.abs[layer], self.lo[layer], self.hi[layer] = a, lo, hi
        else:
            self.abs[layer] = torch.maximum(self.abs[layer], a)
            self.lo[layer] = torch.minimum(self.lo[layer], lo)
            self.hi[layer] = torch.maximum(self.hi[layer], hi)


def _result(model, names, observed, ext: _Extremes, threshold, seed, complete) -> DeadResult:
    res = DeadResult(meta={**make_meta("dead_kernels", {"layers": names, "observe": observed, "threshold": threshold},
                                       seed), "complete": complete},
                     layers=names, observed=observed, threshold=threshold, n_samples=ext.n)  # fmt: skip
    for n in names:
        w = model.get_submodule(n).weight.detach()
        res.zero_weights[n] = torch.nonzero(w.flatten(1).abs().amax(1) == 0).flatten().tolist()
        if n not in ext.abs:
            continue
        a, span = ext.abs[n].cpu(), (ext.hi[n] - ext.lo[n]).cpu()
        tol = threshold * max(float(a.max()), 1e-30)
        res.max_activation[n] = a.tolist()
        res.dead[n] = torch.nonzero(a <= tol).flatten().tolist()
        res.constant[n] = torch.nonzero(span <= tol).flatten().tolist()
    return res


@analysis("dead-kernels", paper="toolkit", result=DeadResult, options=[
    option("threshold", "dead: largest |activation| at most this fraction of the layer's largest"),
])  # fmt: skip
def dead_kernels(
    model: nn.Module,
    data: Dataset | DataLoader,
    layers: LayerSpec = None,
    *,
    observe: ObserveSpec = None,
    threshold: float = 1e-6,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    partial: str | os.PathLike | None = None,
) -> DeadResult:
    """Kernels that are dead (zero on every sample), constant, or have all-zero weights.

    Args:
        model: the network (left exactly as found).
        data: a Dataset or DataLoader of ``(input, label)``; one streamed pass.
        layers: conv layers (names, globs, modules; default all).
        observe: where each kernel's activation is read (default: after its nonlinearity).
        threshold: relative threshold (see :class:`DeadResult`).
        seed: recorded (nothing is drawn at random).
        partial: a JSON path rewritten as the pass goes.

    Example:
        >>> import torch
        >>> from cnn_redundancy.testing import TinyCNN, random_images
        >>> m = TinyCNN().eval()
        >>> with torch.no_grad():
        ...     m.conv1.bias[2] = -100.0  # under the ReLU: never above zero
        >>> dead_kernels(m, random_images(16)).dead["conv1"]
        [2]
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a number in [0, 1), not {threshold!r}")
    names = resolve_layers(model, layers)
    observed = resolve_observe(model, names, observe)
    loader = as_loader(data, batch_size)
    dev = resolve_device(device, model)
    ext = _Extremes()
    done = [False]
    write = (lambda: _result(model, names, observed, ext, threshold, seed, done[0]).save(partial)) if partial else None
    def add(batch: dict) -> None:  # in the global batch order, on every process (BatchLoop)
        for n in names:
            ext.update(n, batch["extremes"][n])
        ext.n += batch["n"]

    loop = BatchLoop(loader, dev, add, model=model)
    with preserved(model), torch.no_grad(), placed(model, dev), capture_after(model, observed, fn=_reduce) as store, \
            progress_bar(len(loop), "dead kernels", enabled=progress, unit="batch") as bar, Partials(write) as partials:  # fmt: skip
        model.eval()
        for b in loop:
            store.clear()
            forward_checked(model, b.x)
            missing = [n for n in names if n not in store]
            if missing:
                raise not_called(missing, observed)
            loop.add({"extremes": {n: store[n] for n in names}, "n": len(b.x)})
            bar.update(1)
            partials.started = True
            partials.maybe()
        done[0] = True
    return _result(model, names, observed, ext, threshold, seed, True)
