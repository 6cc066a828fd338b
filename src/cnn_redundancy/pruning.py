"""Progressive kernel pruning with physical removal through Torch-Pruning's ``DependencyGraph``.

:func:`prune` copies the model, builds the dependency graph once, and removes kernels step by
step with one criterion:

- ``"distinctiveness"`` (the paper's): ``rule="least-distinct"`` removes one kernel of the least
  distinct pair in the whole network, recomputing distinctiveness after every removal;
  ``rule="gedeon-harris"`` merges near-duplicate pairs (angle < 15 degrees) into the kept kernel
  and removes complementary pairs (angle > 165 degrees, with centering), folding their mean
  contribution into the next layer's bias.
- ``"random"`` (seeded), ``"l1"``, ``"l2"``, ``"fpgm"``, ``"taylor"`` (Torch-Pruning's importances,
  normalized within each coupled group so they compare across layers): the least important
  kernel of the network goes.

The dependency graph keeps residual, grouped and depthwise couplings consistent; in a grouped
(non-depthwise) conv one kernel is removed at the same position of every group. Every removal is
recorded as a checkpoint *surgery* step, so pruned models save and load with
:func:`cnn_redundancy.save_checkpoint` / :func:`cnn_redundancy.load_checkpoint`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import register_surgery
from .cost import count_macs_params
from .data import as_loader
from .distinctiveness import CENTERINGS, ObserveSpec, _resolve_observe, activation_stats
from .hooks import preserved
from .layers import LayerSpec, resolve_layers
from .models import model_spec
from .pruning_importance import DistinctivenessImportance, SeededRandomImportance
from .results import Result, make_meta

__all__ = [
    "CRITERIA",
    "RULES",
    "PruneResult",
    "prune",
    "DistinctivenessImportance",
    "SeededRandomImportance",
    "count_macs_params",
]

CRITERIA = ("distinctiveness", "random", "l1", "l2", "fpgm", "taylor")
RULES = ("least-distinct", "gedeon-harris")
SURGERY_KIND = "prune-channels"


def _example(data, example_inputs: torch.Tensor | None) -> torch.Tensor:
    if example_inputs is not None:
        return example_inputs
    batch = next(iter(as_loader(data, 1)))
    x = batch[0] if isinstance(batch, list | tuple) else batch
    return x[:1]


class Surgeon:
    """A model, its dependency graph (built once) and the bookkeeping of removed kernels.

    Attributes:
        model: the model being pruned (changed in place).
        original: ``conv name -> original index`` of each of its current kernels.
        removals: ``[[layer, [indices]], ...]`` in the order applied (indices at that time).
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor) -> None:
        import torch_pruning as tp

        self.tp = tp
        self.model = model
        with torch.enable_grad():
            self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
        self.original = {n: list(range(m.out_channels)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
        self.removals: list[list[Any]] = []
        self._groups: dict[str, int] = {}
        self._removable: dict[str, bool] = {}

    def module(self, layer: str) -> nn.Conv2d:
        return self.model.get_submodule(layer)  # type: ignore[return-value]

    def group(self, layer: str, idxs: list[int]):
        return self.dg.get_pruning_group(self.module(layer), self.tp.prune_conv_out_channels, idxs)

    def _aligned_groups(self, layer: str) -> int:
        """Number of channel groups the layer's kernels must be removed in (grouped convs); cached."""
        if layer not in self._groups:
            g = 1
            for dep, _ in self.group(layer, [0]):
                m = dep.target.module
                if isinstance(m, nn.Conv2d) and 1 < m.groups < m.out_channels:
                    g = g * m.groups // math.gcd(g, m.groups)
            self._groups[layer] = g
        return self._groups[layer]

    def aligned(self, layer: str, idx: int) -> list[int]:
        """``idx`` and its partners at the same position of every group of a grouped conv."""
        k = self.module(layer).out_channels
        g = self._aligned_groups(layer)
        if g == 1:
            return [idx]
        if k % g:
            raise ValueError(f"{layer!r} has {k} kernels, not a multiple of its {g} coupled conv groups")
        per = k // g
        return [idx % per + q * per for q in range(g)]

    def can_remove(self, layer: str) -> bool:
        """Whether one kernel (with its aligned partners) can go, leaving every coupled layer a kernel; cached until a removal."""
        if layer not in self._removable:
            m = self.module(layer)
            idxs = self.aligned(layer, 0)
            self._removable[layer] = m.out_channels > len(idxs) and bool(self.dg.check_pruning_group(self.group(layer, idxs)))
        return self._removable[layer]

    def remove(self, layer: str, idxs: list[int]) -> dict[str, list[int]]:
        """Remove kernels ``idxs`` of ``layer`` and every coupled channel; returns original indices removed per conv."""
        group = self.group(layer, sorted(idxs))
        removed: dict[str, list[int]] = {}
        name_of = self.dg._module2name
        for dep, dep_idxs in group:
            m = dep.target.module
            depthwise = isinstance(m, nn.Conv2d) and m.groups == m.out_channels > 1
            if isinstance(m, nn.Conv2d) and (depthwise or self.dg.is_out_channel_pruning_fn(dep.handler)):
                n = name_of[m]
                if n in removed:
                    continue
                removed[n] = [self.original[n][i] for i in sorted(dep_idxs)]
                drop = set(dep_idxs)
                self.original[n] = [o for i, o in enumerate(self.original[n]) if i not in drop]
        group.prune()
        self._removable.clear()
        self.removals.append([layer, sorted(int(i) for i in idxs)])
        return removed

    def consumers(self, layer: str, idx: int) -> list[tuple[nn.Module, list[int]]]:
        """Modules reading channel ``idx`` of ``layer`` (conv / linear inputs) with the input indices it maps to."""
        fns = (self.tp.prune_conv_in_channels, self.tp.prune_linear_in_channels)
        return [(dep.target.module, sorted(ix)) for dep, ix in self.group(layer, [idx]) if dep.handler in fns]


@register_surgery(SURGERY_KIND)
def _replay(model: nn.Module, step: dict[str, Any]) -> nn.Module:
    """Repeat recorded kernel removals on a freshly built model (used by ``load_checkpoint``)."""
    surgeon = Surgeon(model, torch.zeros(step["input_shape"]))
    for layer, idxs in step["removals"]:
        surgeon.group(layer, idxs).prune()
    return model


@dataclasses.dataclass
class PruneResult(Result):
    """A pruned copy of a model and what was removed, step by step.

    Attributes:
        model: the pruned copy (not saved in the JSON; save it with ``save_checkpoint``).
        criterion, rule: how kernels were chosen. layers: candidate conv layers.
        history: one dict per step: ``action`` (``remove``, ``merge``, ``remove-pair``,
            ``remove-constant``), ``layer``, ``kernel`` (original index), ``removed``
            (conv -> original indices, coupled layers included), ``angle``/``partner`` where a pair
            decided it, ``reason``, and (``track_macs=True``) the ``macs``/``params`` after the step.
        kernels_before, kernels_after: conv -> number of kernels.
        macs_before, macs_after, params_before, params_after: counts for the example input.
        stopped: why pruning stopped before ``steps`` (empty when it did not).
    """

    criterion: str = ""
    rule: str = ""
    layers: list[str] = dataclasses.field(default_factory=list)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    kernels_before: dict[str, int] = dataclasses.field(default_factory=dict)
    kernels_after: dict[str, int] = dataclasses.field(default_factory=dict)
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0
    stopped: str = ""
    model: Any = dataclasses.field(default=None, metadata={"skip": True}, repr=False, compare=False)
    kind = "prune"

    def plot(self):
        """Kernels per layer before and after, and MACs after each step."""
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
        names = list(self.kernels_before)
        x = range(len(names))
        ax1.bar([i - 0.2 for i in x], [self.kernels_before[n] for n in names], 0.4, label="before")
        ax1.bar([i + 0.2 for i in x], [self.kernels_after[n] for n in names], 0.4, label="after")
        ax1.set_xticks(list(x), names, rotation=60, fontsize=7)
        ax1.set_ylabel("kernels")
        ax1.legend()
        steps = [h for h in self.history if "macs" in h]
        ax2.plot([0] + [h["step"] for h in steps] + [len(self.history)],
                 [self.macs_before] + [h["macs"] for h in steps] + [self.macs_after], "o-")
        ax2.set_xlabel("step")
        ax2.set_ylabel("MACs")
        ax2.set_title(f"{self.criterion} / {self.rule}")
        fig.tight_layout()
        return fig


def _kernels(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _check_args(criterion: str, rule: str, steps: int, center: str | None, thresholds: tuple[float, float]) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"Unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if rule not in RULES:
        raise ValueError(f"Unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, not {steps!r}")
    if center not in CENTERINGS:
        raise ValueError(f"center must be None, 'mean' or 'minmax', not {center!r}")
    lo, hi = thresholds
    if not 0 <= lo < hi <= 180:
        raise ValueError(f"thresholds must be (similar, complementary) with 0 <= similar < complementary <= 180, not {thresholds}")


def prune(
    model: nn.Module,
    data: Dataset | DataLoader,
    *,
    criterion: str = "distinctiveness",
    steps: int = 1,
    rule: str = "least-distinct",
    layers: LayerSpec = None,
    example_inputs: torch.Tensor | None = None,
    seed: int = 0,
    center: str | None = None,
    observe: ObserveSpec = None,
    thresholds: tuple[float, float] = (15.0, 165.0),
    remove: str = "weaker",
    merge_scale: bool = True,
    batch_size: int = 256,
    callback: Callable[[dict[str, Any], nn.Module], bool | None] | None = None,
    track_macs: bool = False,
    progress: bool | None = None,
) -> PruneResult:
    """Progressively remove ``steps`` kernels; returns a physically smaller copy and its history.

    Args:
        model: the trained network (never modified).
        data: data for the activation vectors (``distinctiveness``) and gradients (``taylor``).
        criterion: ``"distinctiveness"``, ``"random"``, ``"l1"``, ``"l2"``, ``"fpgm"`` or ``"taylor"``.
        steps: kernels to remove (``gedeon-harris``: actions, each removing one or two kernels; it
            stops early when no pair passes the thresholds).
        rule: for ``distinctiveness``: ``"least-distinct"`` (the paper) or ``"gedeon-harris"``.
        layers: candidate conv layers (names/globs/modules); default every ``nn.Conv2d``.
        example_inputs: one input batch for tracing; default the first sample of ``data``.
        seed: seed of ``random``.
        center: centering of the activation vectors (see :func:`cnn_redundancy.distinctiveness`).
        observe: activation module per layer (default the activation after the conv).
        thresholds: ``(similar, complementary)`` angles in degrees for ``gedeon-harris``.
        remove: which kernel of the least distinct pair goes: ``"weaker"`` (smaller mean activation
            norm, so the network loses the smaller signal; ties: the higher index) or ``"second"``
            (the higher index).
        merge_scale: ``gedeon-harris`` merge adds the removed kernel's outgoing weights scaled by the
            ratio of mean activation norms (1 for exact duplicates); ``False``: plain addition.
        callback: called as ``callback(entry, pruned_model)`` after every step (e.g. to evaluate or
            fine-tune the pruned model in place); returning ``True`` stops pruning.
        track_macs: count MACs and parameters after every step (``entry["macs"]``, ``entry["params"]``);
            otherwise only before and after (counting copies the model: slow on large models).

    Raises:
        ValueError: unknown criterion/rule, more steps than removable kernels, no prunable layer.

    Example:
        >>> from cnn_redundancy.testing import duplicated_kernels_net, random_images
        >>> r = prune(duplicated_kernels_net(), random_images(32), steps=1)
        >>> r.history[0]["layer"], r.model.conv1.out_channels
        ('conv1', 3)
    """
    _check_args(criterion, rule, steps, center, thresholds)
    if remove not in ("weaker", "second"):
        raise ValueError(f"remove must be 'weaker' or 'second', not {remove!r}")
    with preserved(model):
        names = resolve_layers(model, layers)
        obs = _resolve_observe(model, names, observe) if criterion == "distinctiveness" else {}
        x = _example(data, example_inputs)
        pruned = copy.deepcopy(model)
    surgeon = Surgeon(pruned, x)
    pruned.eval()
    removable = sum(max(0, m.out_channels - 1) for n, m in pruned.named_modules() if n in names)
    if steps and removable == 0:
        raise ValueError(f"Nothing to prune: each of {', '.join(names)} has one kernel left")
    if steps > removable:
        raise ValueError(f"steps={steps} but the layers {', '.join(names)} have only {removable} removable kernels "
                         "(each layer keeps at least one)")
    if steps and not any(surgeon.can_remove(n) for n in names):
        raise ValueError(f"No kernel can be removed from {', '.join(names)}: every layer has one kernel left "
                         "(or is coupled to one that has)")
    macs0, params0 = count_macs_params(pruned, x)
    res = PruneResult(meta=make_meta("prune", {"criterion": criterion, "rule": rule, "steps": steps, "layers": names,
                                               "center": center, "thresholds": list(thresholds), "remove": remove,
                                               "merge_scale": merge_scale, "example_shape": list(x.shape)}, seed),
                      criterion=criterion, rule=rule, layers=names, kernels_before=_kernels(pruned),
                      macs_before=macs0, params_before=params0)
    gen = torch.Generator().manual_seed(seed)
    from .progress import progress_bar

    bar = progress_bar(steps, f"prune ({criterion})", enabled=progress, unit="step")
    try:
        for step in range(1, steps + 1):
            prunable = [n for n in names if surgeon.can_remove(n)]
            if not prunable:
                res.stopped = f"after {step - 1} steps no layer can lose another kernel"
                break
            if criterion == "distinctiveness":
                stats, _ = activation_stats(pruned, data, prunable, observe={n: obs[n] for n in prunable},
                                            means=rule == "gedeon-harris", batch_size=batch_size, progress=False)
                if rule == "least-distinct":
                    entry = _least_distinct(surgeon, stats, center, remove)
                else:
                    entry = _gedeon_harris(surgeon, stats, center, thresholds, merge_scale)
            else:
                entry = _by_importance(surgeon, prunable, criterion, data, gen, batch_size)
            if entry is None:
                res.stopped = f"after {step - 1} steps no pair is under {thresholds[0]} or over {thresholds[1]} degrees"
                break
            entry["step"] = step
            if track_macs:
                entry["macs"], entry["params"] = count_macs_params(pruned, x)
            res.history.append(entry)
            bar.update(1)
            if callback is not None and callback(entry, pruned):
                res.stopped = f"stopped by the callback after step {step}"
                break
    finally:
        bar.close()
    res.kernels_after = _kernels(pruned)
    res.macs_after, res.params_after = count_macs_params(pruned, x)
    spec = model_spec(pruned)
    if spec is not None and surgeon.removals:
        spec["surgery"] = [*spec.get("surgery", []),
                           {"kind": SURGERY_KIND, "input_shape": list(x.shape), "removals": surgeon.removals}]
    res.model = pruned.eval()
    return res


def _pick_weaker(mean_norm: torch.Tensor, i: int, j: int, remove: str) -> tuple[int, int]:
    """``(removed, kept)`` of a pair."""
    if remove == "second" or math.isclose(float(mean_norm[i]), float(mean_norm[j]), rel_tol=1e-9, abs_tol=1e-12):
        return max(i, j), min(i, j)
    return (i, j) if mean_norm[i] < mean_norm[j] else (j, i)


def _least_distinct(surgeon: Surgeon, stats, center, remove) -> dict[str, Any]:
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
            r, kept = _pick_weaker(st.sums / st.n, i, j, remove)
            why = ("the weaker of the pair (smaller mean activation norm)" if remove == "weaker" and r != max(i, j)
                   else "the higher index of the pair" + (" (equal mean activation norms)" if remove == "weaker" else ""))
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
        contrib = w[:, ix].reshape(w.shape[0], -1).sum(1) * value
        m.bias.data += contrib.to(m.bias.dtype)
    return notes


def _merge(surgeon: Surgeon, layer: str, r: int, k: int, scale: float) -> list[str]:
    """Add the outgoing weights of kernel ``r`` (times ``scale``) to those of kernel ``k``."""
    notes = []
    kept = {id(m): ix for m, ix in surgeon.consumers(layer, k)}
    for m, ix in surgeon.consumers(layer, r):
        name = surgeon.dg._module2name[m]
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            notes.append(f"{name} is grouped: not merged")
            continue
        ik = kept.get(id(m))
        if ik is None or len(ik) != len(ix):
            notes.append(f"{name}: no matching input for the kept kernel: not merged")
            continue
        m.weight.data[:, ik] += scale * m.weight.data[:, ix]
    return notes


def _gedeon_harris(surgeon: Surgeon, stats, center, thresholds, merge_scale) -> dict[str, Any] | None:
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
        r, k = _pick_weaker(mean_norm, i, j, "weaker")
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
        "fpgm": lambda: tp.importance.FPGMImportance(p=2),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
    }[criterion]()


def _accumulate_gradients(model: nn.Module, data, batch_size: int) -> None:
    model.zero_grad(set_to_none=True)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    with torch.enable_grad():
        for batch in as_loader(data, batch_size):
            x, y = batch[0], batch[1]
            loss_fn(model(x), y).backward()


def _by_importance(surgeon: Surgeon, prunable: list[str], criterion: str, data, gen, batch_size) -> dict[str, Any]:
    if criterion == "random":
        cands = [(n, i) for n in prunable for i in range(surgeon.module(n).out_channels)]
        layer, idx = cands[int(torch.randint(len(cands), (1,), generator=gen))]
        entry = {"action": "remove", "layer": layer, "kernel": surgeon.original[layer][idx], "reason": "drawn at random"}
    else:
        imp = _importance(criterion)
        if criterion == "taylor":
            _accumulate_gradients(surgeon.model, data, batch_size)
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
