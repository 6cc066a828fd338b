"""Remove trivial residual branches: a genuinely smaller ResNet that saves and loads.

:func:`remove_trivial` ranks the residual blocks by the metric with each branch removed alone
(:func:`cnn_redundancy.ablation.zero_ablation`, ``mode="remove-branch"``), then, in that order,
removes each branch for real and keeps the removal while the metric stays within ``tolerance`` of
the baseline (re-checked on the data after every removal). A removed block becomes
:class:`BranchRemoved` (``act(shortcut(x))``); the change is recorded as a ``remove-branch``
surgery step so that :func:`cnn_redundancy.checkpoint.load_checkpoint` rebuilds it.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from ..analyses.ablation import zero_ablation
from ..checkpoint import register_surgery
from ..core.batches import as_loader, resolve_device
from ..core.cost import model_cost
from ..core.layers import get_module
from ..core.metrics import Metric, get_metric
from ..core.results import Result, make_meta
from ..core.structure import is_residual_block, residual_blocks, shortcut_output
from ..models import copy_spec
from ..training import evaluate

__all__ = ["BranchRemoved", "remove_branches", "remove_trivial", "RemovalResult"]


class BranchRemoved(nn.Module):
    """A residual block without its branch: ``act(shortcut(x))`` (``downsample`` kept, so weight names stay)."""

    def __init__(self, downsample: nn.Module | None, act: nn.Module) -> None:
        super().__init__()
        self.downsample = downsample
        self.relu = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shortcut_output(self, x)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(get_module(model, parent) if parent else model, child, new)


def remove_branches(model: nn.Module, blocks: list[str], *, copy_model: bool = True) -> nn.Module:
    """Replace each named residual block by its shortcut (:class:`BranchRemoved`).

    The change is appended to the model's spec as ``{"kind": "remove-branch", "blocks": [...]}``
    so checkpoints of the result load without rebuilding anything by hand.

    Example:
        >>> from cnn_redundancy.models import get_model
        >>> m = remove_branches(get_model("resnet20"), ["layer1.1"])
        >>> type(m.layer1[1]).__name__
        'BranchRemoved'
    """
    for b in blocks:
        if not is_residual_block(get_module(model, b)):
            raise ValueError(f"{b!r} is not a residual block; blocks: {', '.join(residual_blocks(model))}")
    out = copy.deepcopy(model) if copy_model else model
    _replay(out, {"blocks": blocks})
    return copy_spec(model, out, {"kind": "remove-branch", "blocks": list(blocks)})


@register_surgery("remove-branch")
def _replay(model: nn.Module, step: dict[str, Any]) -> nn.Module:
    for b in step["blocks"]:
        block = get_module(model, b)
        _replace(model, b, BranchRemoved(block.downsample, copy.deepcopy(block.relu)))
    return model


def _example(data) -> torch.Tensor:
    return next(iter(as_loader(data, 1)))[0][:1]


@dataclasses.dataclass(eq=False)
class RemovalResult(Result):
    """What :func:`remove_trivial` removed and what it saved.

    Attributes:
        metric, tolerance: the criterion. baseline / final: the metric before and after.
        removed: blocks whose branch was removed, in removal order.
        trials: ``[{"block", "score", "kept"}]`` for every block tried, in order.
        before / after: ``{"params", "macs", "latency_ms"}`` (latency: median CPU time of a batch).
        model: the smaller model (not saved in the JSON; save it with ``save_checkpoint``).
    """

    metric: str = "accuracy"
    tolerance: float = 0.01
    baseline: float = float("nan")
    final: float = float("nan")
    removed: list[str] = dataclasses.field(default_factory=list)
    trials: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    before: dict[str, float] = dataclasses.field(default_factory=dict)
    after: dict[str, float] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: nn.Module | None = dataclasses.field(default=None, metadata={"skip": True}, compare=False, repr=False)

    def plot(self, ax=None):
        """The metric after each accepted / rejected removal, with the baseline and tolerance band."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(max(5.0, 0.4 * len(self.trials) + 2), 3.4))
        else:
            fig = ax.figure
        xs = range(len(self.trials))
        ax.bar(xs, [t["score"] for t in self.trials], color=["tab:green" if t["kept"] else "tab:gray" for t in self.trials])
        ax.axhline(self.baseline, color="black", ls="--", lw=1, label=f"baseline {self.baseline:.3f}")
        ax.axhline(self.baseline - self.tolerance, color="tab:red", ls=":", lw=1, label=f"tolerance {self.tolerance:g}")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([t["block"] for t in self.trials], rotation=90, fontsize=7)
        ax.set_ylabel(self.metric)
        ax.set_ylim(0, max(1.0, self.baseline * 1.05))
        ax.set_title(f"remove trivial branches: {len(self.removed)} removed, params {self.before['params']:,} -> {self.after['params']:,}")
        ax.legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        return fig


def remove_trivial(
    model: nn.Module,
    data,
    *,
    tolerance: float = 0.01,
    metric: str | Metric = "accuracy",
    batch_size: int = 256,
    measure: bool = True,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> RemovalResult:
    """Greedily remove residual branches while the metric stays within ``tolerance`` of the baseline.

    Args:
        model: a trained network with residual blocks (left unchanged; the result holds a copy).
        data: the data the metric is checked on.
        tolerance: largest allowed drop of the metric (absolute, e.g. 0.01 = one accuracy point).
        metric: ``"accuracy"`` or ``"dice"`` (or a Metric).
        measure: also count MACs and time the CPU latency before and after.

    Returns:
        A :class:`RemovalResult`; ``result.model`` is the smaller model.

    Example:
        >>> import cnn_redundancy as cr
        >>> from cnn_redundancy.testing import random_images
        >>> m = cr.get_model("resnet20", in_channels=1, input_size=12).eval()
        >>> r = remove_trivial(m, random_images(16, (1, 12, 12)), tolerance=1.0, measure=False, progress=False)
        >>> len(r.removed), r.after["params"] < r.before["params"]
        (9, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if not (isinstance(tolerance, int | float) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    if not residual_blocks(model):
        raise ValueError(f"{type(model).__name__} has no residual blocks: there is no branch to remove")
    name = get_metric(metric).name
    dev = resolve_device(device, model)
    sweep = zero_ablation(model, data, scope="layer", mode="remove-branch", metric=metric,
                          tolerance=tolerance, batch_size=batch_size, device=dev, progress=progress)
    baseline = sweep.baseline
    ranked = sorted(sweep.units, key=lambda u: (-sweep.scores[u], sweep.units.index(u)))
    current = copy.deepcopy(model).eval()
    removed: list[str] = []
    trials = []
    score = baseline
    for b in ranked:
        if baseline - sweep.scores[b] > tolerance:  # alone already too costly: removing more cannot help
            trials.append({"block": b, "score": sweep.scores[b], "kept": False})
            continue
        candidate = remove_branches(current, [b])
        s = evaluate(candidate, data, metric, batch_size=batch_size, device=dev, progress=progress)
        ok = baseline - s <= tolerance
        trials.append({"block": b, "score": s, "kept": ok})
        if ok:
            current, score = candidate, s
            removed.append(b)
    if removed:
        copy_spec(model, current, {"kind": "remove-branch", "blocks": removed})
    ex = _example(data).to(resolve_device(None, model))  # costs are measured where the model lives
    if measure:
        before, after = model_cost(model, ex), model_cost(current, ex)
    else:
        n = sum(p.numel() for p in model.parameters())
        before, after = {"params": n}, {"params": sum(p.numel() for p in current.parameters())}
    meta = make_meta("remove_trivial", {"tolerance": tolerance, "metric": name, "measure": measure})
    return RemovalResult(metric=name, tolerance=float(tolerance), baseline=float(baseline), final=float(score),
                         removed=removed, trials=trials, before=before, after=after, meta=meta, model=current)
