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

The dependency graph (:mod:`.surgeon`) keeps residual, grouped and depthwise couplings consistent;
the rules live in :mod:`.rules`. Every removal is recorded as a checkpoint *surgery* step, so pruned
models save and load with :func:`cnn_redundancy.save_checkpoint` / :func:`cnn_redundancy.load_checkpoint`.
"""


from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...analyses.distinctiveness import CENTERINGS, activation_stats
from ...core.batches import explained, first_input
from ...core.cost import count_macs_params
from ...core.hooks import copy_of
from ...core.layers import LayerSpec, called_by_default, resolve_layers
from ...core.metrics import output_param
from ...core.observe import ObserveSpec, resolve_observe
from ...core.progress import progress_bar
from ...core.results import Partials, Result, make_meta
from ...models import append_surgery
from .importance import DistinctivenessImportance, FPGMImportance, SeededRandomImportance
from .rules import by_importance, gedeon_harris, least_distinct
from .surgeon import SURGERY_KIND, Surgeon, kernels

__all__ = [
    "CRITERIA",
    "RULES",
    "PruneResult",
    "prune",
    "DistinctivenessImportance",
    "FPGMImportance",
    "SeededRandomImportance",
]

CRITERIA = ("distinctiveness", "random", "l1", "l2", "fpgm", "taylor")
RULES = ("least-distinct", "gedeon-harris")


def _check_removable(surgeon: Surgeon, names: list[str], steps: int) -> None:
    removable = sum(surgeon.room(n) // len(surgeon.aligned(n, 0)) for n in names)  # steps: one kernel (or aligned set) each
    keeps = ("each layer keeps one kernel, a grouped conv two per group, and a conv whose kernels are the model's "
             "output channels all of them")
    if steps and removable == 0:
        raise ValueError(f"Nothing to prune in {', '.join(names)}: {keeps}")
    if steps > removable:
        raise ValueError(f"steps={steps} but the layers {', '.join(names)} have only {removable} removable kernels "
                         f"(or sets of kernels, one per group; {keeps})")
    if steps and not any(surgeon.can_remove(n) for n in names):
        raise ValueError(f"No kernel can be removed from {', '.join(names)}: every layer has one kernel left "
                         "(or is coupled to one that has)")


@dataclasses.dataclass(eq=False)
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
    example_input: torch.Tensor | None = None,
    seed: int = 0,
    center: str | None = None,
    observe: ObserveSpec = None,
    thresholds: tuple[float, float] = (15.0, 165.0),
    remove: str = "weaker",
    merge_scale: bool = True,
    batch_size: int = 256,
    callback: Callable[[dict[str, Any], nn.Module], bool | None] | None = None,
    track_macs: bool = False,
    output: str | int | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    partial: str | os.PathLike | None = None,
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
        example_input: one input batch for tracing; default the first sample of ``data``.
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
            otherwise only before and after.
        output: for a model returning a dict or tuple, the key or index of the output the ``taylor``
            gradients read (the class logits).
        device: where the activation vectors and gradients are computed (default: the model's device).
        partial: a JSON path rewritten with the steps done so far (after a step when 30 s of work
            have passed since the last write, on an error or interrupt, and at the end).

    Layers frozen with ``requires_grad=False`` are pruned like the others and stay frozen.

    Raises:
        ValueError: unknown criterion/rule, more steps than removable kernels, no prunable layer, a
            model that cannot be deep-copied.

    Example:
        >>> from cnn_redundancy.testing import duplicated_kernels_net, random_images
        >>> r = prune(duplicated_kernels_net(), random_images(32), steps=1)
        >>> r.history[0]["layer"], r.model.conv1.out_channels
        ('conv1', 3)
    """
    _check_args(criterion, rule, steps, center, thresholds)
    if remove not in ("weaker", "second"):
        raise ValueError(f"remove must be 'weaker' or 'second', not {remove!r}")
    names = resolve_layers(model, layers)
    x = example_input if example_input is not None else first_input(data, model)
    names, not_called = called_by_default(model, names, layers, x)  # heads run in training only: kept as they are
    obs = resolve_observe(model, names, observe) if criterion == "distinctiveness" else {}
    pruned = copy_of(model, "pruning")
    with explained(model, x):
        surgeon = Surgeon(pruned, x, output)
    pruned.eval()
    _check_removable(surgeon, names, steps)
    macs0, params0 = count_macs_params(pruned, x)
    res = PruneResult(meta=make_meta("prune", {"criterion": criterion, "rule": rule, "steps": steps, "layers": names,
                                               "center": center, "thresholds": list(thresholds), "remove": remove,
                                               "merge_scale": merge_scale, "example_shape": list(x.shape),
                                               **output_param(output)}, seed),
                      criterion=criterion, rule=rule, layers=names, kernels_before=kernels(pruned),
                      macs_before=macs0, params_before=params0)
    choose = _chooser(surgeon, data, criterion, rule, obs, center, remove, thresholds, merge_scale, batch_size,
                      device, seed, output)  # fmt: skip
    res.meta["complete"] = False
    if not_called:
        res.meta["not_called"] = not_called
    if surgeon.folded:
        res.meta["folded"] = surgeon.folded
    outputs = surgeon.output_layers(names)
    if outputs:
        res.meta["output_layers"] = outputs
    with Partials((lambda: res.save(partial)) if partial is not None else None) as partials:
        partials.started = True
        with progress_bar(steps, f"prune ({criterion})", enabled=progress, unit="step") as bar:
            for step in range(1, steps + 1):
                if not _step(res, surgeon, names, choose, step, thresholds, track_macs, x):
                    break
                bar.update(1)
                partials.maybe()
                if callback is not None and callback(res.history[-1], pruned):
                    res.stopped = f"stopped by the callback after step {step}"
                    break
        _finish(res, surgeon, x)
    return res


def _step(res: PruneResult, surgeon: Surgeon, names: list[str], choose, step: int, thresholds, track_macs: bool,
          x: torch.Tensor) -> bool:  # fmt: skip
    """One pruning step recorded in ``res.history``; ``False`` (with ``res.stopped``) when nothing qualifies."""
    prunable = [n for n in names if surgeon.can_remove(n)]
    entry = choose(prunable) if prunable else None
    if entry is None:
        res.stopped = (f"after {step - 1} steps no layer can lose another kernel" if not prunable else
                       f"after {step - 1} steps no pair is under {thresholds[0]} or over {thresholds[1]} degrees")
        return False
    entry["step"] = step
    if track_macs:
        entry["macs"], entry["params"] = count_macs_params(surgeon.model, x)
    res.history.append(entry)
    return True


def _chooser(surgeon: Surgeon, data, criterion, rule, obs, center, remove, thresholds, merge_scale, batch_size, device,
             seed, output) -> Callable[[list[str]], dict[str, Any] | None]:  # fmt: skip
    """The step: remove (or merge) by the criterion among the prunable layers; ``None`` when no pair qualifies."""
    gen = torch.Generator().manual_seed(seed)

    def choose(prunable: list[str]) -> dict[str, Any] | None:
        if criterion != "distinctiveness":
            return by_importance(surgeon, prunable, criterion, data, gen, batch_size, device, output)
        stats = activation_stats(surgeon.model, data, prunable, observe={n: obs[n] for n in prunable},
                                 means=rule == "gedeon-harris", batch_size=batch_size, device=device, progress=False)
        if rule == "least-distinct":
            return least_distinct(surgeon, stats, center, remove)
        return gedeon_harris(surgeon, stats, center, thresholds, merge_scale)

    return choose


def _finish(res: PruneResult, surgeon: Surgeon, x: torch.Tensor) -> PruneResult:
    """Counts after pruning, the surgery record (so the checkpoint rebuilds it), the model in eval mode."""
    pruned = surgeon.model
    res.kernels_after = kernels(pruned)
    res.macs_after, res.params_after = count_macs_params(pruned, x)
    if surgeon.removals:
        append_surgery(pruned, {"kind": SURGERY_KIND, "input_shape": list(x.shape), "removals": surgeon.removals,
                                **output_param(surgeon.output)})  # fmt: skip
    res.model = pruned.eval()
    res.meta["complete"] = True
    return res
