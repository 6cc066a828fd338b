"""The lenses of ``analyze``: each runs one registered analysis and files its answer per kernel,
per layer, per residual block or across depth.

Per kernel (every conv output channel), higher redundancy first: ``dead``/``constant`` and
``max_activation``; ``angle`` (the nearest mean-centered distinctiveness angle, folded to 0-90
degrees) and ``angle_partner``; ``ncc`` (the best impulse-response NCC) and ``ncc_partner``;
``shuffle_cosine`` and ``shuffle_drop`` (the channel shuffled at its consumer conv's input: the
consumer's activation cosine and the metric drop; sampled channels only, NaN elsewhere); ``l1`` and
``taylor`` for comparison. Per layer: each lens's fraction of kernels it calls redundant and the
zero-ablation metric drop. Per residual block: the metric drop with its branch removed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from ..analyses.ablation import zero_ablation
from ..analyses.activation_labels import strongest_activation_labels
from ..analyses.cka import cka
from ..analyses.dead import dead_kernels
from ..analyses.distinctiveness import distinctiveness
from ..analyses.impulse import impulse_response
from ..analyses.scores import kernel_scores
from ..analyses.shuffle import channel_shuffle
from ..compression.skipnet import check_same_spatial_size
from ..core.graph import Traced
from ..core.metrics import Metric, get_metric
from ..core.structure import consumer, residual_adds
from ..data import subset
from .plan import Plan

__all__ = ["Context", "LENSES", "RUNNERS", "NEAR_ANGLE", "HIGH_NCC", "SHUFFLE_COSINE"]

NEAR_ANGLE = 15.0  # degrees: Gedeon and Harris' "similar" threshold
HIGH_NCC = 0.9  # the impulse paper's threshold
SHUFFLE_COSINE = 0.99  # a shuffle that leaves the consumer's activation this close changes little


@dataclasses.dataclass
class Context:
    """What every lens reads and where it files its answer."""

    model: nn.Module
    data: Any
    layers: list[str]
    observed: dict[str, str]
    traced: Traced | None
    metric: str | Metric
    max_drop: float
    plan: Plan
    common: dict[str, Any]
    per_kernel: dict[str, dict[str, list]]
    per_layer: dict[str, dict[str, float]]
    blocks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    depth: dict[str, Any] = dataclasses.field(default_factory=dict)
    sampled: dict[str, str] = dataclasses.field(default_factory=dict)
    results: dict[str, Any] = dataclasses.field(default_factory=dict)

    def kernels(self, layer: str) -> int:
        return self.model.get_submodule(layer).out_channels

    def file(self, layer: str, **values: list) -> None:
        self.per_kernel.setdefault(layer, {}).update(values)


def _frac(flags) -> float:
    flags = list(flags)
    return sum(bool(f) for f in flags) / len(flags) if flags else math.nan


def _live(ctx: Context, layer: str) -> list[bool]:
    """Which kernels are alive (all of them when the dead lens has not run): near-duplicate counts leave
    dead kernels out, since a dead kernel has no angle and its impulse response copies other dead ones'."""
    dead = ctx.per_kernel.get(layer, {}).get("dead")
    return [not d for d in dead] if dead is not None else [True] * ctx.kernels(layer)


def run_dead(ctx: Context) -> str | None:
    r = dead_kernels(ctx.model, ctx.data, ctx.layers, observe=ctx.observed, **ctx.common)
    for layer in ctx.layers:
        k = ctx.kernels(layer)
        dead, const = set(r.dead[layer]), set(r.constant[layer])
        ctx.file(layer, dead=[i in dead for i in range(k)], constant=[i in const for i in range(k)],
                 max_activation=r.max_activation[layer])  # fmt: skip
        ctx.per_layer[layer]["dead"] = len(dead) / k
    ctx.results["dead"] = r
    return None


def run_distinctiveness(ctx: Context) -> str | None:
    r = distinctiveness(ctx.model, ctx.data, ctx.layers, observe=ctx.observed, center="mean", **ctx.common)
    for layer in ctx.layers:
        angle, partner = r.nearest(layer)
        ctx.file(layer, angle=angle, angle_partner=partner)
        ctx.per_layer[layer]["near_duplicate"] = _frac(live and not math.isnan(a) and a < NEAR_ANGLE
                                                       for a, live in zip(angle, _live(ctx, layer)))  # fmt: skip
    ctx.results["distinctiveness"] = r
    return None


def run_impulse(ctx: Context) -> str | None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small maps are reported in the result, not warned about twice
        r = impulse_response(ctx.model, ctx.data, ctx.layers, **ctx.common)
    for layer in ctx.layers:
        small = layer in r.small_maps
        ncc = [math.nan] * ctx.kernels(layer) if small else r.max_ncc_values[layer]
        ctx.file(layer, ncc=ncc, ncc_partner=[None] * len(ncc) if small else r.max_ncc_partner[layer])
        ctx.per_layer[layer]["high_ncc"] = math.nan if small else _frac(live and v >= HIGH_NCC
                                                                        for v, live in zip(ncc, _live(ctx, layer)))
    big = [layer for layer in ctx.layers if layer not in r.small_maps]
    ctx.depth["impulse_across"] = {f"{a} -> {b}": _frac(v >= HIGH_NCC for v in r.cross_depth(a, b))
                                   for a, b in zip(big, big[1:])}  # fmt: skip
    ctx.results["impulse"] = r
    if r.small_maps:
        shown = ", ".join(r.small_maps[:3]) + (f" and {len(r.small_maps) - 3} more" if len(r.small_maps) > 3 else "")
        return f"{len(r.small_maps)} layers ({shown}) respond in 4x4 pixels or less: NCC not meaningful, not reported"
    return None


def run_shuffle(ctx: Context) -> str | None:
    if ctx.traced is None:
        return "skipped: the model is not fx-traceable, so no layer's consumer conv is known"
    cons = {layer: consumer(ctx.traced, layer) for layer in ctx.layers}
    cons = {layer: c for layer, c in cons.items() if c is not None}
    if not cons:
        return ("skipped: no conv feeds another conv channel for channel through batch, group or instance norm, "
                "activations and pooling alone (outputs are added, concatenated, flattened, reshaped or used twice)")
    g = torch.Generator().manual_seed(ctx.common["seed"])
    picked = {c: sorted(torch.randperm(ctx.kernels(layer), generator=g)[: ctx.plan.cosine_channels].tolist())
              for layer, c in cons.items()}  # fmt: skip
    data = subset(ctx.data, ctx.plan.n_shuffle, seed=ctx.common["seed"])
    cos = channel_shuffle(ctx.model, data, list(picked), channels=picked, metric=None, **ctx.common)
    few = {c: ch[: ctx.plan.metric_channels] for c, ch in picked.items()}
    drop = channel_shuffle(ctx.model, data, list(few), channels=few, metric=ctx.metric, **ctx.common)
    for layer, c in cons.items():
        k = ctx.kernels(layer)
        cosine, dropped = [math.nan] * k, [math.nan] * k
        for i, ch in enumerate(picked[c]):
            cosine[ch] = cos.mean_cosine[c][i]
        for i, ch in enumerate(few[c]):
            dropped[ch] = drop.baseline - drop.metric[c][i]
        ctx.file(layer, shuffle_cosine=cosine, shuffle_drop=dropped)
        ctx.per_layer[layer]["shuffle_cosine"] = sum(cos.mean_cosine[c]) / len(cos.mean_cosine[c])
    ctx.sampled["shuffle"] = (f"{len(cons)} of {len(ctx.layers)} layers have a consumer conv; cosine of "
                              f"{min(ctx.plan.cosine_channels, max(ctx.kernels(x) for x in cons))} channels per layer "
                              f"and metric drop of {ctx.plan.metric_channels}, on {len(data)} images (seeded)")  # fmt: skip
    ctx.results["shuffle"], ctx.results["shuffle_metric"] = cos, drop
    return None


def run_scores(ctx: Context) -> str | None:
    r = kernel_scores(ctx.model, ctx.data, ctx.layers, output=get_metric(ctx.metric).output, **ctx.common)
    for layer in ctx.layers:
        ctx.file(layer, l1=r.l1[layer], taylor=r.taylor[layer])
        top = max(r.taylor[layer]) if r.taylor[layer] else 0.0
        ctx.per_layer[layer]["low_taylor"] = _frac(v <= 0.01 * top for v in r.taylor[layer])
    ctx.results["scores"] = r
    return None


def run_ablation(ctx: Context) -> str | None:
    data = subset(ctx.data, ctx.plan.n_ablation, seed=ctx.common["seed"])
    r = zero_ablation(ctx.model, data, ctx.layers, metric=ctx.metric, tolerance=ctx.max_drop, **ctx.common)
    for layer in r.units:
        ctx.per_layer[layer]["ablation_drop"] = r.baseline - r.scores[layer]
    if len(data) < len(ctx.data):
        ctx.sampled["ablation"] = f"{len(data)} of {len(ctx.data)} images (seeded)"
    ctx.results["ablation"] = r
    return None


def run_blocks(ctx: Context) -> str | None:
    if ctx.traced is None or not residual_adds(ctx.traced):
        return "skipped: no residual block (an addition of a branch and its shortcut) in the traced graph"
    data = subset(ctx.data, ctx.plan.n_ablation, seed=ctx.common["seed"])
    r = zero_ablation(ctx.model, data, mode="remove-branch", metric=ctx.metric, tolerance=ctx.max_drop, **ctx.common)
    adds = {a.name: a for a in residual_adds(ctx.traced)}
    for b in r.units:
        convs = list(adds[b].convs) if b in adds else []
        ctx.blocks[b] = {"drop": r.baseline - r.scores[b], "trivial": r.trivial[b], "convs": convs}
    if len(data) < len(ctx.data):
        ctx.sampled["blocks"] = f"{len(data)} of {len(ctx.data)} images (seeded)"
    ctx.results["blocks"] = r
    return None


def run_cka(ctx: Context) -> str | None:
    if len(ctx.layers) < 2:
        return "skipped: CKA compares layers and there is one"
    r = cka(ctx.model, ctx.data, ctx.layers, observe=ctx.observed, **ctx.common)
    for i, layer in enumerate(r.layers[:-1]):
        ctx.per_layer[layer]["cka_next"] = r.matrix[i][i + 1]
    ctx.depth["cka"] = {"layers": r.layers, "matrix": r.matrix}
    ctx.results["cka"] = r
    return None


def run_skipping(ctx: Context) -> str | None:
    x0 = next(iter(torch.utils.data.DataLoader(ctx.data, batch_size=1)))[0]
    try:
        check_same_spatial_size(ctx.model, x0.to(next(ctx.model.parameters()).device), ctx.layers)
    except ValueError:
        return ("does not apply: layer skipping needs conv layers that all keep the input's height and width "
                "(an equal-width stack, like equal_width_cnn)")
    maps = min(10, min(ctx.kernels(x) for x in ctx.layers))
    r = strongest_activation_labels(ctx.model, ctx.data, ctx.layers, feature_maps=maps, top=min(10, len(ctx.data)),
                                    **ctx.common)  # fmt: skip
    ctx.depth["skipping"] = {"labelled": len(r.indices), "per_layer": r.counts}
    ctx.results["skipping"] = r
    return None


RUNNERS = {"dead": run_dead, "distinctiveness": run_distinctiveness, "impulse": run_impulse,
           "shuffle": run_shuffle, "scores": run_scores, "ablation": run_ablation, "blocks": run_blocks,
           "cka": run_cka, "skipping": run_skipping}  # fmt: skip
LENSES = tuple(RUNNERS)
