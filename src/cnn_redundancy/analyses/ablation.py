"""Zero-ablation of conv layers ("Is each layer non-trivial in CNN?", Wang et al. 2021).

The paper replaces conv kernels of a trained ResNet with zeros and measures the test metric:

- ``scope="layer"``: each conv layer alone (its figures 1 and 2);
- ``scope="block"``: per layer block (a ResNet stage), every conv except the *feature
  decomposition layers* (convs that change the channel count, including the 1x1 projection
  shortcuts) and their adjacent layers;
- ``scope="decomposition"``: each shortcut (projection) decomposition layer alone.

``mode="zero-kernel"`` is the paper's: the weight becomes zero, a conv bias and the following BN's
shift stay (so the ablated branch still adds a constant, as the paper's equations show).
``mode="remove-branch"`` drops a residual branch entirely (the block becomes ``act(shortcut(x))``,
Veit et al.'s lesion), which is what physically removing a block does (see
:mod:`cnn_redundancy.removal`).

Each unit is one unit of :func:`cnn_redundancy.core.sweep.sweep`, which gives the fast path (one
recorded clean forward pass per batch, then for each ablated layer only the part of the network
downstream of it), the check that every ablation really changed the output (on the first batch; a
unit whose ablation changed nothing is listed in :attr:`AblationResult.unchanged`), partial results
and the device. The model's weights are never written: an ablated conv's output is replaced by what
it would return with a zero kernel.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..core.batches import SHARDS, as_loader, first_input, forward_checked, resolve_device
from ..core.device import AMP_CHOICES, check_amp, placed
from ..core.graph import Traced
from ..core.hooks import preserved
from ..core.layers import LayerSpec, conv_layers, resolve_layers
from ..core.metrics import Metric, get_metric
from ..core.plotting import height_for
from ..core.registry import analysis, option
from ..core.results import Result, make_meta
from ..core.resume import RESUME_OPTION, check_resume, state_path
from ..core.structure import (
    block_of,
    decomposition_layers,
    layer_blocks,
    residual_adds,
    residual_blocks,
    shortcut_convs,
    shortcut_output,
    stage_of,
)
from ..core.sweep import ENGINES, SweepState, Unit, sweep

__all__ = ["AblationResult", "zero_ablation", "SCOPES", "MODES", "ADJACENT"]

SCOPES = ("layer", "block", "decomposition")
MODES = ("zero-kernel", "remove-branch")
ADJACENT = ("forward", "block", "none")


@dataclasses.dataclass(eq=False)
class AblationResult(Result):
    """Metric after each ablation, against the clean baseline.

    Attributes:
        scope, mode, metric: what was run.
        baseline: the clean model's metric on the data.
        units: ablated units in forward order (conv names, block names or stage names).
        scores: unit -> metric with that unit ablated.
        members: unit -> the convs zeroed (``zero-kernel``) or residual blocks removed (``remove-branch``).
        decomposition: units that are, or hold, feature decomposition layers.
        stages: unit -> its layer block (stage) name, or ``""`` for the stem / head.
        tolerance: largest drop of the metric that still counts as trivial.
        trivial: unit -> ``baseline - score <= tolerance``.
        changed: unit -> whether the ablation changed the model output (first batch).
        max_change: unit -> largest absolute change of the output (first batch).
    """

    scope: str = "layer"
    mode: str = "zero-kernel"
    metric: str = "accuracy"
    baseline: float = float("nan")
    units: list[str] = dataclasses.field(default_factory=list)
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    members: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    decomposition: list[str] = dataclasses.field(default_factory=list)
    stages: dict[str, str] = dataclasses.field(default_factory=dict)
    tolerance: float = 0.01
    trivial: dict[str, bool] = dataclasses.field(default_factory=dict)
    changed: dict[str, bool] = dataclasses.field(default_factory=dict)
    max_change: dict[str, float] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def verdict(self, tolerance: float | None = None) -> dict[str, bool]:
        """unit -> trivial (the metric drops by at most ``tolerance``; default: the stored one)."""
        tol = self.tolerance if tolerance is None else tolerance
        return {u: self.baseline - self.scores[u] <= tol for u in self.units}

    @property
    def nontrivial(self) -> list[str]:
        """Units whose ablation drops the metric by more than the tolerance."""
        return [u for u in self.units if not self.trivial[u]]

    @property
    def unchanged(self) -> list[str]:
        """Units whose ablation did not change the output at all (nothing was really removed)."""
        return [u for u in self.units if not self.changed[u]]

    def table(self) -> list[list[Any]]:
        """Rows ``[unit, layer block, decomposition?, ablated, metric, drop, verdict]`` (the paper's tables)."""
        return [
            [u, self.stages.get(u, ""), u in self.decomposition, len(self.members[u]), round(self.scores[u], 4),
             round(self.baseline - self.scores[u], 4),
             ("trivial" if self.trivial[u] else "non-trivial") + ("" if self.changed[u] else " (output unchanged)")]
            for u in self.units
        ]  # fmt: skip

    def headline(self) -> list[str]:
        """The paper's table, one line per unit."""
        lines = [f"baseline {self.metric} {self.baseline:.4f}  (scope={self.scope}, mode={self.mode}, tolerance={self.tolerance:g})"]
        for unit, stage, dec, n, score, drop, verdict in self.table():
            lines.append(f"{unit:28s} {stage:10s} {'D' if dec else ' '} {n:3d}  {score:.4f}  drop {drop:+.4f}  {verdict}")
        if self.unchanged:
            lines.append(f"warning: ablating {', '.join(self.unchanged)} did not change the output at all")
        return lines

    def plot(self, ax=None, *, title: str | None = None):
        """Bars of the metric per ablated unit (one row each, forward order), the baseline as a line,
        decomposition layers in red, units whose ablation changed nothing hatched."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch

        n = len(self.units)
        if ax is None:
            fig, ax = plt.subplots(figsize=(7.5, height_for(n)))
        else:
            fig = ax.figure
        colors = ["tab:red" if u in self.decomposition else "tab:blue" for u in self.units]
        bars = ax.barh(range(n), [self.scores[u] for u in self.units], color=colors)
        for b, u in zip(bars, self.units):
            if not self.changed[u]:
                b.set_hatch("//")
        ax.axvline(self.baseline, color="black", ls="--", lw=1, label=f"baseline {self.baseline:.3f}")
        ax.axvline(self.baseline - self.tolerance, color="gray", ls=":", lw=1, label=f"baseline - tolerance ({self.tolerance:g})")
        ax.set_yticks(range(n), self.units, fontsize=7 if n > 30 else 8)
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlabel(f"{self.metric} with the unit ablated")
        ax.set_ylabel("ablated unit (forward order)")
        ax.set_xlim(0, max(1.0, self.baseline * 1.05))
        handles, _ = ax.get_legend_handles_labels()
        handles += [Patch(color="tab:red", label="decomposition layer"), Patch(color="tab:blue", label="other")]
        if self.unchanged:
            handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="output unchanged"))
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax.set_title(title or f"zero-ablation, scope={self.scope}, mode={self.mode}", fontsize=9)
        fig.tight_layout()
        return fig


@dataclasses.dataclass
class _Ablated:
    """What one ablation removes: convs zeroed (zero-kernel) or residual branches removed (remove-branch)."""

    name: str
    convs: list[str]
    blocks: list[str]
    decomposition: bool
    stage: str
    adds: dict[str, int] = dataclasses.field(default_factory=dict)  # graph additions -> bypass argument

    def unit(self) -> Unit:
        """The sweep unit: each zeroed conv returns its bias alone, each removed branch leaves its shortcut
        (a residual addition found in the graph returns its bypass; a block module returns ``act(shortcut(x))``)."""
        fns = {n: _zero_kernel for n in self.convs}
        if self.adds:
            fns.update({node: (lambda ctx, mod, inputs, out, k=k: inputs[k]) for node, k in self.adds.items()})
        else:
            fns.update({b: _no_branch for b in self.blocks})
        return Unit(self.name, fns)


def _kept_layers(model: nn.Module, order: list[str], adjacent: str) -> set[str]:
    """Decomposition layers plus their adjacent layers (see :func:`zero_ablation`)."""
    decomp = set(decomposition_layers(model))
    kept = set(decomp)
    if adjacent == "forward":
        for i, n in enumerate(order):
            if n in decomp:
                kept.update(order[max(0, i - 1) : i + 2])
    elif adjacent == "block":
        blocks = residual_blocks(model)
        holders = {block_of(n, blocks) for n in decomp} - {None}
        kept.update(n for n in order if block_of(n, blocks) in holders)
    return kept


def _branches(model: nn.Module, layers, decomp: set[str], engine: str) -> list[_Ablated]:
    """One unit per residual branch: the additions found in the traced graph (any ``x + f(x)`` block),
    or, for a model fx cannot trace (or ``engine="naive"``), the blocks in torchvision's convention
    (removed with hooks)."""
    traced = Traced.maybe(model) if engine != "naive" else None
    adds = residual_adds(traced) if traced is not None else []
    found = {a.name: a for a in adds} or {b: None for b in residual_blocks(model)}
    if not found:
        raise ValueError(f"mode='remove-branch' needs residual blocks (an addition of a branch and a shortcut); "
                         f"{type(model).__name__} has none (use mode='zero-kernel')")
    specs = [] if layers is None else [layers] if isinstance(layers, str) else list(layers)
    bad = [s for s in specs if not any(fnmatch.fnmatchcase(n, s) for n in found)]
    if bad:
        raise ValueError(f"with mode='remove-branch' layers are residual blocks; not blocks: {', '.join(map(str, bad))}. "
                         f"Blocks: {', '.join(found)}")
    chosen = [n for n in found if not specs or any(fnmatch.fnmatchcase(n, s) for s in specs)]
    out = []
    for name in chosen:
        a = found[name]
        members = set(a.convs) if a is not None else set()
        dec = any(n.startswith(name + ".") or n in members for n in decomp)
        out.append(_Ablated(name, [], [name], dec, stage_of(name), {a.node: a.bypass} if a is not None else {}))
    return out


def _units(model, scope, mode, layers, order, adjacent, engine) -> tuple[list[_Ablated], list[str]]:
    blocks = residual_blocks(model)
    decomp = set(decomposition_layers(model))
    skipped: list[str] = []

    def stage(n: str) -> str:
        b = n if n in blocks else block_of(n, blocks)
        return stage_of(b) if b else ""

    if scope == "decomposition":
        if mode != "zero-kernel":
            raise ValueError("scope='decomposition' zeroes shortcut convs; it needs mode='zero-kernel' "
                             "(removing a branch keeps the shortcut)")
        short = shortcut_convs(model)
        if not short:
            raise ValueError(f"{type(model).__name__} has no shortcut (projection) convs: nothing to ablate with scope='decomposition'")
        chosen = set(resolve_layers(model, layers)) if layers is not None else set(short)
        names = [n for n in order if n in short and n in chosen]
        if not names:
            raise ValueError(f"none of the selected layers is a shortcut conv; shortcut convs: {', '.join(short)}")
        return [_Ablated(n, [n], [], True, stage(n)) for n in names], skipped
    if scope == "layer" and mode == "zero-kernel":
        chosen = set(resolve_layers(model, layers))
        return [_Ablated(n, [n], [], n in decomp, stage(n)) for n in order if n in chosen], skipped
    if scope == "layer":
        return _branches(model, layers, decomp, engine), skipped
    if mode == "remove-branch" and not blocks:
        raise ValueError(f"mode='remove-branch' with scope='block' needs residual blocks in torchvision's convention; "
                         f"{type(model).__name__} has none (use scope='layer' or mode='zero-kernel')")
    kept = _kept_layers(model, order, adjacent)
    groups = layer_blocks(model, order=order)
    if layers is not None:
        wanted = set(layers) if not isinstance(layers, str) else {layers}
        unknown = wanted - set(groups)
        if unknown:
            raise ValueError(f"with scope='block' layers are layer blocks; unknown: {', '.join(sorted(unknown))}. "
                             f"Blocks: {', '.join(groups)}")
        groups = {k: v for k, v in groups.items() if k in wanted}
    units = []
    for g, convs in groups.items():
        zeroed = [n for n in convs if n not in kept]
        # remove-branch: every block of the stage without a decomposition layer (its branch is what goes)
        removed = [b for b in blocks if stage_of(b) == g and not any(block_of(n, blocks) == b for n in decomp)]
        items = zeroed if mode == "zero-kernel" else removed
        if not items:
            skipped.append(g)
            continue
        units.append(_Ablated(g, zeroed if mode == "zero-kernel" else [], removed if mode == "remove-branch" else [],
                           any(n in decomp for n in convs), g if blocks else ""))
    if not units:
        raise ValueError("every layer block holds only decomposition layers and their neighbours: nothing to zero "
                         "(try adjacent='none')")
    return units, skipped


def _zero_kernel(ctx, conv: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """What ``conv`` returns for input ``x`` once its kernel is zero: its bias broadcast (or zeros)."""
    shape = F.conv2d(
        torch.empty(x.shape, device="meta", dtype=x.dtype),
        torch.empty(conv.weight.shape, device="meta", dtype=x.dtype),
        None, conv.stride, conv.padding, conv.dilation, conv.groups,
    ).shape  # fmt: skip
    zero = torch.zeros(shape, dtype=x.dtype, device=x.device)
    if conv.bias is not None:
        zero += conv.bias.detach().view(1, -1, 1, 1)
    return zero


def _no_branch(ctx, block: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return shortcut_output(block, x)


def _result(state: SweepState, ablated: list[_Ablated], scope, mode, metric_name, tolerance, meta) -> AblationResult:
    done = [i for i, s in enumerate(state.seen) if s]
    names = [ablated[i].name for i in done]
    res = AblationResult(
        scope=scope, mode=mode, metric=metric_name, baseline=state.baseline.compute() if state.n_seen else float("nan"),
        units=names, scores={ablated[i].name: float(state.metrics[i].compute()) for i in done},
        members={u.name: u.convs or u.blocks for u in ablated if u.name in names},
        decomposition=[u.name for u in ablated if u.decomposition and u.name in names],
        stages={u.name: u.stage for u in ablated if u.name in names}, tolerance=float(tolerance), trivial={},
        changed={ablated[i].name: state.changed[i] for i in done if i < len(state.changed)},
        max_change={ablated[i].name: state.max_change[i] for i in done if i < len(state.max_change)},
        meta={**meta, "complete": state.complete, "fast_path": all(state.fast), "fast_path_unavailable": state.fallback},
    )  # fmt: skip
    res.trivial = res.verdict()
    return res


@analysis("zero-ablation", paper="ablation", result=AblationResult, options=[
    option("scope", "units: each conv (layer), each layer block but its decomposition layers (block), "
           "each shortcut projection (decomposition)", choices=SCOPES),
    option("mode", "zero the kernels (the paper) or drop whole residual branches", choices=MODES),
    option("tolerance", "largest metric drop that still counts as trivial"),
    option("adjacent", "layers kept next to decomposition layers with --scope block", choices=ADJACENT),
    option("engine", "computation: auto (fast where traceable), fast, naive", choices=ENGINES),
    option("amp", "forward passes in bfloat16 or float16 (torch.autocast)", choices=AMP_CHOICES),
    option("shard", "under torchrun: split the batches, or the ablated units (each process over all the data)",
           choices=SHARDS),
    RESUME_OPTION,
])  # fmt: skip
def zero_ablation(
    model: nn.Module,
    data,
    layers: LayerSpec = None,
    *,
    metric: str | Metric = "accuracy",
    scope: str = "layer",
    mode: str = "zero-kernel",
    tolerance: float = 0.01,
    adjacent: str = "forward",
    engine: str = "auto",
    amp: str | None = None,
    shard: str = "batches",
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    partial: str | os.PathLike | None = None,
    resume: bool = False,
) -> AblationResult:
    """Zero-ablate conv layers (or residual branches) one unit at a time and measure the metric.

    Args:
        model: a trained network (left unchanged: weights, hooks, attributes and train/eval flags).
        data: a Dataset or DataLoader of ``(input, target)``; the paper uses the test set.
        layers: restrict the units: conv names/globs (``layer`` and ``decomposition`` scopes),
            residual block names (``layer`` scope with ``remove-branch``) or layer block names
            (``block`` scope).
        metric: ``"accuracy"`` (classification) or ``"dice"`` (segmentation), or a Metric.
        scope: ``"layer"`` (each conv; with ``remove-branch`` each residual block), ``"block"``
            (per layer block, every conv but the decomposition layers and their adjacent layers) or
            ``"decomposition"`` (each shortcut projection conv).
        mode: ``"zero-kernel"`` (the paper: weight set to zero, biases and BN shifts stay) or
            ``"remove-branch"`` (residual branch dropped: the block returns ``act(shortcut(x))``).
        tolerance: largest drop of the metric that still counts as trivial.
        adjacent: which layers next to a decomposition layer the ``block`` scope keeps:
            ``"forward"`` (the convs just before and after it in forward order), ``"block"`` (every
            conv of a residual block holding one) or ``"none"``.
        engine: ``"auto"`` (the split fast path for single-module units where the model is
            fx-traceable), ``"fast"`` (refuse the fallback) or ``"naive"`` (full forward passes).
        amp: ``"bf16"`` or ``"fp16"``: forward passes under ``torch.autocast`` (the metric's counts
            stay exact); ``None``: full precision.
        shard: under ``torchrun``, split the batches (``"batches"``) or the units (``"units"``, each
            process over all the data); the result is the same.
        seed: recorded in the result (the ablation draws nothing at random).
        partial: a JSON path rewritten as the work goes with the units measured so far; the sweep's
            state at the last whole batch is kept beside it (``x.json`` -> ``x.state.pt``) until the run completes.
        resume: continue a stopped run from that state (see :func:`cnn_redundancy.channel_shuffle`).

    Returns:
        An :class:`AblationResult`.

    Example:
        >>> import cnn_redundancy as cr
        >>> from cnn_redundancy.testing import random_images
        >>> m = cr.get_model("resnet20", in_channels=1, input_size=12).eval()
        >>> res = zero_ablation(m, random_images(16, (1, 12, 12)), scope="decomposition", progress=False)
        >>> res.units
        ['layer2.0.downsample.0', 'layer3.0.downsample.0']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    check_resume(resume, partial)
    for value, allowed, what in ((scope, SCOPES, "scope"), (mode, MODES, "mode"), (adjacent, ADJACENT, "adjacent")):
        if value not in allowed:
            raise ValueError(f"{what} must be one of {', '.join(allowed)}, not {value!r}")
    if isinstance(tolerance, bool) or not (isinstance(tolerance, int | float) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    metric_name = get_metric(metric).name
    check_amp(amp)
    loader = as_loader(data, batch_size)
    dev = resolve_device(device, model)
    with preserved(model), torch.no_grad(), placed(model, dev):
        model.eval()
        x0 = first_input(loader, model).to(dev)
        forward_checked(model, x0)
        order = conv_layers(model, example_input=x0)
    ablated, skipped = _units(model, scope, mode, layers, order, adjacent, engine)
    params = {"scope": scope, "mode": mode, "units": [u.name for u in ablated], "metric": metric_name, "tolerance": tolerance, "adjacent": adjacent, "n_samples": len(loader.dataset), "amp": amp}
    meta = make_meta("zero_ablation", params, seed)
    meta["skipped_blocks"], meta["shard"] = skipped, shard

    def result(state: SweepState) -> AblationResult:
        return _result(state, ablated, scope, mode, metric_name, tolerance, meta)

    state = sweep(model, loader, [u.unit() for u in ablated], metric=metric, device=dev, amp=amp, shard=shard,
                  engine=engine, progress=progress, desc=f"zero-ablation ({scope})",
                  partial=(lambda st: result(st).save(partial)) if partial is not None else None,
                  checkpoint=state_path(partial) if partial is not None else None, resume=resume,
                  settings={"analysis": "zero_ablation", "scope": scope, "mode": mode, "adjacent": adjacent, "seed": seed})
    return result(state)
