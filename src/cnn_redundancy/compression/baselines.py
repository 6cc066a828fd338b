"""Torch-Pruning's own pruner as the baseline ``compress`` is measured against, at the same MACs.

``MetaPruner`` with global ranking over the conv layers (the layers ``compress`` may prune; dense
layers change only as dependents), with group L1 (``GroupMagnitudeImportance(p=1)``), group Taylor
(``GroupTaylorImportance``, gradients of the cross-entropy over the calibration data refreshed before
every step) or seeded random importance, stepping until the MACs reach the given count (30 steps of
3% of the channels each, up to 90%: the count is reached within one step).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..core.cost import count_macs
from .pruning.importance import SeededRandomImportance
from .pruning.rules import _accumulate_gradients
from .pruning.surgeon import trainable

__all__ = ["torch_pruning_baseline", "BASELINES"]

BASELINES = ("l1", "taylor", "random")


def _importance(kind: str, seed: int):
    import torch_pruning as tp

    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    if kind == "random":
        return SeededRandomImportance(seed)
    raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, not {kind!r}")


def torch_pruning_baseline(model: nn.Module, example: torch.Tensor, layers: list[str], target_macs: int, *,
                           kind: str, calib, batch_size: int, seed: int, device, steps: int = 30,
                           on_step=None) -> nn.Module:  # fmt: skip
    """A copy of ``model`` pruned by Torch-Pruning's MetaPruner down to ``target_macs`` MACs per sample.

    ``on_step(model, macs)`` is called after every step (e.g. to record a metric curve).
    """
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    keep = set(layers)
    ignored = [m for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d) and n not in keep]
    ignored += [m for m in pruned.modules() if isinstance(m, nn.Linear)]
    with torch.enable_grad(), trainable(pruned):
        pruner = tp.pruner.MetaPruner(pruned, example, importance=_importance(kind, seed), global_pruning=True,
                                      pruning_ratio=0.9, iterative_steps=steps, ignored_layers=ignored,
                                      root_module_types=[nn.Conv2d])  # fmt: skip
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    for _ in range(steps):
        macs = sum(count_macs(pruned, example).values())
        if macs <= target_macs:
            break
        if kind == "taylor":
            _accumulate_gradients(pruned, calib, batch_size, device)
        with torch.enable_grad():
            pruner.step()
        pruned.zero_grad(set_to_none=True)
        for n, p in pruned.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
        if on_step is not None:
            on_step(pruned, sum(count_macs(pruned, example).values()))
    return pruned.eval()
