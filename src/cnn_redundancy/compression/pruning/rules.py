"""How each pruning step chooses and removes kernels: the distinctiveness rules and the importances.

- :func:`least_distinct`: one kernel of the least distinct pair of the network goes (the paper's).
- :func:`gedeon_harris`: near-duplicate pairs (angle under the similar threshold) are merged into
  the kept kernel; complementary pairs (over the complementary threshold, with centering) are
  removed, their mean contribution folded into the next layer's bias.
- :func:`by_importance`: the least important kernel of the network by ``random`` (seeded), ``l1``,
  ``l2``, ``fpgm`` or ``taylor`` (Torch-Pruning's importances, normalized within each coupled group
  so they compare across layers).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...core.batches import as_loader, batches, resolve_device
from ...core.device import placed
from ...core.metrics import select_output
from .importance import FPGMImportance
from .surgeon import Surgeon, trainable

__all__ = ["least_distinct", "gedeon_harris", "by_importance"]


def _pick_weaker(mean_norm: torch.Tensor, i: int, j: int, remove: str) -> tuple[int, int, str]:
    """``(removed, kept, why)`` of a pair."""
    if remove == "second":
        return max(i, j), min(i, j), "the higher index of the pair"
    if math.isclose(float(mean_norm[i]), float(mean_norm[j]), rel_tol=1e-9, abs_tol=1e-12):
        return max(i, j), min(i, j), "the higher index of the pair (equal mean activation norms)"
    return (*((i, j) if mean_norm[i] < mean_norm[j] else (j, i)), "the weaker of the pair (smaller mean activation norm)")


def least_distinct(surgeon: Surgeon, stats, center, remove) -> dict[str, Any]:
    """Remove one kernel of the least distinct pair of the network (a degenerate kernel first)."""
    best = None  # (angle, layer, removed, kept, reason)
    for layer, st in stats.items():
        if not surgeon.can_remove(layer):
            continue
        _, dead, _ = st.cosines(center)
        if bool(dead.any()):  # a kernel with a zero (centered) vector carries no information: it goes first
            d = int(dead.nonzero()[0])
            best = (-1.0, layer, d, None, "its activation vector is zero" + (" after centering" if center else ""))
            break
        pair = st.least_distinct(center)
        if pair is not None and (best is None or pair[0] < best[0]):
            a, i, j = pair
            r, kept, why = _pick_weaker(st.sums / st.n, i, j, remove)
            best = (a, layer, r, kept, why)
    if best is None:
        raise ValueError("No removable kernel pair left (every candidate layer has one kernel)")
    angle, layer, r, kept, why = best
    orig = surgeon.original[layer]
    entry = {"action": "remove", "layer": layer, "kernel": orig[r], "angle": None if angle < 0 else angle,
             "partner": None if kept is None else orig[kept], "reason": why}
    entry["removed"] = surgeon.remove(layer, surgeon.aligned(layer, r))
    return entry


def _fold_mean(surgeon: Surgeon, layer: str, idx: int, value: float) -> list[str]:
    """Add channel ``idx``'s constant contribution (mean activation ``value``) to its consumers' biases."""
    notes = []
    for m, ix in surgeon.consumers(layer, idx):
        w = m.weight.data
        if m.bias is None:
            notes.append(f"{surgeon.dg._module2name[m]} has no bias: constant part dropped")
            continue
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            notes.append(f"{surgeon.dg._module2name[m]} is grouped: constant part dropped")
            continue
        if isinstance(m, nn.ConvTranspose2d):  # a constant input reaches each output through a varying set of taps
            notes.append(f"{surgeon.dg._module2name[m]} is a transposed conv: constant part dropped")
            continue
        contrib = w[:, ix].reshape(w.shape[0], -1).sum(1) * value
        m.bias.data += contrib.to(m.bias.dtype)
    return notes


def _merge(surgeon: Surgeon, layer: str, r: int, k: int, scale: float) -> list[str]:
    """Add the outgoing weights of kernel ``r`` (times ``scale``) to those of kernel ``k``."""
    notes = []
    kept = {id(m): ix for m, ix in surgeon.consumers(layer, k)}
    for m, ix in surgeon.consumers(layer, r):
        name = surgeon.dg._module2name[m]
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.groups != 1:
            notes.append(f"{name} is grouped: not merged")
            continue
        ik = kept.get(id(m))
        if ik is None or len(ik) != len(ix):
            notes.append(f"{name}: no matching input for the kept kernel: not merged")
            continue
        w = m.weight.data.transpose(0, 1) if isinstance(m, nn.Conv2d | nn.Linear) else m.weight.data  # [in, ...] view
        w[ik] += scale * w[ix]  # a transposed conv's weight is [in, out / groups, kh, kw] already
    return notes


def gedeon_harris(surgeon: Surgeon, stats, center, thresholds, merge_scale) -> dict[str, Any] | None:
    """Gedeon and Harris' rules: merge the most similar pair, or remove the most complementary one
    (a constant kernel first, its mean folded into the next layer's bias); ``None`` when no pair qualifies."""
    lo, hi = thresholds
    best = None  # (score, action, layer, i, j, angle)
    for layer, st in stats.items():
        if surgeon.aligned(layer, 0) != [0]:
            continue  # grouped convs: merging would have to pair whole groups; left to least-distinct
        ang, _ = st.angles(center)
        k = ang.shape[0]
        for d in torch.isnan(ang.diagonal()).nonzero().flatten().tolist():
            if (best is None or best[0] > -1) and surgeon.can_remove(layer):
                best = (-1.0, "remove-constant", layer, d, None, None)
        for i in range(k):
            for j in range(i + 1, k):
                a = float(ang[i, j])
                if math.isnan(a):
                    continue
                if a < lo:
                    cand = (a, "merge", layer, i, j, a)
                elif a > hi and k > 2:
                    cand = (180.0 - a, "remove-pair", layer, i, j, a)
                else:
                    continue
                if best is None or cand[0] < best[0]:
                    best = cand
    if best is None:
        return None
    _, action, layer, i, j, angle = best
    st = stats[layer]
    mean_norm = st.sums / st.n
    mean_act = st.act_sum / st.n
    orig = surgeon.original[layer]
    entry: dict[str, Any] = {"action": action, "layer": layer, "angle": angle}
    if action == "remove-constant":
        entry.update(kernel=orig[i], partner=None, reason="constant activation: mean folded into the next layer's bias",
                     notes=_fold_mean(surgeon, layer, i, float(mean_act[i])))
        entry["removed"] = surgeon.remove(layer, [i])
    elif action == "merge":
        r, k, _ = _pick_weaker(mean_norm, i, j, "weaker")
        scale = float(mean_norm[r] / mean_norm[k]) if merge_scale and mean_norm[k] > 0 else 1.0
        entry.update(kernel=orig[r], partner=orig[k], scale=scale,
                     reason=f"angle < {lo}: the weaker kernel removed, its outgoing weights (x{scale:.4g}) added to the kept one's",
                     notes=_merge(surgeon, layer, r, k, scale))
        entry["removed"] = surgeon.remove(layer, [r])
    else:
        if not surgeon.dg.check_pruning_group(surgeon.group(layer, [i, j])):
            return None
        entry.update(kernel=orig[i], partner=orig[j],
                     reason=f"angle > {hi}: complementary pair removed, mean contributions folded into the next bias",
                     notes=_fold_mean(surgeon, layer, i, float(mean_act[i])) + _fold_mean(surgeon, layer, j, float(mean_act[j])))
        entry["removed"] = surgeon.remove(layer, [i, j])
    return entry


def _importance(criterion: str):
    import torch_pruning as tp

    return {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "fpgm": lambda: FPGMImportance(p=2),  # Torch-Pruning's ranking; its own raises on grouped convs
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
    }[criterion]()


def _accumulate_gradients(model: nn.Module, data, batch_size: int, device, output: str | int | None = None) -> None:
    """Summed loss gradients over the data, computed on ``device``; left in ``.grad`` where the model lives.
    ``output``: the key or index of the model output the loss reads (a model returning a dict or tuple)."""
    model.zero_grad(set_to_none=True)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    dev = resolve_device(device, model)
    # frozen layers get a gradient too: every kernel is scored
    with torch.enable_grad(), trainable(model), placed(model, dev, keep=True):
        for b in batches(as_loader(data, batch_size), dev, model):
            loss_fn(select_output(model(b.x), output, "the Taylor gradients"), b.y).backward()


def by_importance(surgeon: Surgeon, prunable: list[str], criterion: str, data, gen, batch_size, device=None,
                  output: str | int | None = None) -> dict[str, Any]:  # fmt: skip
    """Remove the least important kernel of the network by ``criterion`` (random: a seeded draw)."""
    if criterion == "random":
        cands = [(n, i) for n in prunable for i in range(surgeon.module(n).out_channels)]
        layer, idx = cands[int(torch.randint(len(cands), (1,), generator=gen))]
        entry = {"action": "remove", "layer": layer, "kernel": surgeon.original[layer][idx], "reason": "drawn at random"}
    else:
        imp = _importance(criterion)
        if criterion == "taylor":
            _accumulate_gradients(surgeon.model, data, batch_size, device, output)
        best = None
        for n in prunable:
            k = surgeon.module(n).out_channels
            scores = imp(surgeon.group(n, list(range(k))))
            if scores is None:
                continue
            order = torch.argsort(scores, stable=True).tolist()
            for i in order:
                if best is not None and float(scores[i]) >= best[0]:
                    break
                if surgeon.can_remove(n):
                    best = (float(scores[i]), n, i)
                    break
        if criterion == "taylor":
            surgeon.model.zero_grad(set_to_none=True)
        if best is None:
            raise ValueError(f"criterion {criterion!r} scored no prunable layer")
        score, layer, idx = best
        entry = {"action": "remove", "layer": layer, "kernel": surgeon.original[layer][idx], "score": score,
                 "reason": f"lowest {criterion} importance in the network (normalized within its group)"}
    entry["removed"] = surgeon.remove(layer, surgeon.aligned(layer, idx))
    return entry
