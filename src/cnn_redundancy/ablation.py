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

Every ablation is checked to really change the output (on the first batch); a unit whose
ablation changed nothing is listed in :attr:`AblationResult.unchanged`. The model is restored bit
for bit, also on error or interrupt.

Single-layer sweeps use a fast path: one recorded clean forward pass per batch, then for each
ablated layer only the part of the network downstream of it (:class:`cnn_redundancy.graph.Split`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .data import as_loader
from .graph import Split, SplitState, SplitUnavailable, trace
from .hooks import capture, preserved, replace_output
from .layers import LayerSpec, conv_layers, get_module, resolve_layers
from .metrics import Metric, get_metric
from .progress import progress_bar
from .results import Result, make_meta
from .training import forward_checked

__all__ = [
    "AblationResult",
    "zero_ablation",
    "residual_blocks",
    "is_residual_block",
    "decomposition_layers",
    "shortcut_convs",
    "layer_blocks",
    "shortcut_output",
    "SCOPES",
    "MODES",
]

SCOPES = ("layer", "block", "decomposition")
MODES = ("zero-kernel", "remove-branch")
ADJACENT = ("forward", "block", "none")


# --------------------------------------------------------------------------- structure


def is_residual_block(module: nn.Module) -> bool:
    """A residual block in torchvision's convention: ``conv1``, a ``downsample`` shortcut attribute
    (``None`` for the identity) and a ``relu`` applied after the addition (torchvision
    ``BasicBlock``/``Bottleneck``, this package's CIFAR ResNet blocks)."""
    return (
        hasattr(module, "downsample")
        and isinstance(getattr(module, "conv1", None), nn.Conv2d)
        and isinstance(getattr(module, "relu", None), nn.Module)
    )


def residual_blocks(model: nn.Module) -> list[str]:
    """Dotted names of the residual blocks of ``model`` in registration order.

    Example:
        >>> from cnn_redundancy.models import get_model
        >>> residual_blocks(get_model("resnet20"))[:2]
        ['layer1.0', 'layer1.1']
    """
    return [n for n, m in model.named_modules() if n and is_residual_block(m)]


def shortcut_convs(model: nn.Module) -> list[str]:
    """Convs inside a residual block's shortcut (the paper's ``w^{1*1}`` projection layers)."""
    out = []
    for b in residual_blocks(model):
        ds = get_module(model, b).downsample
        if ds is not None:
            out += [f"{b}.downsample{'.' + n if n else ''}" for n, m in ds.named_modules() if isinstance(m, nn.Conv2d)]
    return out


def decomposition_layers(model: nn.Module) -> list[str]:
    """Feature decomposition layers: convs whose output channel count differs from their input's,
    plus every conv in a residual shortcut (1x1 projections), in registration order.

    Example:
        >>> from cnn_redundancy.models import get_model
        >>> decomposition_layers(get_model("resnet20", in_channels=1))
        ['conv1', 'layer2.0.conv1', 'layer2.0.downsample.0', 'layer3.0.conv1', 'layer3.0.downsample.0']
    """
    short = set(shortcut_convs(model))
    return [
        n for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and (m.in_channels != m.out_channels or n in short)
    ]  # fmt: skip


def _block_of(name: str, blocks: Sequence[str]) -> str | None:
    for b in blocks:
        if name.startswith(b + "."):
            return b
    return None


def _stage_of(block: str) -> str:
    return block.rpartition(".")[0] or block


def layer_blocks(model: nn.Module, *, order: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Layer blocks: the paper's "continuous layers with the same channel number".

    For a ResNet, each stage (the module holding a run of residual blocks, e.g. ``layer2``) is a
    block holding the convs of its residual blocks; convs outside every stage (the stem, a head)
    belong to none. For a network without residual blocks, each run of consecutive convs (in
    ``order``, default registration order) with the same output channel count is a block
    (``block1``, ``block2``...).
    """
    order = list(order) if order is not None else conv_layers(model)
    blocks = residual_blocks(model)
    out: dict[str, list[str]] = {}
    if blocks:
        for n in order:
            b = _block_of(n, blocks)
            if b is not None:
                out.setdefault(_stage_of(b), []).append(n)
        return out
    prev = None
    for n in order:
        c = get_module(model, n).out_channels
        if c != prev:
            out[f"block{len(out) + 1}"] = []
            prev = c
        out[f"block{len(out)}"].append(n)
    return out


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
        holders = {_block_of(n, blocks) for n in decomp} - {None}
        kept.update(n for n in order if _block_of(n, blocks) in holders)
    return kept


def _non_inplace(act: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if getattr(act, "inplace", False):
        act = copy.copy(act)
        act.inplace = False
    return act


def shortcut_output(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A residual block's output with its branch removed: ``act(shortcut(x))``."""
    ds = block.downsample
    return _non_inplace(block.relu)(x if ds is None else ds(x))


# --------------------------------------------------------------------------- result


@dataclasses.dataclass
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

    def plot(self, ax=None, *, title: str | None = None):
        """Bars of the metric per ablated unit, the baseline as a line, decomposition layers in red."""
        import matplotlib.pyplot as plt

        if ax is None:
            width = max(5.0, 0.28 * len(self.units) + 2)
            fig, ax = plt.subplots(figsize=(width, 3.6))
        else:
            fig = ax.figure
        colors = ["tab:red" if u in self.decomposition else "tab:blue" for u in self.units]
        x = range(len(self.units))
        bars = ax.bar(x, [self.scores[u] for u in self.units], color=colors)
        for b, u in zip(bars, self.units):
            if not self.changed[u]:
                b.set_hatch("//")
        ax.axhline(self.baseline, color="black", ls="--", lw=1, label=f"baseline {self.baseline:.3f}")
        ax.axhline(self.baseline - self.tolerance, color="gray", ls=":", lw=1, label=f"baseline - tolerance ({self.tolerance:g})")
        ax.set_xticks(list(x))
        ax.set_xticklabels(self.units, rotation=90 if len(self.units) > 6 else 0, fontsize=7)
        ax.set_ylabel(self.metric)
        ax.set_ylim(0, max(1.0, self.baseline * 1.05))
        from matplotlib.patches import Patch

        handles, _ = ax.get_legend_handles_labels()
        handles += [Patch(color="tab:red", label="decomposition layer"), Patch(color="tab:blue", label="other")]
        if self.unchanged:
            handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="output unchanged"))
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax.set_title(title or f"zero-ablation, scope={self.scope}, mode={self.mode}")
        fig.tight_layout()
        return fig


# --------------------------------------------------------------------------- units


@dataclasses.dataclass
class _Unit:
    name: str
    convs: list[str]  # zeroed (zero-kernel)
    blocks: list[str]  # branch removed (remove-branch)
    decomposition: bool
    stage: str

    @property
    def point(self) -> str | None:
        """The single module a fast (split) evaluation replaces, if there is one."""
        items = self.convs + self.blocks
        return items[0] if len(items) == 1 else None


def _units(model, scope, mode, layers, order, adjacent) -> tuple[list[_Unit], list[str]]:
    blocks = residual_blocks(model)
    decomp = set(decomposition_layers(model))
    skipped: list[str] = []

    def stage(n: str) -> str:
        b = n if n in blocks else _block_of(n, blocks)
        return _stage_of(b) if b else ""

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
        return [_Unit(n, [n], [], True, stage(n)) for n in names], skipped
    if mode == "remove-branch" and not blocks:
        raise ValueError(f"mode='remove-branch' needs residual blocks; {type(model).__name__} has none (use mode='zero-kernel')")
    if scope == "layer":
        if mode == "zero-kernel":
            chosen = set(resolve_layers(model, layers))
            return [_Unit(n, [n], [], n in decomp, stage(n)) for n in order if n in chosen], skipped
        chosen_b = blocks if layers is None else resolve_layers(model, layers, types=None)
        bad = [b for b in chosen_b if b not in blocks]
        if bad:
            raise ValueError(f"with mode='remove-branch' layers are residual blocks; not blocks: {', '.join(bad)}. "
                             f"Blocks: {', '.join(blocks)}")
        return [
            _Unit(b, [], [b], any(n.startswith(b + ".") for n in decomp), _stage_of(b))
            for b in blocks if b in chosen_b
        ], skipped  # fmt: skip
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
        removed = [b for b in blocks if _stage_of(b) == g and not any(_block_of(n, blocks) == b for n in decomp)]
        items = zeroed if mode == "zero-kernel" else removed
        if not items:
            skipped.append(g)
            continue
        units.append(_Unit(g, zeroed if mode == "zero-kernel" else [], removed if mode == "remove-branch" else [],
                           any(n in decomp for n in convs), g if blocks else ""))
    if not units:
        raise ValueError("every layer block holds only decomposition layers and their neighbours: nothing to zero "
                         "(try adjacent='none')")
    return units, skipped


# --------------------------------------------------------------------------- evaluation engines


def _zero_conv_output(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """What ``conv`` returns for input ``x`` once its kernel is zero: its bias broadcast (or zeros)."""
    shape = F.conv2d(
        torch.empty(x.shape, device="meta", dtype=x.dtype),
        torch.empty(conv.weight.shape, device="meta", dtype=x.dtype),
        None, conv.stride, conv.padding, conv.dilation, conv.groups,
    ).shape  # fmt: skip
    out = torch.zeros(shape, dtype=x.dtype, device=x.device)
    if conv.bias is not None:
        out += conv.bias.detach().view(1, -1, 1, 1)
    return out


def _compare(out: torch.Tensor, clean: torch.Tensor) -> tuple[bool, float]:
    diff = (out.double() - clean.double()).abs()
    m = float(diff.max()) if diff.numel() else 0.0
    return (not torch.equal(out, clean)) or m != m, m


class _Scores:
    """Per-unit metrics, filled batch by batch, plus the first-batch output check."""

    def __init__(self, metric, names: list[str]) -> None:
        self.metrics: dict[str, Metric] = {n: copy.deepcopy(get_metric(metric)) for n in names}
        self.changed: dict[str, bool] = {}
        self.max_change: dict[str, float] = {}

    def update(self, name: str, out: torch.Tensor, y: torch.Tensor, clean: torch.Tensor | None) -> None:
        self.metrics[name].update(out, y)
        if clean is not None:
            self.changed[name], self.max_change[name] = _compare(out, clean)

    def compute(self) -> dict[str, float]:
        return {n: float(m.compute()) for n, m in self.metrics.items()}


def _batches(loader, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in loader:
        yield x.to(device), y.to(device)


@torch.no_grad()
def _naive(model, units: list[_Unit], loader, metric, device, progress) -> tuple[float, _Scores, _Scores]:
    """Full forward passes, one data pass per unit (weights zeroed in place, or branch hooks)."""
    clean = _Scores(metric, ["baseline"])
    first_clean = None
    for x, y in _batches(loader, device):
        out = forward_checked(model, x)
        if first_clean is None:
            first_clean = out
        clean.update("baseline", out, y, None)
    scores = _Scores(metric, [u.name for u in units])
    bar = progress_bar(len(units) * len(loader), "zero-ablation (full passes)", enabled=progress, unit="batch")
    try:
        for u in units:
            with preserved(model, weights=True):
                for n in u.convs:
                    get_module(model, n).weight.zero_()
                with _branches_removed(model, u.blocks):
                    for i, (x, y) in enumerate(_batches(loader, device)):
                        scores.update(u.name, forward_checked(model, x), y, first_clean if i == 0 else None)
                        bar.update(1)
    finally:
        bar.close()
    return clean.compute()["baseline"], clean, scores


class _branches_removed:
    """Hooks making each named residual block return ``act(shortcut(x))`` (inside :func:`preserved`)."""

    def __init__(self, model: nn.Module, blocks: list[str]) -> None:
        self.model, self.blocks = model, blocks
        self.stack: list = []

    def __enter__(self):
        import contextlib

        self.es = contextlib.ExitStack()
        for b in self.blocks:
            block = get_module(self.model, b)
            inputs = self.es.enter_context(capture(self.model, [b], what="input", detach=False))
            self.es.enter_context(replace_output(self.model, b, lambda out, b=b, block=block, inp=inputs: shortcut_output(block, inp[b])))
        return self

    def __exit__(self, *exc):
        return self.es.__exit__(*exc)


def _keep(v):
    """A recorded value, safe from in-place ops later in the forward pass (tensors are cloned)."""
    return v.clone() if isinstance(v, torch.Tensor) else v


def _recorder(model: nn.Module, names: list[str]) -> torch.fx.GraphModule:
    """A traced copy of the forward pass returning ``(output, (clone of each named node, ...))``."""
    gm = trace(model)
    nodes = {n.name: n for n in gm.graph.nodes}
    missing = [n for n in names if n not in nodes]
    if missing:
        raise SplitUnavailable(f"recorded graph lacks nodes {missing[:3]}")
    out = next(n for n in gm.graph.nodes if n.op == "output")
    kept = []
    for name in names:
        with gm.graph.inserting_before(out):
            kept.append(gm.graph.call_function(_keep, (nodes[name],)))
    out.args = ((out.args[0], tuple(kept)),)
    gm.recompile()
    return gm


@torch.no_grad()
def _fast(model, units: list[_Unit], loader, metric, device, progress) -> tuple[float, _Scores, _Scores]:
    """One recorded clean pass per batch; per unit only the downstream part (:class:`Split`)."""
    splits = {u.name: Split(model, u.point) for u in units}  # type: ignore[arg-type]
    needed: list[str] = []
    for s in splits.values():
        for n in (*s.frontier_names, s.layer_input_name):
            if n not in needed:
                needed.append(n)
    rec = _recorder(model, needed)
    clean = _Scores(metric, ["baseline"])
    scores = _Scores(metric, [u.name for u in units])
    bar = progress_bar(len(loader) * len(units), "zero-ablation (split passes)", enabled=progress, unit="pass")
    try:
        for i, (x, y) in enumerate(_batches(loader, device)):
            out_clean, values = rec(x)
            env = dict(zip(needed, values))
            clean.update("baseline", out_clean, y, None)
            for u in units:
                s = splits[u.name]
                state = SplitState(tuple(env[n] for n in s.frontier_names), env[s.layer_input_name])
                if u.convs:
                    layer_out = _zero_conv_output(s.module, state.layer_input)
                else:
                    layer_out = shortcut_output(s.module, state.layer_input)
                out, _ = s.downstream(state, layer_out)
                scores.update(u.name, out, y, out_clean if i == 0 else None)
                bar.update(1)
    finally:
        bar.close()
    return clean.compute()["baseline"], clean, scores


# --------------------------------------------------------------------------- the analysis


def zero_ablation(
    model: nn.Module,
    data,
    *,
    scope: str = "layer",
    mode: str = "zero-kernel",
    layers: LayerSpec = None,
    metric: str | Metric = "accuracy",
    tolerance: float = 0.01,
    adjacent: str = "forward",
    batch_size: int = 256,
    fast: bool | None = None,
    device=None,
    progress: bool | None = None,
) -> AblationResult:
    """Zero-ablate conv layers (or residual branches) one unit at a time and measure the metric.

    Args:
        model: a trained network (left unchanged: weights, hooks and train/eval flags restored).
        data: a Dataset or DataLoader of ``(input, target)``; the paper uses the test set.
        scope: ``"layer"`` (each conv; with ``remove-branch`` each residual block), ``"block"``
            (per layer block, every conv but the decomposition layers and their adjacent layers) or
            ``"decomposition"`` (each shortcut projection conv).
        mode: ``"zero-kernel"`` (the paper: weight set to zero, biases and BN shifts stay) or
            ``"remove-branch"`` (residual branch dropped: the block returns ``act(shortcut(x))``).
        layers: restrict the units: conv names/globs (``layer`` and ``decomposition`` scopes),
            residual block names (``layer`` scope with ``remove-branch``) or layer block names
            (``block`` scope).
        metric: ``"accuracy"`` (classification) or ``"dice"`` (segmentation), or a Metric.
        tolerance: largest drop of the metric that still counts as trivial.
        adjacent: which layers next to a decomposition layer the ``block`` scope keeps:
            ``"forward"`` (the convs just before and after it in forward order), ``"block"`` (every
            conv of a residual block holding one) or ``"none"``.
        batch_size: used when ``data`` is a Dataset.
        fast: use the split fast path for single-module units (``None``: when the model is
            fx-traceable; ``False``: full passes with weights zeroed in place).
        device: defaults to the model's device.
        progress: show a progress bar (default: the process-wide setting).

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
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if adjacent not in ADJACENT:
        raise ValueError(f"adjacent must be one of {', '.join(ADJACENT)}, not {adjacent!r}")
    if not (isinstance(tolerance, int | float) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    metric_name = get_metric(metric).name
    loader = as_loader(data, batch_size)
    try:
        dev = torch.device(device) if device is not None else next(model.parameters()).device
    except StopIteration:
        raise ValueError("the model has no parameters: nothing to ablate") from None
    with preserved(model, weights=True):
        model.eval()
        x0 = next(iter(loader))[0][:1].to(dev)
        with torch.no_grad():
            forward_checked(model, x0)
        order = conv_layers(model, example_input=x0)
        units, skipped = _units(model, scope, mode, layers, order, adjacent)
        use_fast = fast is not False and all(u.point is not None for u in units)
        why = ""
        if use_fast:
            try:
                baseline, _, scores = _fast(model, units, loader, metric, dev, progress)
            except SplitUnavailable as e:
                if fast:
                    raise
                use_fast, why = False, str(e)
        if not use_fast:
            baseline, _, scores = _naive(model, units, loader, metric, dev, progress)
    names = [u.name for u in units]
    values = scores.compute()
    params = {"scope": scope, "mode": mode, "layers": layers if layers is None or isinstance(layers, str) else list(layers),
              "metric": metric_name, "tolerance": tolerance, "adjacent": adjacent, "n_samples": len(loader.dataset)}
    meta = make_meta("zero_ablation", params)
    meta.update({"fast_path": use_fast, "fast_path_unavailable": why, "skipped_blocks": skipped})
    res = AblationResult(
        scope=scope, mode=mode, metric=metric_name, baseline=float(baseline), units=names, scores=values,
        members={u.name: u.convs or u.blocks for u in units},
        decomposition=[u.name for u in units if u.decomposition], stages={u.name: u.stage for u in units},
        tolerance=float(tolerance), trivial={}, changed=scores.changed, max_change=scores.max_change, meta=meta,
    )  # fmt: skip
    res.trivial = res.verdict()
    return res
