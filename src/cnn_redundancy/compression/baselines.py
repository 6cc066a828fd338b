"""Torch-Pruning's own pruner as the baseline ``compress`` is measured against, at the same MACs.

``MetaPruner`` with global ranking over the conv layers (the layers ``compress`` may prune; dense
layers change only as dependents), with group L1 (``GroupMagnitudeImportance(p=1)``), group Taylor
(``GroupTaylorImportance``, gradients of the cross-entropy over the calibration data refreshed before
every step) or seeded random importance, stepping until the MACs reach the given count (30 steps of
3% of the channels each, up to 90%; a step that overshoots is redone once in ten smaller ones).
Global ranking removes whole channels, so on small layers the MACs can still land below the target
by one channel's worth (LeNet-5's conv1 has six channels: one is 13% of the MACs); every report gives
each method's own MACs beside its metric.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..core.cost import count_macs
from ..core.hooks import copy_of
from .pruning.importance import SeededRandomImportance
from .pruning.rules import _accumulate_gradients
from .pruning.surgeon import fold_parametrizations, output_transform, trainable

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


def _pruner(model: nn.Module, example, layers: set[str], kind: str, seed: int, ratio: float, steps: int, output):
    import torch_pruning as tp

    ignored = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n not in layers]
    ignored += [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.enable_grad(), trainable(model):
        return tp.pruner.MetaPruner(model, example, importance=_importance(kind, seed), global_pruning=True,
                                    pruning_ratio=ratio, iterative_steps=steps, ignored_layers=ignored,
                                    root_module_types=[nn.Conv2d], output_transform=output_transform(output))  # fmt: skip


def torch_pruning_baseline(model: nn.Module, example: torch.Tensor, layers: list[str], target_macs: int, *,
                           kind: str, calib, batch_size: int, seed: int, device, steps: int = 30,
                           on_step=None, output: str | int | None = None) -> nn.Module:  # fmt: skip
    """A copy of ``model`` pruned by Torch-Pruning's MetaPruner down to ``target_macs`` MACs per sample.

    Steps of 3% of the channels; a step that overshoots the target by more than 2% is redone from
    where it started in steps ten times smaller, so the baselines land at the MACs they are compared
    at; a pruner whose steps are spent is followed by a fresh one from where it stopped.
    ``on_step(model, macs)`` is called after every kept step (e.g. to record a metric curve).
    ``output``: the model output the Taylor gradients read (a model returning a dict or tuple).
    """
    pruned = copy_of(model, "a Torch-Pruning baseline").eval()
    fold_parametrizations(pruned)  # Torch-Pruning cannot cut a weight computed from others
    frozen = {n for n, p in pruned.named_parameters() if not p.requires_grad}
    total = sum(model.get_submodule(n).out_channels for n in layers)

    per_step, fine = 0.9 / steps, False

    def fresh():
        """A pruner from here removing ``per_step`` of the original channels per step for ``steps`` steps
        (once a step overshot: a tenth of that for ten steps)."""
        fraction, n = (per_step / 10, 10) if fine else (per_step, steps)
        kept = sum(pruned.get_submodule(name).out_channels for name in layers) / total
        return _pruner(pruned, example, set(layers), kind, seed, min(0.9, n * fraction / kept), n, output), n

    pruner, left = fresh()
    macs = sum(count_macs(pruned, example).values())
    for _ in range(4 * steps):
        if macs <= target_macs:
            break
        if left == 0:  # this pruner's steps are spent: go on from here at the same pace
            pruner, left = fresh()
        before = None if fine else copy.deepcopy(pruned)  # only a coarse step is ever redone
        _step(pruned, pruner, kind, calib, batch_size, device, frozen, output)
        left -= 1
        after = sum(count_macs(pruned, example).values())
        if after < 0.98 * target_macs and not fine:  # overshot: redo this step finer
            fine, pruned = True, before
            pruner, left = fresh()
            continue
        macs = after  # (a small step may remove nothing: the pruner's schedule is cumulative)
        if on_step is not None:
            on_step(pruned, after)
    return pruned.eval()


def _step(pruned: nn.Module, pruner, kind: str, calib, batch_size: int, device, frozen: set[str], output) -> None:
    if kind == "taylor":
        _accumulate_gradients(pruned, calib, batch_size, device, output)
    with torch.enable_grad():
        pruner.step()
    pruned.zero_grad(set_to_none=True)
    for n, p in pruned.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
