"""Pruning to a MACs target or within a metric budget: many kernels per step, scores refreshed every step.

Each step scores every kernel of the candidate layers by the criterion (one pass over the
calibration data for distinctiveness, a forward and backward pass for Taylor, none for the weight
criteria), removes the lowest-scored kernels across the network until the step's share of the MACs
(``step_fraction`` of the original, clipped to what the target still needs) is saved, then checks the
metric on the validation data. A step that breaks the budget is undone and retried at half the size,
down to ``min_fraction``; then pruning stops. Removals go through Torch-Pruning's dependency graph,
so a kernel tied to a residual stream takes every coupled conv's channel with it: its MAC share
counts all of them, and every step records which convs it touched.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...analyses.distinctiveness import activation_stats
from ...core.cost import count_macs
from .rules import _accumulate_gradients, _importance
from .surgeon import Surgeon

__all__ = ["Shrinker", "kernel_ranking"]


def kernel_ranking(surgeon: Surgeon, layers: list[str], criterion: str, data, *, observe: dict[str, str],
                   center: str | None, gen: torch.Generator, batch_size: int, device,
                   output: str | int | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per layer, one score per current kernel: lower goes first.

    ``distinctiveness``: the angle to the nearest other kernel (a dead or degenerate kernel scores -1, and
    the weaker kernel of a pair a hair lower); ``random``: a seeded draw; the others: Torch-Pruning's
    group importance, normalized within the coupled group so that layers compare.
    """
    if criterion == "random":
        return {n: torch.rand(surgeon.module(n).out_channels, generator=gen) for n in layers}
    if criterion == "distinctiveness":
        stats = activation_stats(surgeon.model, data, layers, observe={n: observe[n] for n in layers},
                                 batch_size=batch_size, device=device, progress=False)  # fmt: skip
        out = {}
        for n, st in stats.items():
            ang, _ = st.angles(center)
            if center is not None:
                ang = torch.minimum(ang, 180.0 - ang)
            dead = torch.isnan(ang.diagonal())
            ang = torch.where(torch.isnan(ang), math.inf, ang)
            ang.fill_diagonal_(math.inf)
            near = torch.where(dead, torch.full_like(dead, -1.0, dtype=ang.dtype), ang.min(1).values)
            mean_norm = st.sums / st.n
            out[n] = (near + 1e-6 * mean_norm / mean_norm.max().clamp_min(1e-300)).cpu()
        return out
    imp = _importance(criterion)
    if criterion == "taylor":
        _accumulate_gradients(surgeon.model, data, batch_size, device, output)
    out = {n: imp(surgeon.group(n, list(range(surgeon.module(n).out_channels)))) for n in layers}
    if criterion == "taylor":
        surgeon.model.zero_grad(set_to_none=True)
    return {n: (s if s is not None else torch.zeros(surgeon.module(n).out_channels)).detach().float().cpu()
            for n, s in out.items()}  # fmt: skip


def mac_share(surgeon: Surgeon, layer: str, macs: dict[str, int]) -> tuple[float, list[str]]:
    """MACs one kernel of ``layer`` costs: its share of every conv whose output channel goes with it
    (the coupled ones included) and of every layer whose input channel goes; and those coupled convs."""
    tp, dg = surgeon.tp, surgeon.dg
    share, seen, coupled = 0.0, set(), []
    for dep, idxs in surgeon.group(layer, surgeon.aligned(layer, 0)):
        m = dep.target.module
        name = dg._module2name.get(m)
        if name is None or (name, dep.handler) in seen:
            continue
        seen.add((name, dep.handler))
        n = len(surgeon.aligned(layer, 0))
        conv = isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
        if conv and dg.is_out_channel_pruning_fn(dep.handler):
            share += macs.get(name, 0) * len(idxs) / m.out_channels / n
            if name != layer:
                coupled.append(name)
        elif dep.handler in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
            width = m.in_channels if conv else m.in_features
            share += macs.get(name, 0) * len(idxs) / width / n
    return share, coupled


class Shrinker:
    """A copy of a model being pruned step by step, which can undo its last step.

    Attributes:
        model, surgeon: the current model and its dependency graph. steps: one record per kept step.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, layers: list[str], macs0: int,
                 output: str | int | None = None) -> None:  # fmt: skip
        self.model, self.example, self.layers, self.macs0 = model, example, layers, macs0
        self.surgeon = Surgeon(model, example, output)
        self.steps: list[dict[str, Any]] = []

    def macs(self) -> int:
        return sum(count_macs(self.model, self.example).values())

    def _snapshot(self):
        return copy.deepcopy(self.model), copy.deepcopy(self.surgeon.original), list(self.surgeon.removals)

    def _restore(self, snap) -> None:
        self.model, original, removals = snap
        self.surgeon = Surgeon(self.model, self.example, self.surgeon.output)
        self.surgeon.original, self.surgeon.removals = original, removals

    def pick(self, scores: dict[str, torch.Tensor], budget: float) -> list[tuple[str, int]]:
        """The lowest-scored kernels (layer, current index) whose MAC shares add up to ``budget``,
        leaving every layer the kernels it keeps (:meth:`Surgeon.room`)."""
        macs = count_macs(self.model, self.example)
        prunable = [n for n in self.layers if n in scores and self.surgeon.can_remove(n)]
        shares = {n: mac_share(self.surgeon, n, macs)[0] for n in prunable}
        room = {n: self.surgeon.room(n) for n in prunable}
        cands = sorted((float(s), n, i) for n in prunable for i, s in enumerate(scores[n].tolist()))
        picks, saved, taken = [], 0.0, {n: set() for n in prunable}
        for _, n, i in cands:
            if saved >= budget:
                break
            if i in taken[n]:  # removed with an earlier pick (its partner in another group of a grouped conv)
                continue
            aligned = self.surgeon.aligned(n, i)
            if room[n] < len(aligned) or shares[n] <= 0:
                continue
            picks.append((n, i))
            taken[n].update(aligned)
            room[n] -= len(aligned)
            saved += shares[n] * len(aligned)
        return picks

    def remove(self, picks: list[tuple[str, int]]) -> dict[str, list[int]]:
        """Remove the picked kernels layer by layer (indices mapped through earlier coupled removals);
        returns the original indices removed per conv, coupled convs included."""
        s = self.surgeon
        wanted: dict[str, list[int]] = {}
        for n, i in picks:
            wanted.setdefault(n, []).append(s.original[n][i])
        removed: dict[str, list[int]] = {}
        for n, origs in wanted.items():
            now = {o: j for j, o in enumerate(s.original[n])}
            idxs = sorted({k for o in origs if o in now for k in s.aligned(n, now[o])})
            if idxs and len(idxs) <= s.room(n) and s.dg.check_pruning_group(s.group(n, idxs)):
                for conv, gone in s.remove(n, idxs).items():
                    removed.setdefault(conv, []).extend(gone)
        return removed

    def run(self, score: Callable[[Shrinker], dict[str, torch.Tensor]], check: Callable[[nn.Module], float],
            *, target: float | None, base: float, max_drop: float | None, step_fraction: float,
            min_fraction: float = 0.01, on_step: Callable[[nn.Module, int], None] | None = None) -> str:  # fmt: skip
        """Prune until the MACs fall to ``target`` (a fraction of ``macs0``) or the next step would drop
        ``check(model)`` more than ``max_drop`` below ``base``; returns why it stopped. ``on_step(model, macs)``
        follows every kept step."""
        fraction = step_fraction
        while True:
            now = self.macs()
            if target is not None and now <= target * self.macs0:
                return f"reached {now / self.macs0:.1%} of the original MACs (target {target:.0%})"
            budget = fraction * self.macs0 if target is None else min(fraction * self.macs0, now - target * self.macs0)
            snap = self._snapshot()
            picks = self.pick(score(self), budget)
            if not picks:
                return "no kernel can go: every candidate layer has one kernel left (or is coupled to one that has)"
            removed = self.remove(picks)
            value = check(self.model)
            if max_drop is not None and base - value > max_drop:
                self._restore(snap)
                if fraction / 2 >= min_fraction:
                    fraction /= 2
                    continue
                return (f"the next step ({len(picks)} kernels) would drop the validation metric by "
                        f"{base - value:.4f} > {max_drop:g}")  # fmt: skip
            macs = self.macs()
            self.steps.append({"kernels": len(picks), "removed": removed, "macs": macs, "val": value,
                               "fraction": fraction})  # fmt: skip
            if on_step is not None:
                on_step(self.model, macs)
