"""The stages of ``compress``, cheapest first: dead kernels, merges of near-duplicates, trivial residual
blocks. Each works on the model being compressed (a copy), checks itself, and says what it did.

- **dead**: kernels whose activation (after their nonlinearity) is zero on every calibration image
  are removed with every channel they are coupled to; the model's output must stay the same (checked
  on a calibration batch, to 1e-5), else the stage is undone. A dead kernel coupled to a residual
  stream is left (its stream channel is not dead) and counted.
- **merge**: pairs of kernels of a layer whose mean-centered activation vectors are within
  ``merge_angle`` degrees (Gedeon and Harris' rule) are merged: the weaker one's outgoing weights,
  scaled by the ratio of mean activation norms, are added to the kept one's, and it is removed.
  Layer by layer, each layer's merges are kept only if the validation metric stays within budget.
- **blocks**: residual branches whose removal keeps the validation metric within the remaining
  budget are removed for real (:func:`cnn_redundancy.remove_trivial`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..analyses.dead import dead_kernels
from ..analyses.distinctiveness import activation_stats
from ..core.batches import as_loader
from ..core.metrics import select_output
from ..core.structure import residual_blocks
from .pruning.rules import _merge, _pick_weaker
from .pruning.schedule import Shrinker, mac_share

__all__ = ["remove_dead", "merge_duplicates"]


def remove_dead(sh: Shrinker, calib, observe: dict[str, str], *, batch_size: int, device,
                output: str | int | None = None) -> dict[str, Any]:  # fmt: skip
    """Remove every uncoupled dead kernel; the output (``output``: the key or index of the one the metric reads,
    for a model returning a dict or tuple) must not change."""
    dead = dead_kernels(sh.model, calib, sh.layers, observe=observe, batch_size=batch_size, device=device,
                        progress=False).dead  # fmt: skip
    x = next(iter(as_loader(calib, min(64, len(calib)))))[0].to(sh.example.device)
    macs = _macs(sh)
    picks, coupled = [], []
    for layer in sh.layers:
        if not dead.get(layer) or observe[layer] == layer:  # no activation after it: a zero output is not a zero channel
            continue
        if mac_share(sh.surgeon, layer, macs)[1]:
            coupled += [f"{layer}:{i}" for i in dead[layer]]
            continue
        picks += [(layer, i) for i in dead[layer][:sh.surgeon.room(layer) // len(sh.surgeon.aligned(layer, 0))]]
    if not picks:
        return {"stage": "dead", "kernels": 0, "note": "no uncoupled dead kernel" + _coupled_note(coupled)}
    with torch.no_grad():
        before = select_output(sh.model(x), output, "the dead-kernel check")
    snap = sh._snapshot()
    removed = sh.remove(picks)
    with torch.no_grad():
        after = select_output(sh.model(x), output, "the dead-kernel check")
    change = float((after - before).abs().max()) if after.shape == before.shape else math.inf
    if change > 1e-5 * max(1.0, float(before.abs().max())):
        sh._restore(snap)
        return {"stage": "dead", "kernels": 0, "note": f"undone: the output changed by {change:.2e}"}
    return {"stage": "dead", "kernels": len(picks), "removed": removed, "output_change": change,
            "note": f"output unchanged (largest change {change:.1e} on a calibration batch)" + _coupled_note(coupled)}


def _macs(sh: Shrinker) -> dict[str, int]:
    from ..core.cost import count_macs

    return count_macs(sh.model, sh.example)


def _coupled_note(coupled: list[str]) -> str:
    return f"; {len(coupled)} dead kernels tied to a residual stream left in place" if coupled else ""


def _pairs(stats, angle: float) -> dict[str, list[tuple[int, int, float]]]:
    """Per layer, disjoint pairs (removed, kept, scale) closer than ``angle`` (mean-centered), closest first."""
    out = {}
    for layer, st in stats.items():
        ang, _ = st.angles("mean")
        ang = torch.minimum(ang, 180.0 - ang)
        k = ang.shape[0]
        cands = sorted((float(ang[i, j]), i, j) for i in range(k) for j in range(i + 1, k)
                       if not math.isnan(float(ang[i, j])) and float(ang[i, j]) < angle)  # fmt: skip
        used, pairs = set(), []
        norm = st.sums / st.n
        for _, i, j in cands:
            if i in used or j in used or len(used) + 2 > k:
                continue
            r, kept, _ = _pick_weaker(norm, i, j, "weaker")
            pairs.append((r, kept, float(norm[r] / norm[kept]) if norm[kept] > 0 else 1.0))
            used |= {i, j}
        if pairs:
            out[layer] = pairs
    return out


def merge_duplicates(sh: Shrinker, calib, observe: dict[str, str], check, *, base: float, budget: float | None,
                     angle: float, batch_size: int, device) -> dict[str, Any]:  # fmt: skip
    """Merge near-duplicate kernels layer by layer, keeping a layer's merges only within the budget."""
    macs = _macs(sh)
    layers = [n for n in sh.layers if sh.surgeon.aligned(n, 0) == [0] and not mac_share(sh.surgeon, n, macs)[1]
              and sh.surgeon.room(n) > 0]
    if not layers:
        return {"stage": "merge", "kernels": 0, "note": "no uncoupled, ungrouped layer to merge in"}
    stats = activation_stats(sh.model, calib, layers, observe={n: observe[n] for n in layers}, batch_size=batch_size,
                             device=device, progress=False)  # fmt: skip
    merged, removed, undone = 0, {}, []
    for layer, pairs in _pairs(stats, angle).items():
        snap = sh._snapshot()
        s, here = sh.surgeon, {}
        pairs = [(s.original[layer][r], s.original[layer][k], scale) for r, k, scale in pairs]
        for r, kept, scale in pairs:  # original indices: map to the current ones after each removal
            now = {o: j for j, o in enumerate(s.original[layer])}
            _merge(s, layer, now[r], now[kept], scale)
            for conv, gone in s.remove(layer, [now[r]]).items():
                here.setdefault(conv, []).extend(gone)
        value = check(sh.model)
        if budget is not None and base - value > budget:
            sh._restore(snap)
            undone.append(layer)
            continue
        for conv, gone in here.items():
            removed.setdefault(conv, []).extend(gone)
        merged += len(pairs)
    note = f"{merged} merged (mean-centered angle < {angle:g} degrees)"
    if undone:
        note += f"; merges in {', '.join(undone)} undone (validation metric out of budget)"
    return {"stage": "merge", "kernels": merged, "removed": removed, "note": note}


def blocks_in(model: nn.Module) -> list[str]:
    """Residual blocks a branch can be removed from for real (torchvision's convention)."""
    return residual_blocks(model)
