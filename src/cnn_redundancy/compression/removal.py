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
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analyses.ablation import zero_ablation
from ..checkpoint import CheckpointError, register_surgery
from ..core.batches import first_input, resolve_device
from ..core.cost import model_cost
from ..core.hooks import copy_of
from ..core.layers import get_module
from ..core.metrics import Metric, get_metric
from ..core.results import Partials, Result, make_meta
from ..core.structure import residual_blocks, shortcut_output
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
    _check_blocks(model, blocks)
    out = copy_of(model, "removing branches") if copy_model else model
    _replay(out, {"blocks": blocks})
    return copy_spec(model, out, {"kind": "remove-branch", "blocks": list(blocks)})


def _check_blocks(model: nn.Module, blocks: list[str]) -> None:
    known = residual_blocks(model)
    for b in blocks:
        if b not in known:
            raise ValueError(f"{b!r} is not a residual block; blocks: {', '.join(known)}")


def _check_step(step: dict[str, Any]) -> None:
    blocks = step.get("blocks")
    if not (isinstance(blocks, list) and blocks and all(isinstance(b, str) for b in blocks)):
        raise CheckpointError("blocks must be a list of residual block names")


@register_surgery("remove-branch", check=_check_step)
def _replay(model: nn.Module, step: dict[str, Any]) -> nn.Module:
    _check_blocks(model, step["blocks"])
    for b in step["blocks"]:
        block = get_module(model, b)
        _replace(model, b, BranchRemoved(block.downsample, copy.deepcopy(block.relu)))
    return model


@dataclasses.dataclass(eq=False)
class RemovalResult(Result):
    """What :func:`remove_trivial` removed and what it saved.

    Attributes:
        metric, tolerance: the criterion. baseline / final: the metric before and after.
        removed: blocks whose branch was removed, in removal order.
        trials: ``[{"block", "score", "kept"}]`` for every block tried, in order.
        before / after: ``{"params", "macs"}``; their measured CPU latency (median time of a batch, ms)
            is a timing: ``meta["latency_ms"] = {"before", "after"}``, outside the same-seed comparison.
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
    partial: str | os.PathLike | None = None,
    resume: bool = False,
) -> RemovalResult:
    """Greedily remove residual branches while the metric stays within ``tolerance`` of the baseline.

    Args:
        model: a trained network with residual blocks (left unchanged; the result holds a copy).
        data: the data the metric is checked on.
        tolerance: largest allowed drop of the metric (absolute, e.g. 0.01 = one accuracy point).
        metric: ``"accuracy"`` or ``"dice"`` (or a Metric).
        measure: also count MACs and time the CPU latency before and after.
        partial: a JSON path rewritten with the branches tried so far (when 30 s of work have passed
            since the last write, on an error or interrupt, and at the end); the ranking sweep that
            comes first writes its own partial result next to it (``<name>-ranking.json``) and keeps its
            state until it completes (``<name>-ranking.state.pt``).
        resume: continue a stopped ranking sweep from that state (:func:`cnn_redundancy.zero_ablation`);
            the removals that follow it are tried again.

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
    dev = resolve_device(device, model)
    ranking = None if partial is None else Path(partial).with_name(Path(partial).stem + "-ranking.json")
    sweep = zero_ablation(model, data, scope="layer", mode="remove-branch", metric=metric, tolerance=tolerance,
                          batch_size=batch_size, device=dev, progress=progress, partial=ranking, resume=resume)
    res = RemovalResult(metric=get_metric(metric).name, tolerance=float(tolerance), baseline=float(sweep.baseline),
                        final=float(sweep.baseline), model=copy_of(model, "remove_trivial").eval(),
                        meta={**make_meta("remove_trivial", {"tolerance": tolerance, "metric": get_metric(metric).name,
                                                             "measure": measure}), "complete": False})  # fmt: skip
    with Partials((lambda: res.save(partial)) if partial is not None else None) as partials:
        partials.started = True
        for b in sorted(sweep.units, key=lambda u: (-sweep.scores[u], sweep.units.index(u))):
            _try_removal(res, sweep.scores[b], b, data, metric, batch_size, dev, progress)
            partials.maybe()
        if res.removed:
            copy_spec(model, res.model, {"kind": "remove-branch", "blocks": res.removed})
        _measure(res, model, first_input(data, model).to(resolve_device(None, model)), measure)  # where the model lives
    return res


def _try_removal(res: RemovalResult, alone: float, block: str, data, metric, batch_size: int, dev, progress) -> None:
    """Remove ``block``'s branch from ``res.model`` if the metric stays within the tolerance (recorded in ``res.trials``)."""
    if res.baseline - alone > res.tolerance:  # alone already too costly: removing more cannot help
        res.trials.append({"block": block, "score": alone, "kept": False})
        return
    candidate = remove_branches(res.model, [block])
    s = evaluate(candidate, data, metric, batch_size=batch_size, device=dev, progress=progress)
    ok = res.baseline - s <= res.tolerance
    res.trials.append({"block": block, "score": s, "kept": ok})
    if ok:
        res.model, res.final = candidate, s
        res.removed.append(block)


def _measure(res: RemovalResult, model: nn.Module, ex: torch.Tensor, measure: bool) -> None:
    """Parameters (and MACs) before and after; the measured latency goes to ``meta`` (a timing)."""
    if measure:
        before, after = model_cost(model, ex), model_cost(res.model, ex)
        res.meta["latency_ms"] = {"before": before.pop("latency_ms"), "after": after.pop("latency_ms")}
    else:
        before = {"params": sum(p.numel() for p in model.parameters())}
        after = {"params": sum(p.numel() for p in res.model.parameters())}
    res.before, res.after = before, after
    res.meta["complete"] = True
